/**
 * The lock operations, each a function of one transaction. Every write is a single conditional
 * statement (insert-if-absent, delete-if-expired, update-if-held), so that several daemons on
 * one PostgreSQL database never race between a read and a write.
 */
import type { EventCause } from '../../shared/events';
import { ErrorCode, type LockRecord, type LockSetResultRecord, type LockSetStatus } from '../../shared/protocol';
import type { NormalizedGet, NormalizedList, NormalizedRenew, NormalizedSet, NormalizedUnlock } from '../../shared/validate';
import type { Row } from './database';
import type { DomainError, Tx } from './transaction';

/** A request refused by the lock rules (not a failure of the daemon). */
export class LockRuleError extends Error implements DomainError {
  readonly domain = true as const;
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly lock?: LockRecord,
  ) {
    super(message);
    this.name = 'LockRuleError';
  }
}

/**
 * Another daemon changed a row between two statements of this transaction. It carries
 * PostgreSQL's serialization-failure code, so the batch is rolled back and run again.
 */
export class ConcurrentChange extends Error {
  readonly code = '40001';
}

export interface LockRow {
  name: string;
  locked_by: string | null;
  lock_process: number | null;
  locked_until: number | null;
  created_at: number;
  updated_at: number;
  token: number;
}

const COLUMNS = 'name, locked_by, lock_process, locked_until, created_at, updated_at, token';
const num = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v));

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

/** Records already built, by row: a granted lock is both replied and recorded in an event. */
const records = new WeakMap<LockRow, LockRecord>();

export function toLockRecord(row: LockRow): LockRecord {
  let record = records.get(row);
  if (!record) {
    record = buildLockRecord(row);
    records.set(row, record);
  }
  return record;
}

/** ISO strings of recent instants: the rows and events of one transaction share its clock reading. */
const isoStrings = new Map<number, string>();

export function iso(ms: number): string {
  let text = isoStrings.get(ms);
  if (text === undefined) {
    if (isoStrings.size >= 256) isoStrings.clear();
    text = new Date(ms).toISOString();
    isoStrings.set(ms, text);
  }
  return text;
}

function buildLockRecord(row: LockRow): LockRecord {
  return {
    name: row.name,
    locked_by: row.locked_by,
    lock_process: row.lock_process,
    locked_until: row.locked_until === null ? null : iso(row.locked_until),
    created_at: iso(row.created_at),
    updated_at: iso(row.updated_at),
    token: row.token,
  };
}

const LIVE = '(locked_until IS NULL OR locked_until > ?)';

const SQL = {
  insertSqlite: `INSERT INTO lockmgr_locks (${COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING RETURNING ${COLUMNS}`,
  // PostgreSQL: the row goes in with token 0 and takes its token once it is ours (see insertLock),
  // both inside one function (migration 0004), so one round trip.
  insertPostgres: `SELECT ${COLUMNS} FROM lockmgr_insert_lock(?, ?, ?, ?, ?)`,
  firstPass:
    'SELECT op, l_name AS name, l_locked_by AS locked_by, l_lock_process AS lock_process, l_locked_until AS locked_until, ' +
    'l_created_at AS created_at, l_updated_at AS updated_at, l_token AS token ' +
    'FROM lockmgr_first_pass(?::text[], ?::varchar[], ?::varchar[], ?::bigint[], ?::bigint[], ?::bigint[], ?::bigint)',
  deleteExpiredOne: `DELETE FROM lockmgr_locks WHERE name = ? AND locked_until IS NOT NULL AND locked_until <= ? RETURNING ${COLUMNS}`,
  selectLive: `SELECT ${COLUMNS} FROM lockmgr_locks WHERE name = ? AND ${LIVE}`,
  // Renewal never shortens a lock; a lock that never expires stays that way unless made so.
  renewForever: `UPDATE lockmgr_locks SET locked_until = NULL, updated_at = ? WHERE name = ? AND ${LIVE} RETURNING ${COLUMNS}`,
  renewAdd: `UPDATE lockmgr_locks SET locked_until = CASE WHEN locked_until IS NULL THEN NULL ELSE locked_until + ? END, updated_at = ? WHERE name = ? AND ${LIVE} RETURNING ${COLUMNS}`,
  renewExtend: `UPDATE lockmgr_locks SET locked_until = CASE WHEN locked_until IS NULL OR locked_until >= ? THEN locked_until ELSE ? END, updated_at = ? WHERE name = ? AND ${LIVE} RETURNING ${COLUMNS}`,
  unlock: `DELETE FROM lockmgr_locks WHERE name = ? RETURNING ${COLUMNS}`,
  unlockToken: `DELETE FROM lockmgr_locks WHERE name = ? AND token = ? RETURNING ${COLUMNS}`,
  // The expiry test is repeated outside the subquery: PostgreSQL re-checks only the outer
  // condition on a row another transaction changed meanwhile, so without it a sweep would delete
  // a lock renewed by another daemon while the sweep waited for that row.
  deleteExpired: `DELETE FROM lockmgr_locks WHERE name IN (SELECT name FROM lockmgr_locks WHERE locked_until IS NOT NULL AND locked_until <= ? ORDER BY locked_until LIMIT ?) AND locked_until IS NOT NULL AND locked_until <= ? RETURNING ${COLUMNS}`,
  deleteAll: `DELETE FROM lockmgr_locks RETURNING ${COLUMNS}`,
  nextExpiry: `SELECT MIN(locked_until) AS next FROM lockmgr_locks WHERE locked_until IS NOT NULL`,
};

