/**
 * What the two SQL backends share: a connection shape, the lock statements both run as they are
 * (portable SQL, `?` placeholders), and the transaction class that runs them. Each backend adds
 * the statements only it has (the insert with its fencing token, the outbox, the batch first
 * pass) in its own `sql.ts`.
 */
import type { EventCause, EventType } from '../../shared/events';
import type { LockRecord } from '../../shared/protocol';
import { statementTracer } from '../diagnostics';
import type { LockRow, PendingEvent, Renewal, Requester, StoreTx } from './store';

export type Row = Record<string, unknown>;

/** One database connection: run a statement, get its rows. Placeholders are `?`. */
export interface SqlConnection {
  query(sql: string, params?: readonly unknown[]): Promise<Row[]>;
  /** Statements without parameters, in one round trip where the driver allows. */
  exec(sql: string): Promise<void>;
}

/**
 * `conn`, reporting each statement on the diagnostics channel when `trace` names a transaction
 * someone follows (see diagnostics.ts); `conn` itself otherwise.
 */
export function tracedConnection(conn: SqlConnection, trace: object | undefined): SqlConnection {
  const tracer = statementTracer(trace);
  if (!tracer) return conn;
  return {
    query: (sql, params) => tracer(sql, () => conn.query(sql, params)),
    exec: (sql) => tracer(sql, () => conn.exec(sql)),
  };
}

export const LOCK_COLUMNS = 'name, locked_by, lock_process, locked_until, created_at, updated_at, token';
/** A lock that has not expired at the transaction's clock reading (one parameter: now). */
const LIVE = '(locked_until IS NULL OR locked_until > ?)';
const OWNED = 'AND token = ?';

/** The lock statements both backends run unchanged. Parameters are listed after each. */
export const LOCK_SQL = {
  /** (name, now) */
  deleteIfExpired: `DELETE FROM lockmgr_locks WHERE name = ? AND locked_until IS NOT NULL AND locked_until <= ? RETURNING ${LOCK_COLUMNS}`,
  /** (name, now) */
  selectLive: `SELECT ${LOCK_COLUMNS} FROM lockmgr_locks WHERE name = ? AND ${LIVE}`,
  // Renewals never shorten a lock; a lock that never expires stays that way unless made so.
  // Each has an "owned" twin that also requires the grant's token (one more parameter: token).
  /** (now, name, now[, token]) */
  renewForever: `UPDATE lockmgr_locks SET locked_until = NULL, updated_at = ? WHERE name = ? AND ${LIVE}`,
  /** (ms, now, name, now[, token]) */
  renewAdd: `UPDATE lockmgr_locks SET locked_until = CASE WHEN locked_until IS NULL THEN NULL ELSE locked_until + ? END, updated_at = ? WHERE name = ? AND ${LIVE}`,
  /** (until, until, now, name, now[, token]) */
  renewExtend: `UPDATE lockmgr_locks SET locked_until = CASE WHEN locked_until IS NULL OR locked_until >= ? THEN locked_until ELSE ? END, updated_at = ? WHERE name = ? AND ${LIVE}`,
  /** (name[, token]) */
  deleteLock: `DELETE FROM lockmgr_locks WHERE name = ?`,
  // The expiry test is repeated outside the subquery: PostgreSQL re-checks only the outer
  // condition on a row another transaction changed meanwhile, so without it a sweep would delete
  // a lock renewed by another daemon while the sweep waited for that row.
  /** (now, limit, now) */
  deleteExpired: `DELETE FROM lockmgr_locks WHERE name IN (SELECT name FROM lockmgr_locks WHERE locked_until IS NOT NULL AND locked_until <= ? ORDER BY locked_until LIMIT ?) AND locked_until IS NOT NULL AND locked_until <= ? RETURNING ${LOCK_COLUMNS}`,
  deleteAll: `DELETE FROM lockmgr_locks RETURNING ${LOCK_COLUMNS}`,
} as const;

/** A statement with its "owned" (token-checked) form, both ending in RETURNING the row. */
function returning(sql: string, owned: boolean): string {
  return `${sql}${owned ? ` ${OWNED}` : ''} RETURNING ${LOCK_COLUMNS}`;
}
const RENEW_SQL = {
  forever: [returning(LOCK_SQL.renewForever, false), returning(LOCK_SQL.renewForever, true)],
  add: [returning(LOCK_SQL.renewAdd, false), returning(LOCK_SQL.renewAdd, true)],
  extend: [returning(LOCK_SQL.renewExtend, false), returning(LOCK_SQL.renewExtend, true)],
} as const;
const DELETE_SQL = [returning(LOCK_SQL.deleteLock, false), returning(LOCK_SQL.deleteLock, true)] as const;

