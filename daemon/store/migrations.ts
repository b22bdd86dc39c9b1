/**
 * Numbered schema migrations, applied by umzug and recorded in the `SequelizeMeta` table.
 * A released migration is never edited: schema changes are new entries at the end.
 *
 * Times are stored as integer milliseconds since the epoch (BIGINT): one representation on both
 * databases, exact arithmetic for expiry, and a cheap index on `locked_until`.
 */
import { QueryTypes, type Sequelize } from 'sequelize';
import { SequelizeStorage, Umzug, type MigrationParams } from 'umzug';
import type { Dialect } from './database';

interface MigrationContext {
  sequelize: Sequelize;
  dialect: Dialect;
}
type Step = (params: MigrationParams<MigrationContext>) => Promise<void>;

async function run(ctx: MigrationContext, statements: Record<Dialect, string[]>): Promise<void> {
  for (const sql of statements[ctx.dialect]) await ctx.sequelize.query(sql, { type: QueryTypes.RAW });
}

const MIGRATIONS: { name: string; up: Step; down: Step }[] = [
  {
    name: '0001-create-locks',
    up: ({ context }) =>
      run(context, {
        sqlite: [
          `CREATE TABLE lockmgr_locks (
             name TEXT PRIMARY KEY NOT NULL,
             locked_by TEXT,
             lock_process INTEGER,
             locked_until INTEGER,
             created_at INTEGER NOT NULL,
             updated_at INTEGER NOT NULL,
             token INTEGER NOT NULL)`,
          `CREATE INDEX lockmgr_locks_locked_until ON lockmgr_locks (locked_until) WHERE locked_until IS NOT NULL`,
          // SQLite has no sequences: the token counter is a row, advanced inside each transaction.
          `CREATE TABLE lockmgr_counters (name TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL)`,
          `INSERT INTO lockmgr_counters (name, value) VALUES ('token', 0)`,
        ],
        postgres: [
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
      }),
    down: ({ context }) =>
      run(context, {
        sqlite: ['DROP TABLE lockmgr_counters', 'DROP TABLE lockmgr_locks'],
        postgres: ['DROP SEQUENCE lockmgr_token_seq', 'DROP TABLE lockmgr_locks'],
      }),
  },
  {
    name: '0002-create-event-outbox',
    up: ({ context }) =>
      run(context, {
        // Events wait here, written in the same transaction as the change, until the relay has
        // them acknowledged by JetStream. `seq` orders them.
        sqlite: [
          `CREATE TABLE lockmgr_outbox (
             seq INTEGER PRIMARY KEY AUTOINCREMENT,
             event_id TEXT NOT NULL,
             type TEXT NOT NULL,
             name TEXT NOT NULL,
             lock TEXT NOT NULL,
             cause TEXT NOT NULL,
             daemon TEXT NOT NULL,
             at INTEGER NOT NULL)`,
        ],
        postgres: [
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
      }),
    down: ({ context }) => run(context, { sqlite: ['DROP TABLE lockmgr_outbox'], postgres: ['DROP TABLE lockmgr_outbox'] }),
  },
  {
    // SQLite: the daemon (the one writer) numbers events itself from a counter it reserves in
    // blocks, as it does fencing tokens. AUTOINCREMENT made every commit write SQLite's sequence
    // table too, and `RETURNING seq` read each event back. PostgreSQL keeps its sequence.
    name: '0003-sqlite-outbox-seq-from-counter',
    up: ({ context }) => runAtomically(context, { sqlite: rebuildOutbox(''), postgres: [] }),
    down: ({ context }) => runAtomically(context, { sqlite: rebuildOutbox(' AUTOINCREMENT'), postgres: [] }),
  },
  {
    // PostgreSQL: insert a lock and, only if it went in, draw its fencing token, in one round
    // trip instead of two (see insertLock in lock-ops.ts for why the token comes second).
    name: '0004-postgres-insert-lock-function',
    up: ({ context }) =>
      run(context, {
        sqlite: [],
        postgres: [
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
      }),
    down: ({ context }) =>
      run(context, { sqlite: [], postgres: ['DROP FUNCTION lockmgr_insert_lock(VARCHAR, VARCHAR, BIGINT, BIGINT, BIGINT)'] }),
  },
  {
    // PostgreSQL: the first statement of each operation in a batch (lock inserts and unlocks), in
    // the batch's order, in one round trip. If any insert meets an existing row, everything it
    // did is undone and the row `op = 0` says so: the batch then runs statement by statement.
    name: '0005-postgres-first-pass-function',
    up: ({ context }) =>
      run(context, {
        sqlite: [],
        postgres: [
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
      }),
    down: ({ context }) =>
      run(context, {
        sqlite: [],
        postgres: ['DROP FUNCTION lockmgr_first_pass(TEXT[], VARCHAR[], VARCHAR[], BIGINT[], BIGINT[], BIGINT[], BIGINT)'],
      }),
  },
];

/** Several statements as one transaction: a migration interrupted halfway leaves nothing behind. */
async function runAtomically(ctx: MigrationContext, statements: Record<Dialect, string[]>): Promise<void> {
  const list = statements[ctx.dialect];
  if (list.length === 0) return;
  await ctx.sequelize.transaction(async (transaction) => {
    for (const sql of list) await ctx.sequelize.query(sql, { type: QueryTypes.RAW, transaction });
  });
}

/** SQLite: the outbox table again, its `seq` with or without AUTOINCREMENT, rows and numbering kept. */
function rebuildOutbox(autoincrement: string): string[] {
  return [
    `CREATE TABLE lockmgr_outbox_rebuilt (
       seq INTEGER PRIMARY KEY${autoincrement},
       event_id TEXT NOT NULL,
       type TEXT NOT NULL,
       name TEXT NOT NULL,
       lock TEXT NOT NULL,
       cause TEXT NOT NULL,
       daemon TEXT NOT NULL,
       at INTEGER NOT NULL)`,
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

export interface MigrateOptions {
  sequelize: Sequelize;
  dialect: Dialect;
  onApplied?: (name: string) => void;
  /** Stop after this migration (default: apply all). */
  upTo?: string;
}

function umzugFor({ sequelize, dialect }: MigrateOptions): Umzug<MigrationContext> {
  return new Umzug<MigrationContext>({
    migrations: MIGRATIONS,
    context: { sequelize, dialect },
    storage: new SequelizeStorage({ sequelize }),
    logger: undefined,
  });
}

/** Apply every pending migration; returns the names applied. Safe to run from several daemons. */
export async function migrate(opts: MigrateOptions): Promise<string[]> {
  if (opts.dialect === 'postgres') {
    // Daemons starting together must not apply the same migration twice.
    return opts.sequelize.transaction(async (t) => {
      await opts.sequelize.query('SELECT pg_advisory_xact_lock(7735342101)', { transaction: t });
      return applyPending(opts);
    });
  }
  return applyPending(opts);
}

async function applyPending(opts: MigrateOptions): Promise<string[]> {
  const applied = await umzugFor(opts).up(opts.upTo === undefined ? {} : { to: opts.upTo });
  for (const m of applied) opts.onApplied?.(m.name);
  return applied.map((m) => m.name);
}

export async function pendingMigrations(opts: MigrateOptions): Promise<string[]> {
  return (await umzugFor(opts).pending()).map((m) => m.name);
}
