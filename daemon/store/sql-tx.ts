/**
 * What the two SQL backends share: a connection shape, the statements both run as they are
 * (portable SQL, `?` placeholders: lock reads and deletes, list, recorded request outcomes), and
 * the transaction class that runs them. Each backend adds the statements only it has (the insert
 * with its fencing token, renewals on its clock, the outbox, the batch first pass) in its own
 * `sql.ts`.
 */
import type { EventCause, EventType } from '../../shared/events';
import type { LockRecord } from '../../shared/protocol';
import { statementTracer } from '../diagnostics';
import {
  DuplicateRequest,
  type LockRow,
  type PendingEvent,
  type PendingOutcome,
  type Renewal,
  type Requester,
  type SessionRow,
  type StoreCounts,
  type StoreTx,
} from './store';

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

export const LOCK_COLUMNS = 'name, locked_by, lock_process, locked_until, created_at, updated_at, token, session_id';
export const SESSION_COLUMNS = 'id, ttl_ms, expires_at, locked_by, created_at';
/** A lock that has not expired at the transaction's clock reading (one parameter: now). */
export const LIVE = '(locked_until IS NULL OR locked_until > ?)';

/**
 * What the metrics count (Store.counts), in one statement. `now` is the SQL of the clock that
 * decides expiry: a `?` parameter, or a function of the database. Live locks are all rows less the
 * expired ones the sweeper has yet to remove: a count of the whole table goes through its smallest
 * index, several times faster than testing every row's expiry (20 against 85 ms for a million
 * locks on SQLite), and the expired ones are few, found through the expiry index.
 */
export function storeCountsSql(now: string): string {
  return `WITH c AS (SELECT ${now} AS now)
    SELECT c.now AS now,
      (SELECT COUNT(*) FROM lockmgr_locks) - (SELECT COUNT(*) FROM lockmgr_locks WHERE locked_until <= c.now) AS locks,
      (SELECT COUNT(*) FROM lockmgr_sessions WHERE expires_at > c.now) AS sessions,
      (SELECT COUNT(*) FROM lockmgr_outbox) AS outbox,
      (SELECT at FROM lockmgr_outbox ORDER BY seq LIMIT 1) AS oldest
    FROM c`;
}

/** A row of storeCountsSql as numbers. */
export function toStoreCounts(row: Row | undefined): StoreCounts {
  return {
    now: Number(row?.now),
    locks: Number(row?.locks ?? 0),
    sessions: Number(row?.sessions ?? 0),
    outbox: Number(row?.outbox ?? 0),
    oldestEventAt: row?.oldest === null || row?.oldest === undefined ? null : Number(row.oldest),
  };
}

/** The lock statements both backends run unchanged. Parameters are listed after each. */
export const LOCK_SQL = {
  /** (name, now) */
  deleteIfExpired: `DELETE FROM lockmgr_locks WHERE name = ? AND locked_until IS NOT NULL AND locked_until <= ? RETURNING ${LOCK_COLUMNS}`,
  /** (name, now) */
  selectLive: `SELECT ${LOCK_COLUMNS} FROM lockmgr_locks WHERE name = ? AND ${LIVE}`,
  /** (name[, token]) */
  deleteLock: `DELETE FROM lockmgr_locks WHERE name = ?`,
  deleteAll: `DELETE FROM lockmgr_locks RETURNING ${LOCK_COLUMNS}`,
} as const;

/** A statement, and its "owned" twin that also requires the grant's token (one more parameter), both returning the row. */
export function withOwnedTwin(sql: string): readonly [string, string] {
  return [`${sql} RETURNING ${LOCK_COLUMNS}`, `${sql} AND token = ? RETURNING ${LOCK_COLUMNS}`];
}
const DELETE_SQL = withOwnedTwin(LOCK_SQL.deleteLock);

/** Sessions and the locks bound to them: statements both backends run unchanged (but `liveSession`). */
export const SESSION_SQL = {
  /** (id, ttl_ms, expires_at, locked_by, client, created_at) */
  open: `INSERT INTO lockmgr_sessions (id, ttl_ms, expires_at, locked_by, client, created_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING ${SESSION_COLUMNS}`,
  /** (now, id, now) */
  keep: `UPDATE lockmgr_sessions SET expires_at = ? + ttl_ms WHERE id = ? AND expires_at > ? RETURNING ${SESSION_COLUMNS}`,
  /** (until, until, id, now): the session's live locks, never shortened. */
  keepLocks: `UPDATE lockmgr_locks SET locked_until = CASE WHEN locked_until IS NULL OR locked_until >= ? THEN locked_until ELSE ? END WHERE session_id = ? AND ${LIVE} RETURNING ${LOCK_COLUMNS}`,
  /** (session_id, until, name, token) */
  bindLock: `UPDATE lockmgr_locks SET session_id = ?, locked_until = ? WHERE name = ? AND token = ? RETURNING ${LOCK_COLUMNS}`,
  /** (id, now) */
  close: 'DELETE FROM lockmgr_sessions WHERE id = ? AND expires_at > ? RETURNING id',
  /** (session_id) */
  deleteLocks: `DELETE FROM lockmgr_locks WHERE session_id = ? RETURNING ${LOCK_COLUMNS}`,
  /** (name, locked_by, lock_process, locked_until, created_at, updated_at, token, session_id) */
  restoreLock: `INSERT INTO lockmgr_locks (${LOCK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING ${LOCK_COLUMNS}`,
  /** (now, limit) */
  deleteExpired: 'DELETE FROM lockmgr_sessions WHERE id IN (SELECT id FROM lockmgr_sessions WHERE expires_at <= ? LIMIT ?) RETURNING id',
} as const;

