/**
 * The statements only the SQLite backend runs (the portable lock and outbox statements are in
 * store/sql-tx.ts and store/sql-outbox.ts).
 */
import { LIVE, LOCK_COLUMNS, placeholders, SESSION_COLUMNS, valueRows, withOwnedTwin, type BackendLockSql } from '../sql-tx';

/**
 * Renewals never shorten a lock; a lock that never expires stays that way unless made so. The new
 * expiry counts from the moment of the statement (the daemon's clock, read for it): parameters
 * (stmt_now) for forever, (ms, stmt_now) for add, (until, until, stmt_now) for extend, then
 * (name, now[, token]).
 */
export const SQLITE_LOCK_SQL: BackendLockSql = {
  renew: {
    forever: withOwnedTwin(`UPDATE lockmgr_locks SET locked_until = NULL, updated_at = ? WHERE name = ? AND ${LIVE}`),
    add: withOwnedTwin(
      `UPDATE lockmgr_locks SET locked_until = CASE WHEN locked_until IS NULL THEN NULL ELSE locked_until + ? END, updated_at = ? WHERE name = ? AND ${LIVE}`,
    ),
    extend: withOwnedTwin(
      `UPDATE lockmgr_locks SET locked_until = CASE WHEN locked_until IS NULL OR locked_until >= ? THEN locked_until ELSE ? END, updated_at = ? WHERE name = ? AND ${LIVE}`,
    ),
  },
  // The soonest expired first, a page at a time. (now, limit, now)
  deleteExpired: `DELETE FROM lockmgr_locks WHERE name IN (SELECT name FROM lockmgr_locks WHERE locked_until IS NOT NULL AND locked_until <= ? ORDER BY locked_until LIMIT ?) AND locked_until IS NOT NULL AND locked_until <= ? RETURNING ${LOCK_COLUMNS}`,
  // One writer: nothing else can move the session meanwhile.
  liveSession: `SELECT ${SESSION_COLUMNS} FROM lockmgr_sessions WHERE id = ? AND expires_at > ?`,
};

export const SQLITE_SQL = {
  /**
   * (name, locked_by, process, until, now, now, token): the daemon is the only writer, so it
   * draws the token in memory and inserts it with the row. (A session is bound afterwards.)
   */
  insertLock: `INSERT INTO lockmgr_locks (${LOCK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL) ON CONFLICT (name) DO NOTHING RETURNING ${LOCK_COLUMNS}`,
  /** (name): how far a number series (token, event_seq) is reserved. */
  readCounter: 'SELECT value FROM lockmgr_counters WHERE name = ?',
  /** (name, value) */
  writeCounter: 'INSERT OR REPLACE INTO lockmgr_counters (name, value) VALUES (?, ?)',
  /** Events go in with the seq the daemon drew for them: (seq, event_id, type, name, lock, cause, daemon, at) per row. */
  insertOutbox: (rows: number) =>
    `INSERT INTO lockmgr_outbox (seq, event_id, type, name, lock, cause, daemon, at) VALUES ${valueRows(rows, 8)}`,
  /** (seq, seq, …) */
  removeOutboxRows: (count: number) => `DELETE FROM lockmgr_outbox WHERE seq IN (${placeholders(count)})`,
  /** The store's identity (migration 0006). */
  identity: "SELECT value FROM lockmgr_meta WHERE key = 'store_id'",
  begin: 'BEGIN IMMEDIATE',
  commit: 'COMMIT',
  rollback: 'ROLLBACK',
} as const;

export const SQLITE_PRAGMAS = {
  wal: 'journal_mode = WAL',
  synchronous: (mode: 'FULL' | 'NORMAL') => `synchronous = ${mode}`,
  /** Pages between the writer's own checkpoints; 0 while a worker thread checkpoints instead. */
  autocheckpoint: (pages: number) => `wal_autocheckpoint = ${pages}`,
  /** Bytes the `-wal` file is cut back to when the WAL restarts from its beginning. */
  journalSizeLimit: (bytes: number) => `journal_size_limit = ${bytes}`,
  /** A checkpoint that waits for no one; one row (busy, log, checkpointed). */
  checkpoint: 'wal_checkpoint(PASSIVE)',
} as const;