function withToken(sql: string, token: number | null): string {
  return token === null ? sql : sql.replace(`WHERE name = ? AND ${LIVE}`, `WHERE name = ? AND ${LIVE} AND token = ?`);
}

export interface Requester {
  lockedBy: string;
  process: number | null;
  client: string | null;
}

function causeOf(who: Requester, operation: string): EventCause {
  return { locked_by: who.lockedBy, process_id: who.process, client: who.client, operation };
}

/**
 * The first statement of an operation that a PostgreSQL batch may run for all its operations at
 * once (see runFirstPass): the lock insert of a single-name `set` or `get`, or an `unlock`.
 */
export type FirstStatement =
  | { kind: 'insert'; name: string; expiresMs: number | null; who: Requester }
  | { kind: 'unlock'; name: string; token: number | null };

/**
 * PostgreSQL: run `items`, in order, in one round trip. Returns the rows each would have returned
 * alone, or null (with nothing done) if an insert met an existing row: the operations then run
 * statement by statement, since they go on from there with more statements on the same rows.
 */
export async function runFirstPass(tx: Tx, items: readonly FirstStatement[]): Promise<Row[][] | null> {
  const n = items.length;
  const kinds = new Array<string>(n);
  const names = new Array<string>(n);
  const lockedBy = new Array<string | null>(n).fill(null);
  const processes = new Array<number | null>(n).fill(null);
  const until = new Array<number | null>(n).fill(null);
  const token = new Array<number | null>(n).fill(null);
  items.forEach((item, i) => {
    kinds[i] = item.kind;
    names[i] = item.name;
    if (item.kind === 'insert') {
      lockedBy[i] = item.who.lockedBy;
      processes[i] = item.who.process;
      until[i] = item.expiresMs === null ? null : tx.now + item.expiresMs;
    } else {
      token[i] = item.token;
    }
  });
  const rows = await tx.query(SQL.firstPass, [kinds, names, lockedBy, processes, until, token, tx.now]);
  const out: Row[][] = items.map(() => []);
  for (const r of rows) {
    const op = Number(r.op);
    if (op === 0) return null;
    out[op - 1]!.push(r);
  }
  return out;
}

async function insertLock(tx: Tx, name: string, expiresMs: number | null, who: Requester): Promise<LockRow | null> {
  const done = tx.prefetched('insert', name);
  if (done) return done[0] ? toLockRow(done[0]) : null;
  const until = expiresMs === null ? null : tx.now + expiresMs;
  if (tx.dialect === 'sqlite') {
    const rows = await tx.query(SQL.insertSqlite, [name, who.lockedBy, who.process, until, tx.now, tx.now, tx.nextToken()]);
    return rows[0] ? toLockRow(rows[0]) : null;
  }
  // The fencing token is drawn only after the insert succeeded. nextval() in the INSERT itself is
  // evaluated before the insert waits on a conflicting row of another transaction, and that wait
  // can outlast a whole later grant and release of the name: the late grant would then carry a
  // smaller token than the one before it.
  const rows = await tx.query(SQL.insertPostgres, [name, who.lockedBy, who.process, until, tx.now]);
  return rows[0] ? toLockRow(rows[0]) : null;
}

async function selectLive(tx: Tx, name: string): Promise<LockRow | null> {
  const rows = await tx.query(SQL.selectLive, [name, tx.now]);
  return rows[0] ? toLockRow(rows[0]) : null;
}

/** Remove `name` if its lock has expired, recording the expiry. */
async function reapExpired(tx: Tx, name: string, operation: string, who: Requester): Promise<boolean> {
  const rows = await tx.query(SQL.deleteExpiredOne, [name, tx.now]);
  if (rows[0]) tx.emit('expired', toLockRecord(toLockRow(rows[0])), causeOf(who, operation));
  return rows.length > 0;
}