/** Recorded outcomes of requests (`LockTx.remember`): statements both backends run unchanged. */
export const OUTCOME_SQL = {
  /** (id…, now): found outcomes are marked answered to a repeat. */
  recall: (count: number) =>
    `UPDATE lockmgr_requests SET replayed = 1 WHERE id IN (${placeholders(count)}) AND expires_at > ? RETURNING id, outcome`,
  /** (id, outcome, expires_at)… : the ids that went in (an id already there does not) */
  insert: (rows: number) =>
    `INSERT INTO lockmgr_requests (id, outcome, expires_at) VALUES ${valueRows(rows, 3)} ON CONFLICT (id) DO NOTHING RETURNING id`,
  /** (id): only an outcome no repeat has been answered with. */
  forget: 'DELETE FROM lockmgr_requests WHERE id = ? AND replayed = 0 RETURNING id',
  /** (now, limit) */
  deleteExpired: 'DELETE FROM lockmgr_requests WHERE id IN (SELECT id FROM lockmgr_requests WHERE expires_at <= ? LIMIT ?) RETURNING id',
} as const;

/** `?, ?, ?` */
export function placeholders(count: number): string {
  return new Array<string>(count).fill('?').join(', ');
}

/** `(?, ?, …), (?, ?, …)`: the VALUES of a multi-row INSERT of `rows` rows of `columns` values. */
export function valueRows(rows: number, columns: number): string {
  return new Array<string>(rows).fill(`(${placeholders(columns)})`).join(', ');
}

/** Most rows in one multi-row INSERT (outbox, outcomes). */
export const INSERT_CHUNK = 500;

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
    session_id: (r.session_id as string | null | undefined) ?? null,
  };
}

function toSessionRow(r: Row): SessionRow {
  return {
    id: String(r.id),
    ttl_ms: Number(r.ttl_ms),
    expires_at: Number(r.expires_at),
    locked_by: (r.locked_by as string | null) ?? null,
    created_at: Number(r.created_at),
  };
}

export function firstLockRow(rows: Row[]): LockRow | null {
  const row = rows[0];
  return row ? toLockRow(row) : null;
}

/** What a backend gives the shared transaction class: its renewals, and its sweep of expired locks. */
export interface BackendLockSql {
  /** Each a pair (plain, owned); their parameters come from `renewParams`, then (name, now[, token]). */
  renew: { forever: readonly [string, string]; add: readonly [string, string]; extend: readonly [string, string] };
  /** (now,lim  it, now) */
  deleteExpired: string;
  /** (id, now): the live session, kept from concurrent keepalives until the transaction ends. */
  liveSession: string;
}

/** The lock statements of one SQL transaction; the backend supplies the insert and the renewals' clock. */
export abstract class SqlTx implements StoreTx {
  readonly events: PendingEvent[] = [];
  readonly outcomes: PendingOutcome[] = [];
  private savepoints = 0;

  constructor(
    protected readonly conn: SqlConnection,
    readonly now: number,
    private readonly sql: BackendLockSql,
  ) {}

  abstract insertLock(name: string, expiresMs: number | null, who: Requester): Promise<LockRow | null>;

  /** The parameters a renewal statement of `sql.renew` takes before (name, now[, token]). */
  protected abstract renewParams(renewal: Renewal): unknown[];

  async deleteIfExpired(name: string): Promise<LockRow | null> {
    return firstLockRow(await this.conn.query(LOCK_SQL.deleteIfExpired, [name, this.now]));
  }

  async selectLive(name: string): Promise<LockRow | null> {
    return firstLockRow(await this.conn.query(LOCK_SQL.selectLive, [name, this.now]));
  }

  async renew(name: string, renewal: Renewal, token: number | null): Promise<LockRow | null> {
    const sql = this.sql.renew[renewal.kind][token === null ? 0 : 1];
    const tail = token === null ? [name, this.now] : [name, this.now, token];
    return firstLockRow(await this.conn.query(sql, [...this.renewParams(renewal), ...tail]));
  }