/** `list`: live locks in name order, optionally after a name and under a prefix. */
function listSql(after: boolean, prefix: boolean): string {
  const where = [LIVE];
  if (after) where.push('name > ?');
  if (prefix) where.push('substr(name, 1, ?) = ?');
  return `SELECT ${LOCK_COLUMNS} FROM lockmgr_locks WHERE ${where.join(' AND ')} ORDER BY name LIMIT ?`;
}
const LIST_SQL = [listSql(false, false), listSql(false, true), listSql(true, false), listSql(true, true)] as const;

const num = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v));

/** A lock row as the drivers return it (PostgreSQL's BIGINTs come as strings). */
export function toLockRow(r: Row): LockRow {
  return {
    name: String(r.name),
    locked_by: (r.locked_by as string | null) ?? null,
    lock_process: num(r.lock_process),
    locked_until: num(r.locked_until),
    created_at: Number(r.created_at),
    updated_at: Number(r.updated_at),
    token: Number(r.token),
  };
}

export function firstLockRow(rows: Row[]): LockRow | null {
  const row = rows[0];
  return row ? toLockRow(row) : null;
}

/** The lock statements of one SQL transaction; the backend supplies the insert. */
export abstract class SqlTx implements StoreTx {
  readonly events: PendingEvent[] = [];
  private savepoints = 0;

  constructor(
    protected readonly conn: SqlConnection,
    readonly now: number,
  ) {}

  abstract insertLock(name: string, lockedUntil: number | null, who: Requester): Promise<LockRow | null>;

  async deleteIfExpired(name: string): Promise<LockRow | null> {
    return firstLockRow(await this.conn.query(LOCK_SQL.deleteIfExpired, [name, this.now]));
  }

  async selectLive(name: string): Promise<LockRow | null> {
    return firstLockRow(await this.conn.query(LOCK_SQL.selectLive, [name, this.now]));
  }

  async renew(name: string, renewal: Renewal, token: number | null): Promise<LockRow | null> {
    const owned = token === null ? 0 : 1;
    const tail = token === null ? [name, this.now] : [name, this.now, token];
    let rows: Row[];
    if (renewal.kind === 'forever') rows = await this.conn.query(RENEW_SQL.forever[owned], [this.now, ...tail]);
    else if (renewal.kind === 'add') rows = await this.conn.query(RENEW_SQL.add[owned], [renewal.ms, this.now, ...tail]);
    else rows = await this.conn.query(RENEW_SQL.extend[owned], [renewal.until, renewal.until, this.now, ...tail]);
    return firstLockRow(rows);
  }

  async deleteLock(name: string, token: number | null): Promise<LockRow | null> {
    const rows = token === null ? await this.conn.query(DELETE_SQL[0], [name]) : await this.conn.query(DELETE_SQL[1], [name, token]);
    return firstLockRow(rows);
  }

  async deleteExpired(limit: number): Promise<LockRow[]> {
    return (await this.conn.query(LOCK_SQL.deleteExpired, [this.now, limit, this.now])).map(toLockRow);
  }

  async deleteAll(): Promise<LockRow[]> {
    return (await this.conn.query(LOCK_SQL.deleteAll)).map(toLockRow);
  }

  async listLive(query: { prefix: string | null; after: string | null; limit: number }): Promise<LockRow[]> {
    const params: unknown[] = [this.now];
    if (query.after !== null) params.push(query.after);
    // substr counts characters; a JavaScript string's length counts UTF-16 units.
    if (query.prefix !== null) params.push([...query.prefix].length, query.prefix);
    params.push(query.limit);
    const sql = LIST_SQL[(query.after !== null ? 2 : 0) + (query.prefix !== null ? 1 : 0)]!;
    return (await this.conn.query(sql, params)).map(toLockRow);
  }

  emit(type: EventType, lock: LockRecord, cause: EventCause): void {
    this.events.push({ type, lock, cause });
  }

  async atomically<T>(fn: () => Promise<T>): Promise<T> {
    const name = `lm_sp${++this.savepoints}`;
    const eventsBefore = this.events.length;
    await this.conn.exec(`SAVEPOINT ${name}`);
    try {
      const value = await fn();
      await this.conn.exec(`RELEASE SAVEPOINT ${name}`);
      return value;
    } catch (err) {
      await this.conn.exec(`ROLLBACK TO SAVEPOINT ${name}; RELEASE SAVEPOINT ${name}`);
      this.events.length = eventsBefore;
      throw err;
    }
  }
}
