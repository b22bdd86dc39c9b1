/**
 * The statements only the PostgreSQL backend runs (the portable lock and outbox statements are in
 * store/sql-tx.ts and store/sql-outbox.ts). `?` placeholders, numbered when prepared.
 */
import { valuesList } from '../sql-outbox';
import { LOCK_COLUMNS } from '../sql-tx';

/** Arbitrary constants naming the advisory locks of the schema migration and of the relay lease. */
export const MIGRATION_LOCK_KEY = 7735342101;
export const RELAY_LOCK_KEY = 7735342102;

export const POSTGRES_SQL = {
  /** Open a transaction and read the database's clock (ms since the epoch) in one round trip. */
  begin: 'BEGIN; SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint AS now',
  commit: 'COMMIT',
  rollback: 'ROLLBACK',
  /**
   * (name, locked_by, process, until, now): the row goes in with token 0 and takes its token from
   * the sequence only once it is in, both inside one function (migration 0004).
   */
  insertLock: `SELECT ${LOCK_COLUMNS} FROM lockmgr_insert_lock(?, ?, ?, ?, ?)`,
  /** (kinds[], names[], locked_by[], process[], until[], token[], now): see migration 0005. */
  firstPass:
    'SELECT op, l_name AS name, l_locked_by AS locked_by, l_lock_process AS lock_process, l_locked_until AS locked_until, ' +
    'l_created_at AS created_at, l_updated_at AS updated_at, l_token AS token ' +
    'FROM lockmgr_first_pass(?::text[], ?::varchar[], ?::varchar[], ?::bigint[], ?::bigint[], ?::bigint[], ?::bigint)',
  /** Events numbered by the outbox's sequence: (event_id, type, name, lock, cause, daemon, at) per row. */
  insertOutbox: (rows: number) =>
    `INSERT INTO lockmgr_outbox (event_id, type, name, lock, cause, daemon, at) VALUES ${valuesList(rows, 7)} RETURNING seq, event_id`,
  /** (seqs[]) */
  removeOutboxRows: 'DELETE FROM lockmgr_outbox WHERE seq = ANY(?::bigint[])',
  /** (key) */
  tryLease: 'SELECT pg_try_advisory_lock(?) AS got',
  /** (key): held for the rest of the migration's transaction. */
  migrationLock: 'SELECT pg_advisory_xact_lock(?)',
} as const;