  async deleteLock(name: string, token: number | null): Promise<LockRow | null> {
    const rows = token === null ? await this.conn.query(DELETE_SQL[0], [name]) : await this.conn.query(DELETE_SQL[1], [name, token]);
    return firstLockRow(rows);
  }

  async deleteExpired(limit: number): Promise<LockRow[]> {
    return (await this.conn.query(this.sql.deleteExpired, [this.now, limit, this.now])).map(toLockRow);
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

  async recall(ids: readonly string[]): Promise<Map<string, string>> {
    const found = new Map<string, string>();
    for (let i = 0; i < ids.length; i += INSERT_CHUNK) {
      const chunk = ids.slice(i, i + INSERT_CHUNK);
      for (const r of await this.conn.query(OUTCOME_SQL.recall(chunk.length), [...chunk, this.now]))
        found.set(String(r.id), String(r.outcome));
    }
    return found;
  }

  remember(id: string, outcome: string, expiresAt: number): void {
    this.outcomes.push({ id, outcome, expiresAt });
  }

  async forget(id: string): Promise<boolean> {
    return (await this.conn.query(OUTCOME_SQL.forget, [id])).length > 0;
  }

  async deleteExpiredOutcomes(limit: number): Promise<number> {
    return (await this.conn.query(OUTCOME_SQL.deleteExpired, [this.now, limit])).length;
  }

  async openSession(id: string, ttlMs: number, who: Requester): Promise<SessionRow> {
    const rows = await this.conn.query(SESSION_SQL.open, [id, ttlMs, this.now + ttlMs, who.lockedBy, who.client, this.now]);
    return toSessionRow(rows[0]!);
  }

  async liveSession(id: string): Promise<SessionRow | null> {
    const row = (await this.conn.query(this.sql.liveSession, [id, this.now]))[0];
    return row ? toSessionRow(row) : null;
  }

  async keepSession(
    id: string,
    lockUntil: (sessionExpiresAt: number) => number,
  ): Promise<{ session: SessionRow; locks: LockRow[] } | null> {
    const row = (await this.conn.query(SESSION_SQL.keep, [this.now, id, this.now]))[0];
    if (!row) return null;
    const session = toSessionRow(row);
    const until = lockUntil(session.expires_at);
    const locks = (await this.conn.query(SESSION_SQL.keepLocks, [until, until, id, this.now])).map(toLockRow);
    return { session, locks };
  }

  async bindLock(name: string, token: number, sessionId: string, until: number): Promise<LockRow | null> {
    return firstLockRow(await this.conn.query(SESSION_SQL.bindLock, [sessionId, until, name, token]));
  }

  async closeSession(id: string): Promise<LockRow[] | null> {
    if ((await this.conn.query(SESSION_SQL.close, [id, this.now])).length === 0) return null;
    return (await this.conn.query(SESSION_SQL.deleteLocks, [id])).map(toLockRow);
  }

  async restoreLock(row: LockRow): Promise<LockRow> {
    const params = [row.name, row.locked_by, row.lock_process, row.locked_until, row.created_at, row.updated_at, row.token, row.session_id];
    return toLockRow((await this.conn.query(SESSION_SQL.restoreLock, params))[0]!);
  }

  async deleteExpiredSessions(limit: number): Promise<number> {
    return (await this.conn.query(SESSION_SQL.deleteExpired, [this.now, limit])).length;
  }

  async atomically<T>(fn: () => Promise<T>): Promise<T> {
    const name = `lm_sp${++this.savepoints}`;
    const eventsBefore = this.events.length;
    const outcomesBefore = this.outcomes.length;
    await this.conn.exec(`SAVEPOINT ${name}`);
    try {
      const value = await fn();
      await this.conn.exec(`RELEASE SAVEPOINT ${name}`);
      return value;
    } catch (err) {
      await this.conn.exec(`ROLLBACK TO SAVEPOINT ${name}; RELEASE SAVEPOINT ${name}`);
      this.events.length = eventsBefore;
      this.outcomes.length = outcomesBefore;
      throw err;
    }
  }
}

/** Insert a transaction's outcomes; an id recorded meanwhile fails it with DuplicateRequest. */
export async function writeOutcomes(conn: SqlConnection, outcomes: readonly PendingOutcome[]): Promise<void> {
  for (let i = 0; i < outcomes.length; i += INSERT_CHUNK) {
    const chunk = outcomes.slice(i, i + INSERT_CHUNK);
    const params: unknown[] = [];
    for (const o of chunk) params.push(o.id, o.outcome, o.expiresAt);
    const inserted = new Set((await conn.query(OUTCOME_SQL.insert(chunk.length), params)).map((r) => String(r.id)));
    const taken = chunk.filter((o) => !inserted.has(o.id)).map((o) => o.id);
    if (taken.length > 0) throw new DuplicateRequest(taken);
  }
}
