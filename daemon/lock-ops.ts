/**
 * The lock operations: django-lockmgr's rules over the store's lock statements, each a function
 * of one transaction, and the `Operation`s the request path hands to the batcher. Every write is a
 * single conditional statement (insert-if-absent, delete-if-expired, update-if-held), so that
 * several daemons on one database never race between a read and a write.
 */
import type { EventCause } from '../shared/events';
import { ErrorCode, type ListResult, type LockRecord, type LockSetResultRecord, type LockSetStatus } from '../shared/protocol';
import type { NormalizedGet, NormalizedList, NormalizedRenew, NormalizedSet, NormalizedUnlock } from '../shared/validate';
import { Recalled, type Operation } from './batcher';
import { toLockRecord } from './lock-records';
import {
  TransactionConflict,
  type DomainError,
  type LockRow,
  type LockTx,
  type Renewal,
  type Requester,
  type SessionRow,
} from './store/store';

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

/** Another daemon changed a row between two statements of this transaction: run it again. */
export class ConcurrentChange extends TransactionConflict {}

function causeOf(who: Requester, operation: string): EventCause {
  return { locked_by: who.lockedBy, process_id: who.process, client: who.client, operation };
}

/** The cause of an expiry: a lock of a session expires because the session lapsed. */
function expiryCause(row: LockRow, who: Requester, operation: string): EventCause {
  const cause = causeOf(who, operation);
  if (row.session_id !== null) cause.reason = SESSION_LAPSED;
  return cause;
}
const SESSION_LAPSED = 'session lapsed';
const FORCE_RELEASED = 'force-released';

/** A lock to bind to a session as it is granted: the session, and the expiry it gives the lock. */
export interface SessionBinding {
  id: string;
  until: number;
}

/** Tries of an operation that keeps losing a row to another daemon between two statements. */
const SETTLE_ATTEMPTS = 5;

export type AcquireResult = { granted: LockRow } | { held: LockRow };

/**
 * Insert the lock if the name is free or its holder has expired. Exactly one of any number of
 * concurrent callers wins: the primary key decides, never a read followed by a write.
 */
export async function acquire(
  tx: LockTx,
  name: string,
  expiresMs: number | null,
  who: Requester,
  operation: string,
  session?: SessionBinding,
): Promise<AcquireResult> {
  for (let attempt = 0; attempt < SETTLE_ATTEMPTS; attempt++) {
    let granted = await tx.insertLock(name, expiresMs, who);
    if (!granted) {
      const expired = await tx.deleteIfExpired(name);
      if (expired) {
        tx.emit('expired', toLockRecord(expired), expiryCause(expired, who, operation));
        granted = await tx.insertLock(name, expiresMs, who);
      }
    }
    if (granted && session) granted = await tx.bindLock(name, granted.token, session.id, session.until);
    if (granted) {
      tx.emit('created', toLockRecord(granted), causeOf(who, operation));
      return { granted };
    }
    const held = await tx.selectLive(name);
    if (held) return { held };
    // Released between our insert and our read (another daemon): try again.
  }
  throw new Error(`could not settle lock '${name}' after ${SETTLE_ATTEMPTS} attempts`);
}

export function lockedError(held: LockRow): LockRuleError {
  return new LockRuleError(ErrorCode.LOCKED, `Lock with name ${held.name} already exists.`, toLockRecord(held));
}

function notOwner(name: string, live: LockRow, token: number): LockRuleError {
  return new LockRuleError(
    ErrorCode.NOT_OWNER,
    `Lock ${name} is now held by another grant (token ${live.token}), not token ${token}.`,
    toLockRecord(live),
  );
}

function renewal(expiresMs: number | null, addTime: boolean): Renewal {
  if (expiresMs === null) return { kind: 'forever' };
  return addTime ? { kind: 'add', ms: expiresMs } : { kind: 'extend', ms: expiresMs };
}

/** Bytes of `{"ok":true,"result":…}` around a result. */
const REPLY_ENVELOPE = 24;

/** The JSON size of `value` in bytes. */
function jsonBytes(value: unknown): number {
  return Buffer.byteLength(JSON.stringify(value));
}

