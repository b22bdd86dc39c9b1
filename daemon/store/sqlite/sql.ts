/**
 * The statements only the SQLite backend runs (the portable lock and outbox statements are in
 * store/sql-tx.ts and store/sql-outbox.ts).
 */
import { valuesList } from '../sql-outbox';
import { LOCK_COLUMNS } from '../sql-tx';

export const SQLITE_SQL = {
  /**
   * (name, locked_by, process, until, now, now, token): the daemon is the only writer, so it
   * draws the token in memory and inserts it with the row.
   */
  insertLock: `INSERT INTO lockmgr_locks (${LOCK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING RETURNING ${LOCK_COLUMNS}`,
  /** (name): how far a number series (token, event_seq) is reserved. */
  readCounter: 'SELECT value FROM lockmgr_counters WHERE name = ?',
  /** (name, value) */
  writeCounter: 'INSERT OR REPLACE INTO lockmgr_counters (name, value) VALUES (?, ?)',
  /** Events go in with the seq the daemon drew for them: (seq, event_id, type, name, lock, cause, daemon, at) per row. */
  insertOutbox: (rows: number) =>
    `INSERT INTO lockmgr_outbox (seq, event_id, type, name, lock, cause, daemon, at) VALUES ${valuesList(rows, 8)}`,
  /** (seq, seq, …) */
  removeOutboxRows: (count: number) => `DELETE FROM lockmgr_outbox WHERE seq IN (${new Array<string>(count).fill('?').join(', ')})`,
  begin: 'BEGIN IMMEDIATE',
  commit: 'COMMIT',
  rollback: 'ROLLBACK',
} as const;

export const SQLITE_PRAGMAS = {
  wal: 'journal_mode = WAL',
  synchronous: (mode: 'FULL' | 'NORMAL') => `synchronous = ${mode}`,
  /** Pages between the writer's own checkpoints; 0 while a worker thread checkpoints instead. */
  autocheckpoint: (pages: number) => `wal_autocheckpoint = ${pages}`,
} as const;