export type AcquireResult = { granted: LockRow } | { held: LockRow };

/**
 * Insert the lock if the name is free or its holder has expired. Exactly one of any number of
 * concurrent callers wins: the primary key decides, never a read followed by a write.
 */
export async function acquire(tx: Tx, name: string, expiresMs: number | null, who: Requester, operation: string): Promise<AcquireResult> {
  for (let attempt = 0; attempt < 5; attempt++) {
    let granted = await insertLock(tx, name, expiresMs, who);
    if (!granted && (await reapExpired(tx, name, operation, who))) granted = await insertLock(tx, name, expiresMs, who);
    if (granted) {
      tx.emit('created', toLockRecord(granted), causeOf(who, operation));
      return { granted };
    }
    const held = await selectLive(tx, name);
    if (held) return { held };
    // Released between our insert and our read (another daemon): try again.
  }
  throw new Error(`could not settle lock '${name}' after 5 attempts`);
}

export function lockedError(held: LockRow): LockRuleError {
  return new LockRuleError(ErrorCode.LOCKED, `Lock with name ${held.name} already exists.`, toLockRecord(held));
}

export async function getLock(tx: Tx, req: NormalizedGet, who: Requester): Promise<AcquireResult> {
  return acquire(tx, req.name, req.expiresMs, who, 'get');
}

async function renewRow(tx: Tx, name: string, expiresMs: number | null, addTime: boolean, token: number | null): Promise<LockRow | null> {
  let rows: Row[];
  if (expiresMs === null) {
    rows = await tx.query(withToken(SQL.renewForever, token), [tx.now, name, tx.now, ...(token === null ? [] : [token])]);
  } else if (addTime) {
    rows = await tx.query(withToken(SQL.renewAdd, token), [expiresMs, tx.now, name, tx.now, ...(token === null ? [] : [token])]);
  } else {
    const until = tx.now + expiresMs;
    rows = await tx.query(withToken(SQL.renewExtend, token), [until, until, tx.now, name, tx.now, ...(token === null ? [] : [token])]);
  }
  return rows[0] ? toLockRow(rows[0]) : null;
}

export async function setLocks(tx: Tx, req: NormalizedSet, who: Requester): Promise<LockSetResultRecord> {
  const body = async (): Promise<LockSetResultRecord> => {
    const counts = { created: 0, renewed: 0, skip_create: 0, skip_renew: 0 };
    const slots: { lock?: LockRecord; status: LockSetStatus }[] = [];
    // The rows are taken in name order, whatever the request's order: two requests naming the
    // same locks in different orders would otherwise each hold a row the other waits for (a
    // deadlock on PostgreSQL). The result still lists the names in the request's order, and
    // LockFail names the first held lock in that order.
    const order = req.names.map((name, i) => ({ name, i })).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.i - b.i));
    let failed: { i: number; held: LockRow } | null = null;
    for (const { name, i } of order) {
      if (failed) {
        // The request fails anyway: only look for a held lock named earlier in it.
        const held: LockRow | null = i < failed.i ? await selectLive(tx, name) : null;
        if (held) failed = { i, held };
        continue;
      }
      let held: LockRow | null;
      if (req.create) {
        const r = await acquire(tx, name, req.expiresMs, who, 'set');
        if ('granted' in r) {
          counts.created += 1;
          slots[i] = { lock: toLockRecord(r.granted), status: { was_locked: false, status: 'create', locked: true } };
          continue;
        }
        held = r.held;
      } else {
        held = await selectLive(tx, name);
        if (!held) {
          counts.skip_create += 1;
          slots[i] = { status: { was_locked: false, status: 'skip', locked: false } };
          continue;
        }
      }
      if (req.fail) {
        failed = { i, held };
        continue;
      }
      if (!req.renew) {
        counts.skip_renew += 1;
        slots[i] = { lock: toLockRecord(held), status: { was_locked: true, status: 'skip', locked: true } };
        continue;
      }
      const renewed = await renewRow(tx, name, req.expiresMs, false, null);
      // Released by another daemon between our read and our update: run the transaction again
      // rather than report (and record) a renewal that did not happen.
      if (!renewed) throw new ConcurrentChange(`lock '${name}' changed during set`);
      tx.emit('renewed', toLockRecord(renewed), causeOf(who, 'set'));
      counts.renewed += 1;
      slots[i] = { lock: toLockRecord(renewed), status: { was_locked: true, status: 'extend', locked: true } };
    }
    if (failed) {
      const name = req.names[failed.i]!;
      throw new LockRuleError(ErrorCode.LOCK_FAIL, `Lock '${name}' already existed. Aborting!`, toLockRecord(failed.held));
    }
    const result: LockSetResultRecord = { locks: [], counts, statuses: [] };
    req.names.forEach((name, i) => {
      const slot = slots[i]!;
      if (slot.lock) result.locks.push(slot.lock);
      result.statuses.push([name, slot.status]);
    });
    return result;
  };
  // fail=true is all or nothing: a LockFail undoes every lock this request created or renewed.
  return req.fail ? tx.atomically(body) : body();
}