/**
 * The most a set's reply can take per name: the name twice (lock and status), up to 3 bytes a
 * UTF-16 unit; locked_by, up to 6 bytes a unit (escaped control characters); the other fields.
 */
const SET_REPLY_BYTES_PER_NAME = 2 * 3 * 255 + 6 * 255 + 300;

function tooLarge(what: string, bytes: number, max: number): LockRuleError {
  return new LockRuleError(
    ErrorCode.REPLY_TOO_LARGE,
    `the reply to ${what} would be ${bytes} bytes, more than the ${max} a NATS message may carry here: nothing was done; send fewer names (or shorter locked_by)`,
  );
}

/**
 * django-lockmgr's set_lock: create and/or renew several locks. A reply that would not fit in
 * `maxReplyBytes` is refused (REPLY_TOO_LARGE) with everything undone.
 */
export async function setLocks(tx: LockTx, req: NormalizedSet, who: Requester, maxReplyBytes = Infinity): Promise<LockSetResultRecord> {
  // Only a request that might not fit is measured, inside a savepoint so that a refusal undoes it.
  const mightNotFit = req.names.length * SET_REPLY_BYTES_PER_NAME + REPLY_ENVELOPE > maxReplyBytes;
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
        const held: LockRow | null = i < failed.i ? await tx.selectLive(name) : null;
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
        held = await tx.selectLive(name);
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
      const renewed = await tx.renew(name, renewal(req.expiresMs, false), null);
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
    if (mightNotFit) {
      const bytes = jsonBytes(result) + REPLY_ENVELOPE;
      if (bytes > maxReplyBytes) throw tooLarge(`a set of ${req.names.length} names`, bytes, maxReplyBytes);
    }
    return result;
  };
  // fail=true is all or nothing: a LockFail undoes every lock this request created or renewed.
  return req.fail || mightNotFit ? tx.atomically(body) : body();
}

export async function renewLock(tx: LockTx, req: NormalizedRenew, who: Requester): Promise<LockRow> {
  for (let attempt = 0; attempt < SETTLE_ATTEMPTS; attempt++) {
    const renewed = await tx.renew(req.name, renewal(req.expiresMs, req.addTime), req.token);
    if (renewed) {
      tx.emit('renewed', toLockRecord(renewed), causeOf(who, 'renew'));
      return renewed;
    }
    const live = await tx.selectLive(req.name);
    if (live) {
      if (req.token !== null && live.token !== req.token) throw notOwner(req.name, live, req.token);
      continue; // renewed by someone between our statements: renew it now
    }
    if (!req.create) {
      throw new LockRuleError(ErrorCode.LOCK_NOT_FOUND, `Lock with name ${req.name} does not exist, cannot renew (set create=True).`);
    }
    const r = await acquire(tx, req.name, req.expiresMs, who, 'renew');
    if ('granted' in r) return r.granted;
  }
  throw new Error(`could not settle lock '${req.name}' after ${SETTLE_ATTEMPTS} attempts`);
}

/**
 * Release `name` (only the grant `token`, when given); true if a live lock was released. A lock of
 * a session released by name, without its token (someone else's, by force), is not free at once:
 * it leaves its session (whose keepalive then tells the holder it lost it) and stays for
 * `lockDelayMs`, so that a holder that has not heard yet has time to stop.
 */
export async function unlock(tx: LockTx, req: NormalizedUnlock, who: Requester, lockDelayMs = 0): Promise<boolean> {
  const row = await tx.deleteLock(req.name, req.token);
  if (!row) {
    if (req.token !== null) {
      const live = await tx.selectLive(req.name);
      if (live) throw notOwner(req.name, live, req.token);
    }
    return false;
  }
  const expired = row.locked_until !== null && row.locked_until <= tx.now;
  if (!expired && row.session_id !== null && req.token === null && lockDelayMs > 0) {
    const kept = await tx.restoreLock({ ...row, session_id: null, locked_until: tx.now + lockDelayMs, updated_at: tx.now });
    tx.emit('renewed', toLockRecord(kept), { ...causeOf(who, 'unlock'), reason: FORCE_RELEASED });
    return true;
  }
  tx.emit(expired ? 'expired' : 'released', toLockRecord(row), expired ? expiryCause(row, who, 'unlock') : causeOf(who, 'unlock'));
  return !expired;
}

