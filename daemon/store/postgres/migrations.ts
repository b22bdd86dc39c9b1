/**
 * PostgreSQL schema. Times are BIGINT milliseconds since the epoch, as on SQLite; fencing tokens
 * and event seqs come from sequences, so every daemon sharing the database draws from one series.
 */
import type { Migration } from '../migrate';

export const POSTGRES_MIGRATIONS: readonly Migration[] = [
  {
    name: '0001-create-locks',
    up: [
      `CREATE TABLE lockmgr_locks (
         name VARCHAR(255) COLLATE "C" PRIMARY KEY,
         locked_by VARCHAR(255),
         lock_process BIGINT,
         locked_until BIGINT,
         created_at BIGINT NOT NULL,
         updated_at BIGINT NOT NULL,
         token BIGINT NOT NULL)`,
      `CREATE INDEX lockmgr_locks_locked_until ON lockmgr_locks (locked_until) WHERE locked_until IS NOT NULL`,
      `CREATE SEQUENCE lockmgr_token_seq`,
    ],
    down: ['DROP SEQUENCE lockmgr_token_seq', 'DROP TABLE lockmgr_locks'],
  },
  {
    // Events wait here, written in the same transaction as the change, until the relay has them
    // acknowledged by JetStream. `seq` orders them.
    name: '0002-create-event-outbox',
    up: [
      `CREATE TABLE lockmgr_outbox (
         seq BIGSERIAL PRIMARY KEY,
         event_id VARCHAR(64) NOT NULL,
         type VARCHAR(32) NOT NULL,
         name VARCHAR(255) NOT NULL,
         lock TEXT NOT NULL,
         cause TEXT NOT NULL,
         daemon VARCHAR(255) NOT NULL,
         at BIGINT NOT NULL)`,
    ],
    down: ['DROP TABLE lockmgr_outbox'],
  },
  // SQLite only (its outbox numbering); nothing to do here.
  { name: '0003-sqlite-outbox-seq-from-counter', up: [], down: [] },
  {
    // Insert a lock and, only if it went in, draw its fencing token, in one round trip instead of
    // two (see PostgresTx.insertLock for why the token comes second).
    name: '0004-postgres-insert-lock-function',
    up: [
      `CREATE OR REPLACE FUNCTION lockmgr_insert_lock(p_name VARCHAR, p_locked_by VARCHAR, p_process BIGINT, p_until BIGINT, p_now BIGINT)
           RETURNS SETOF lockmgr_locks LANGUAGE plpgsql AS $$
           BEGIN
             INSERT INTO lockmgr_locks (name, locked_by, lock_process, locked_until, created_at, updated_at, token)
             VALUES (p_name, p_locked_by, p_process, p_until, p_now, p_now, 0)
             ON CONFLICT (name) DO NOTHING;
             IF FOUND THEN
               RETURN QUERY UPDATE lockmgr_locks SET token = nextval('lockmgr_token_seq') WHERE name = p_name RETURNING *;
             END IF;
           END $$`,
    ],
    down: ['DROP FUNCTION lockmgr_insert_lock(VARCHAR, VARCHAR, BIGINT, BIGINT, BIGINT)'],
  },
  {
    // The first statement of each operation in a batch (lock inserts and unlocks), in the batch's
    // order, in one round trip. If any insert meets an existing row, everything it did is undone
    // and the row `op = 0` says so: the batch then runs statement by statement.
    name: '0005-postgres-first-pass-function',
    up: [
      `CREATE OR REPLACE FUNCTION lockmgr_first_pass(p_kinds TEXT[], p_names VARCHAR[], p_locked_by VARCHAR[], p_process BIGINT[], p_until BIGINT[], p_token BIGINT[], p_now BIGINT)
           RETURNS TABLE (op INT, l_name VARCHAR, l_locked_by VARCHAR, l_lock_process BIGINT, l_locked_until BIGINT, l_created_at BIGINT, l_updated_at BIGINT, l_token BIGINT)
           LANGUAGE plpgsql AS $$
           DECLARE
             r lockmgr_locks;
           BEGIN
             BEGIN
               FOR k IN 1 .. coalesce(array_length(p_names, 1), 0) LOOP
                 IF p_kinds[k] = 'insert' THEN
                   INSERT INTO lockmgr_locks AS l (name, locked_by, lock_process, locked_until, created_at, updated_at, token)
                   VALUES (p_names[k], p_locked_by[k], p_process[k], p_until[k], p_now, p_now, 0)
                   ON CONFLICT (name) DO NOTHING;
                   IF NOT FOUND THEN
                     RAISE EXCEPTION USING ERRCODE = 'LM001';
                   END IF;
                   UPDATE lockmgr_locks AS l SET token = nextval('lockmgr_token_seq') WHERE l.name = p_names[k] RETURNING l.* INTO r;
                 ELSE
                   DELETE FROM lockmgr_locks AS l WHERE l.name = p_names[k] AND (p_token[k] IS NULL OR l.token = p_token[k]) RETURNING l.* INTO r;
                   CONTINUE WHEN NOT FOUND;
                 END IF;
                 op := k;
                 l_name := r.name; l_locked_by := r.locked_by; l_lock_process := r.lock_process; l_locked_until := r.locked_until;
                 l_created_at := r.created_at; l_updated_at := r.updated_at; l_token := r.token;
                 RETURN NEXT;
               END LOOP;
             EXCEPTION WHEN SQLSTATE 'LM001' THEN
               op := 0;
               RETURN NEXT;
             END;
           END $$`,
    ],
    down: ['DROP FUNCTION lockmgr_first_pass(TEXT[], VARCHAR[], VARCHAR[], BIGINT[], BIGINT[], BIGINT[], BIGINT)'],
  },
  {
    // The store's identity, drawn once: daemons advertise it, so that two daemons serving one
    // prefix from different stores are told apart (daemons sharing this database share it).
    name: '0006-store-identity',
    up: [
      `CREATE TABLE lockmgr_meta (key VARCHAR(64) PRIMARY KEY, value TEXT NOT NULL)`,
      `INSERT INTO lockmgr_meta (key, value) VALUES ('store_id', replace(gen_random_uuid()::text, '-', ''))`,
    ],
    down: ['DROP TABLE lockmgr_meta'],
  },
  {
    // What a request that changed something answered, by request id, so that a re-send of it (to
    // any daemon of the database) is answered the same and not done again; kept until expires_at.
    name: '0007-request-outcomes',
    up: [
      `CREATE TABLE lockmgr_requests (id VARCHAR(64) COLLATE "C" PRIMARY KEY, outcome TEXT NOT NULL, expires_at BIGINT NOT NULL, replayed SMALLINT NOT NULL DEFAULT 0)`,
      `CREATE INDEX lockmgr_requests_expires_at ON lockmgr_requests (expires_at)`,
    ],
    down: ['DROP TABLE lockmgr_requests'],
  },
  {
    // A grant's and a renewal's expiry count from the moment of their statement
    // (clock_timestamp()), not from the transaction's start: a transaction that waited for a row,
    // or whose daemon was paused, still grants a whole lifetime. The functions of 0004 and 0005
    // stay for daemons of the previous version during a rolling upgrade.
    name: '0008-postgres-statement-clock',
    up: [
      `CREATE OR REPLACE FUNCTION lockmgr_now_ms() RETURNS BIGINT LANGUAGE sql VOLATILE AS
         $$ SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint $$`,
      `CREATE OR REPLACE FUNCTION lockmgr_grant(p_name VARCHAR, p_locked_by VARCHAR, p_process BIGINT, p_expires_ms BIGINT)
           RETURNS SETOF lockmgr_locks LANGUAGE plpgsql AS $$
           DECLARE
             v_now BIGINT;
           BEGIN
             v_now := lockmgr_now_ms();
             INSERT INTO lockmgr_locks (name, locked_by, lock_process, locked_until, created_at, updated_at, token)
             VALUES (p_name, p_locked_by, p_process, v_now + p_expires_ms, v_now, v_now, 0)
             ON CONFLICT (name) DO NOTHING;
             IF FOUND THEN
               RETURN QUERY UPDATE lockmgr_locks SET token = nextval('lockmgr_token_seq') WHERE name = p_name RETURNING *;
             END IF;
           END $$`,
      `CREATE OR REPLACE FUNCTION lockmgr_first_pass_v2(p_kinds TEXT[], p_names VARCHAR[], p_locked_by VARCHAR[], p_process BIGINT[], p_expires_ms BIGINT[], p_token BIGINT[])
           RETURNS TABLE (op INT, l_name VARCHAR, l_locked_by VARCHAR, l_lock_process BIGINT, l_locked_until BIGINT, l_created_at BIGINT, l_updated_at BIGINT, l_token BIGINT)
           LANGUAGE plpgsql AS $$
           DECLARE
             r lockmgr_locks;
             v_now BIGINT;
           BEGIN
             BEGIN
               FOR k IN 1 .. coalesce(array_length(p_names, 1), 0) LOOP
                 IF p_kinds[k] = 'insert' THEN
                   v_now := lockmgr_now_ms();
                   INSERT INTO lockmgr_locks AS l (name, locked_by, lock_process, locked_until, created_at, updated_at, token)
                   VALUES (p_names[k], p_locked_by[k], p_process[k], v_now + p_expires_ms[k], v_now, v_now, 0)
                   ON CONFLICT (name) DO NOTHING;
                   IF NOT FOUND THEN
                     RAISE EXCEPTION USING ERRCODE = 'LM001';
                   END IF;
                   UPDATE lockmgr_locks AS l SET token = nextval('lockmgr_token_seq') WHERE l.name = p_names[k] RETURNING l.* INTO r;
                 ELSE
                   DELETE FROM lockmgr_locks AS l WHERE l.name = p_names[k] AND (p_token[k] IS NULL OR l.token = p_token[k]) RETURNING l.* INTO r;
                   CONTINUE WHEN NOT FOUND;
                 END IF;
                 op := k;
                 l_name := r.name; l_locked_by := r.locked_by; l_lock_process := r.lock_process; l_locked_until := r.locked_until;
                 l_created_at := r.created_at; l_updated_at := r.updated_at; l_token := r.token;
                 RETURN NEXT;
               END LOOP;
             EXCEPTION WHEN SQLSTATE 'LM001' THEN
               op := 0;
               RETURN NEXT;
             END;
           END $$`,
    ],
    down: [
      'DROP FUNCTION lockmgr_first_pass_v2(TEXT[], VARCHAR[], VARCHAR[], BIGINT[], BIGINT[], BIGINT[])',
      'DROP FUNCTION lockmgr_grant(VARCHAR, VARCHAR, BIGINT, BIGINT)',
      'DROP FUNCTION lockmgr_now_ms()',
    ],
  },
  {
    // Clients' sessions, kept alive by keepalives; a lock bound to one lasts as long as it does.
    // The batch first pass returns the session of an unlocked row too (a lock of a session
    // released by name is kept through its lock-delay); v2 stays for daemons of the previous
    // version during a rolling upgrade.
    name: '0009-sessions',
    up: [
      `CREATE TABLE lockmgr_sessions (
         id VARCHAR(64) COLLATE "C" PRIMARY KEY,
         ttl_ms BIGINT NOT NULL,
         expires_at BIGINT NOT NULL,
         locked_by VARCHAR(255),
         client VARCHAR(255),
         created_at BIGINT NOT NULL)`,
      `CREATE INDEX lockmgr_sessions_expires_at ON lockmgr_sessions (expires_at)`,
      `ALTER TABLE lockmgr_locks ADD COLUMN session_id VARCHAR(64)`,
      `CREATE INDEX lockmgr_locks_session_id ON lockmgr_locks (session_id) WHERE session_id IS NOT NULL`,
      `CREATE OR REPLACE FUNCTION lockmgr_first_pass_v3(p_kinds TEXT[], p_names VARCHAR[], p_locked_by VARCHAR[], p_process BIGINT[], p_expires_ms BIGINT[], p_token BIGINT[])
           RETURNS TABLE (op INT, l_name VARCHAR, l_locked_by VARCHAR, l_lock_process BIGINT, l_locked_until BIGINT, l_created_at BIGINT, l_updated_at BIGINT, l_token BIGINT, l_session_id VARCHAR)
           LANGUAGE plpgsql AS $$
           DECLARE
             r lockmgr_locks;
             v_now BIGINT;
           BEGIN
             BEGIN
               FOR k IN 1 .. coalesce(array_length(p_names, 1), 0) LOOP
                 IF p_kinds[k] = 'insert' THEN
                   v_now := lockmgr_now_ms();
                   INSERT INTO lockmgr_locks AS l (name, locked_by, lock_process, locked_until, created_at, updated_at, token)
                   VALUES (p_names[k], p_locked_by[k], p_process[k], v_now + p_expires_ms[k], v_now, v_now, 0)
                   ON CONFLICT (name) DO NOTHING;
                   IF NOT FOUND THEN
                     RAISE EXCEPTION USING ERRCODE = 'LM001';
                   END IF;
                   UPDATE lockmgr_locks AS l SET token = nextval('lockmgr_token_seq') WHERE l.name = p_names[k] RETURNING l.* INTO r;
                 ELSE
                   DELETE FROM lockmgr_locks AS l WHERE l.name = p_names[k] AND (p_token[k] IS NULL OR l.token = p_token[k]) RETURNING l.* INTO r;
                   CONTINUE WHEN NOT FOUND;
                 END IF;
                 op := k;
                 l_name := r.name; l_locked_by := r.locked_by; l_lock_process := r.lock_process; l_locked_until := r.locked_until;
                 l_created_at := r.created_at; l_updated_at := r.updated_at; l_token := r.token; l_session_id := r.session_id;
                 RETURN NEXT;
               END LOOP;
             EXCEPTION WHEN SQLSTATE 'LM001' THEN
               op := 0;
               RETURN NEXT;
             END;
           END $$`,
    ],
    down: [
      'DROP FUNCTION lockmgr_first_pass_v3(TEXT[], VARCHAR[], VARCHAR[], BIGINT[], BIGINT[], BIGINT[])',
      'DROP INDEX lockmgr_locks_session_id',
      'ALTER TABLE lockmgr_locks DROP COLUMN session_id',
      'DROP TABLE lockmgr_sessions',
    ],
  },
  {
    // Each daemon publishes the events it committed itself; an event waits until the one before
    // it of the same lock has left the outbox. Its outbox insert finds that one by name.
    name: '0010-outbox-by-lock',
    up: ['CREATE INDEX lockmgr_outbox_name_seq ON lockmgr_outbox (name, seq)'],
    down: ['DROP INDEX lockmgr_outbox_name_seq'],
  },
];