export async function renewLock(tx: Tx, req: NormalizedRenew, who: Requester): Promise<LockRow> {
  for (let attempt = 0; attempt < 5; attempt++) {
    const renewed = await renewRow(tx, req.name, req.expiresMs, req.addTime, req.token);
    if (renewed) {
      tx.emit('renewed', toLockRecord(renewed), causeOf(who, 'renew'));
      return renewed;
    }
    const live = await selectLive(tx, req.name);
    if (live) {
      if (req.token !== null && live.token !== req.token) {
        throw new LockRuleError(ErrorCode.NOT_OWNER, `Lock ${req.name} is now held by another grant (token ${live.token}), not token ${req.token}.`, toLockRecord(live));
      }
      continue; // renewed by someone between our statements: renew it now
    }
    if (!req.create) {
      throw new LockRuleError(ErrorCode.LOCK_NOT_FOUND, `Lock with name ${req.name} does not exist, cannot renew (set create=True).`);
    }
    const r = await acquire(tx, req.name, req.expiresMs, who, 'renew');
    if ('granted' in r) return r.granted;
  }
  throw new Error(`could not settle lock '${req.name}' after 5 attempts`);
}

export async function unlock(tx: Tx, req: NormalizedUnlock, who: Requester): Promise<boolean> {
  const rows =
    tx.prefetched('unlock', req.name) ??
    (req.token === null ? await tx.query(SQL.unlock, [req.name]) : await tx.query(SQL.unlockToken, [req.name, req.token]));
  const row = rows[0] ? toLockRow(rows[0]) : null;
  if (!row) {
    if (req.token !== null) {
      const live = await selectLive(tx, req.name);
      if (live) {
        throw new LockRuleError(ErrorCode.NOT_OWNER, `Lock ${req.name} is now held by another grant (token ${live.token}), not token ${req.token}.`, toLockRecord(live));
      }
    }
    return false;
  }
  const expired = row.locked_until !== null && row.locked_until <= tx.now;
  tx.emit(expired ? 'expired' : 'released', toLockRecord(row), causeOf(who, 'unlock'));
  return !expired;
}

export async function isLocked(tx: Tx, name: string): Promise<LockRow | null> {
  return selectLive(tx, name);
}

export async function listLocks(tx: Tx, req: NormalizedList): Promise<{ locks: LockRecord[]; next?: string }> {
  const where = [LIVE];
  const params: unknown[] = [tx.now];
  if (req.after !== null) {
    where.push('name > ?');
    params.push(req.after);
  }
  if (req.prefix !== null) {
    where.push('substr(name, 1, ?) = ?');
    params.push(req.prefix.length, req.prefix);
  }
  params.push(req.limit + 1);
  const rows = await tx.query(`SELECT ${COLUMNS} FROM lockmgr_locks WHERE ${where.join(' AND ')} ORDER BY name LIMIT ?`, params);
  const locks = rows.slice(0, req.limit).map((r) => toLockRecord(toLockRow(r)));
  return rows.length > req.limit ? { locks, next: locks[locks.length - 1]!.name } : { locks };
}

/**
 * Expired locks removed per transaction by the sweeper and `clean`: small enough that requests
 * queued behind one page wait milliseconds, not the whole sweep.
 */
export const EXPIRED_PAGE = 250;

/** Delete up to `limit` expired locks, recording an `expired` event for each. */
export async function deleteExpired(tx: Tx, limit: number, who: Requester, operation: string): Promise<LockRow[]> {
  const rows = (await tx.query(SQL.deleteExpired, [tx.now, limit, tx.now])).map(toLockRow);
  for (const row of rows) tx.emit('expired', toLockRecord(row), causeOf(who, operation));
  return rows;
}

export async function resetLocks(tx: Tx, who: Requester): Promise<LockRow[]> {
  const rows = (await tx.query(SQL.deleteAll)).map(toLockRow);
  for (const row of rows) tx.emit('reset', toLockRecord(row), causeOf(who, 'reset'));
  return rows;
}

/** When the next lock expires (ms since the epoch), or null when none will. */
export async function nextExpiry(tx: Tx): Promise<number | null> {
  const [row] = await tx.query(SQL.nextExpiry);
  return num(row?.next);
}