/** A session that has lapsed, or never was. */
function sessionNotFound(id: string): LockRuleError {
  return new LockRuleError(
    ErrorCode.SESSION_NOT_FOUND,
    `session ${id} has lapsed (no keepalive within its ttl) or never existed: its locks are lost; open a new session`,
  );
}

/** The live session `id`, and the expiry a lock bound to it gets: the session's, plus the lock-delay. */
export async function sessionBinding(tx: LockTx, id: string, lockDelayMs: number): Promise<SessionBinding> {
  const session = await tx.liveSession(id);
  if (!session) throw sessionNotFound(id);
  return { id, until: session.expires_at + lockDelayMs };
}

/** Keep a session alive, and its locks with it; SESSION_NOT_FOUND once it has lapsed. */
export async function keepSession(tx: LockTx, id: string, lockDelayMs: number): Promise<{ session: SessionRow; locks: LockRow[] }> {
  const kept = await tx.keepSession(id, (expiresAt) => expiresAt + lockDelayMs);
  if (!kept) throw sessionNotFound(id);
  return kept;
}

/** End a session: its locks are released (a clean release: no lock-delay). Null if it had lapsed. */
export async function closeSession(tx: LockTx, id: string, who: Requester): Promise<LockRow[] | null> {
  const locks = await tx.closeSession(id);
  for (const row of locks ?? []) tx.emit('released', toLockRecord(row), causeOf(who, 'session.close'));
  return locks;
}

/**
 * One page of live locks: at most `req.limit`, and no more than fit in `maxReplyBytes` (the page
 * then ends early, with `next` to go on from).
 */
export async function listLocks(tx: LockTx, req: NormalizedList, maxReplyBytes = Infinity): Promise<ListResult> {
  const rows = await tx.listLive({ prefix: req.prefix, after: req.after, limit: req.limit + 1 });
  const locks: LockRecord[] = [];
  // `{"locks":[…],"next":"<name>"}` around the records, a name being at most 255 × 3 bytes.
  let bytes = REPLY_ENVELOPE + 40 + 3 * 255;
  for (const row of rows.slice(0, req.limit)) {
    const record = toLockRecord(row);
    bytes += jsonBytes(record) + 1;
    if (bytes > maxReplyBytes && locks.length > 0) return { locks, next: locks[locks.length - 1]!.name };
    locks.push(record);
  }
  return rows.length > req.limit ? { locks, next: locks[locks.length - 1]!.name } : { locks };
}

/**
 * Expired locks removed per transaction by the sweeper and `clean`: small enough that requests
 * queued behind one page wait milliseconds, not the whole sweep.
 */
export const EXPIRED_PAGE = 250;

/** Delete up to `limit` expired locks, recording an `expired` event for each. */
export async function deleteExpired(tx: LockTx, limit: number, who: Requester, operation: string): Promise<LockRow[]> {
  const rows = await tx.deleteExpired(limit);
  for (const row of rows) tx.emit('expired', toLockRecord(row), expiryCause(row, who, operation));
  return rows;
}

export async function resetLocks(tx: LockTx, who: Requester): Promise<LockRow[]> {
  const rows = await tx.deleteAll();
  for (const row of rows) tx.emit('reset', toLockRecord(row), causeOf(who, 'reset'));
  return rows;
}

// ---- the operations the request path and the sweeper queue ----

/** The smallest name, in byte order: a multi-name set takes its rows in that order. */
function firstName(names: readonly string[]): string | undefined {
  return names.length ? names.reduce((m, n) => (n < m ? n : m)) : undefined;
}

