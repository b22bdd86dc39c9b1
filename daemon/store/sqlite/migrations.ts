/**
 * SQLite schema. Times are integer milliseconds since the epoch: one representation on both
 * backends, exact arithmetic for expiry, and a cheap index on `locked_until`.
 */
import type { Migration } from '../migrate';

/** The outbox table, its `seq` with or without AUTOINCREMENT. */
function outboxTable(name: string, autoincrement: boolean): string {
  return `CREATE TABLE ${name} (
       seq INTEGER PRIMARY KEY${autoincrement ? ' AUTOINCREMENT' : ''},
       event_id TEXT NOT NULL,
       type TEXT NOT NULL,
       name TEXT NOT NULL,
       lock TEXT NOT NULL,
       cause TEXT NOT NULL,
       daemon TEXT NOT NULL,
       at INTEGER NOT NULL)`;
}

/** The outbox rebuilt with or without AUTOINCREMENT, its rows and its numbering kept. */
function rebuildOutbox(autoincrement: boolean): string[] {
  return [
    outboxTable('lockmgr_outbox_rebuilt', autoincrement),
    `INSERT INTO lockmgr_outbox_rebuilt SELECT seq, event_id, type, name, lock, cause, daemon, at FROM lockmgr_outbox`,
    ...(autoincrement
      ? [
          // Back to AUTOINCREMENT: it must go on from the last number reserved, not the last row kept.
          `DELETE FROM sqlite_sequence WHERE name = 'lockmgr_outbox_rebuilt'`,
          `INSERT INTO sqlite_sequence (name, seq)
           SELECT 'lockmgr_outbox_rebuilt', MAX(value, COALESCE((SELECT MAX(seq) FROM lockmgr_outbox), 0)) FROM lockmgr_counters WHERE name = 'event_seq'`,
          `DELETE FROM lockmgr_counters WHERE name = 'event_seq'`,
        ]
      : [
          `INSERT OR IGNORE INTO lockmgr_counters (name, value)
           SELECT 'event_seq', MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'lockmgr_outbox'), 0), COALESCE((SELECT MAX(seq) FROM lockmgr_outbox), 0))`,
        ]),
    `DROP TABLE lockmgr_outbox`,
    `ALTER TABLE lockmgr_outbox_rebuilt RENAME TO lockmgr_outbox`,
  ];
}

export const SQLITE_MIGRATIONS: readonly Migration[] = [
  {
    name: '0001-create-locks',
    up: [
      `CREATE TABLE lockmgr_locks (
         name TEXT PRIMARY KEY NOT NULL,
         locked_by TEXT,
         lock_process INTEGER,
         locked_until INTEGER,
         created_at INTEGER NOT NULL,
         updated_at INTEGER NOT NULL,
         token INTEGER NOT NULL)`,
      `CREATE INDEX lockmgr_locks_locked_until ON lockmgr_locks (locked_until) WHERE locked_until IS NOT NULL`,
      // SQLite has no sequences: number series (tokens, event seqs) are reserved in this table.
      `CREATE TABLE lockmgr_counters (name TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL)`,
      `INSERT INTO lockmgr_counters (name, value) VALUES ('token', 0)`,
    ],
    down: ['DROP TABLE lockmgr_counters', 'DROP TABLE lockmgr_locks'],
  },
  {
    // Events wait here, written in the same transaction as the change, until the relay has them
    // acknowledged by JetStream. `seq` orders them.
    name: '0002-create-event-outbox',
    up: [outboxTable('lockmgr_outbox', true)],
    down: ['DROP TABLE lockmgr_outbox'],
  },
  {
    // The daemon (the one writer) numbers events itself from a counter it reserves in blocks, as
    // it does fencing tokens. AUTOINCREMENT made every commit write SQLite's sequence table too,
    // and `RETURNING seq` read each event back.
    name: '0003-sqlite-outbox-seq-from-counter',
    up: rebuildOutbox(false),
    down: rebuildOutbox(true),
    atomic: true,
  },
  // PostgreSQL functions; nothing to do here. Listed so both backends number their steps alike.
  { name: '0004-postgres-insert-lock-function', up: [], down: [] },
  { name: '0005-postgres-first-pass-function', up: [], down: [] },
  {
    // The store's identity, drawn once: daemons advertise it, so that two daemons serving one
    // prefix from different stores are told apart.
    name: '0006-store-identity',
    up: [
      `CREATE TABLE lockmgr_meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)`,
      `INSERT INTO lockmgr_meta (key, value) VALUES ('store_id', lower(hex(randomblob(16))))`,
    ],
    down: ['DROP TABLE lockmgr_meta'],
  },
  {
    // What a request that changed something answered, by request id, so that a re-send of it is
    // answered the same and not done again; kept until expires_at.
    name: '0007-request-outcomes',
    up: [
      `CREATE TABLE lockmgr_requests (id TEXT PRIMARY KEY NOT NULL, outcome TEXT NOT NULL, expires_at INTEGER NOT NULL, replayed INTEGER NOT NULL DEFAULT 0)`,
      `CREATE INDEX lockmgr_requests_expires_at ON lockmgr_requests (expires_at)`,
    ],
    down: ['DROP TABLE lockmgr_requests'],
  },
  // PostgreSQL functions reading the statement's clock; SQLite's daemon reads its own.
  { name: '0008-postgres-statement-clock', up: [], down: [] },
  {
    // Clients' sessions, kept alive by keepalives; a lock bound to one lasts as long as it does.
    name: '0009-sessions',
    up: [
      `CREATE TABLE lockmgr_sessions (id TEXT PRIMARY KEY NOT NULL, ttl_ms INTEGER NOT NULL, expires_at INTEGER NOT NULL, locked_by TEXT, client TEXT, created_at INTEGER NOT NULL)`,
      `CREATE INDEX lockmgr_sessions_expires_at ON lockmgr_sessions (expires_at)`,
      `ALTER TABLE lockmgr_locks ADD COLUMN session_id TEXT`,
      `CREATE INDEX lockmgr_locks_session_id ON lockmgr_locks (session_id) WHERE session_id IS NOT NULL`,
    ],
    down: ['DROP INDEX lockmgr_locks_session_id', 'ALTER TABLE lockmgr_locks DROP COLUMN session_id', 'DROP TABLE lockmgr_sessions'],
  },
  // PostgreSQL only (one writer here: events are published in seq order).
  { name: '0010-outbox-by-lock', up: [], down: [] },
];