export const ops = {
  set(req: NormalizedSet, who: Requester, maxReplyBytes?: number): Operation<LockSetResultRecord> {
    const key = firstName(req.names);
    // One name, created if free, no all-or-nothing savepoint: it starts with the lock insert.
    const single = req.names.length === 1 && req.create && !req.fail;
    return {
      key,
      first: single ? { kind: 'insert', name: key!, expiresMs: req.expiresMs, who } : undefined,
      run: (tx) => setLocks(tx, req, who, maxReplyBytes),
    };
  },
  get(req: NormalizedGet, who: Requester, lockDelayMs = 0): Operation<AcquireResult> {
    const sessionId = req.session;
    if (sessionId !== null) {
      // A lock of a session lasts as long as the session, and the lock-delay after it lapses.
      return {
        key: req.name,
        run: async (tx) => {
          const binding = await sessionBinding(tx, sessionId, lockDelayMs);
          return acquire(tx, req.name, binding.until - tx.now, who, 'get', binding);
        },
      };
    }
    return {
      key: req.name,
      first: { kind: 'insert', name: req.name, expiresMs: req.expiresMs, who },
      run: (tx) => acquire(tx, req.name, req.expiresMs, who, 'get'),
    };
  },
  unlock(req: NormalizedUnlock, who: Requester, lockDelayMs = 0): Operation<boolean> {
    return {
      key: req.name,
      first: { kind: 'unlock', name: req.name, token: req.token },
      run: (tx) => unlock(tx, req, who, lockDelayMs),
    };
  },
  openSession(id: string, ttlMs: number, who: Requester): Operation<SessionRow> {
    return { run: (tx) => tx.openSession(id, ttlMs, who) };
  },
  keepSession(id: string, lockDelayMs: number): Operation<{ session: SessionRow; locks: LockRow[] }> {
    return { run: (tx) => keepSession(tx, id, lockDelayMs) };
  },
  closeSession(id: string, who: Requester): Operation<LockRow[] | null> {
    return { run: (tx) => closeSession(tx, id, who) };
  },
  deleteExpiredSessions(limit: number): Operation<number> {
    return { run: (tx) => tx.deleteExpiredSessions(limit) };
  },
  renew(req: NormalizedRenew, who: Requester): Operation<LockRow> {
    return { key: req.name, run: (tx) => renewLock(tx, req, who) };
  },
  isLocked(name: string): Operation<LockRow | null> {
    return { run: (tx) => tx.selectLive(name) };
  },
  list(req: NormalizedList, maxReplyBytes?: number): Operation<ListResult> {
    return { run: (tx) => listLocks(tx, req, maxReplyBytes) };
  },
  deleteExpired(limit: number, who: Requester, operation: string): Operation<LockRow[]> {
    return { run: (tx) => deleteExpired(tx, limit, who, operation) };
  },
  deleteExpiredOutcomes(limit: number): Operation<number> {
    return { run: (tx) => tx.deleteExpiredOutcomes(limit) };
  },
  reset(who: Requester): Operation<LockRow[]> {
    return { run: (tx) => resetLocks(tx, who) };
  },
  /**
   * Record `answer` (JSON, as `remember` takes it) as the outcome of request `id`, unless the id
   * has one already: then that one is the answer. Several daemons share the store, and a copy of
   * the request may still reach another: it must answer the same, not do the request again.
   */
  settle(id: string, answer: string, keepMs: number): Operation<Recalled | null> {
    return {
      run: async (tx) => {
        const found = (await tx.recall([id])).get(id);
        if (found !== undefined) return Recalled.from(found);
        tx.remember(id, answer, tx.now + keepMs);
        return null;
      },
    };
  },
  /**
   * Undo grants whose reply would come too late: forget the request's recorded outcome and release
   * each grant that still holds its name (event cause `withdraw`). False, and nothing undone, when
   * a repeat of the request was already answered with those grants: they are the client's now.
   */
  withdraw(grants: readonly LockRow[], requestId: string | null, who: Requester): Operation<boolean> {
    return {
      run: async (tx) => {
        if (requestId !== null && !(await tx.forget(requestId))) return false;
        for (const g of grants) {
          const row = await tx.deleteLock(g.name, g.token);
          if (row) tx.emit('released', toLockRecord(row), causeOf(who, 'withdraw'));
        }
        return true;
      },
    };
  },
};
