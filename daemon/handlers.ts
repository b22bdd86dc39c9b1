/**
 * What each endpoint does with a validated request: one typed handler per endpoint, whose result
 * type is the protocol's (`Api[E]['result']`), so a reply that does not match the protocol does
 * not compile.
 *
 * Requests that change something and carry a request id are done once, and every copy of one (a
 * client sends copies while no answer comes) gets the same answer: see joinCopies. A grant whose
 * reply would leave less than a quarter of its lifetime (the transaction took that long, or the
 * daemon was paused) is withdrawn, not sent as a success.
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { ErrorCode, type Api, type Endpoint, type LockRecord, type LockSetResultRecord, type SessionResult } from '../shared/protocol';
import type { Mutation, NormalizedRequests } from '../shared/validate';
import { AnswerMemory, IN_STORE, settle, type Answer } from './answers';
import type { Batcher, Once, Operation, RecordedRefusal } from './batcher';
import type { Clock } from './clock';
import { iso, toLockRecord } from './lock-records';
import { EXPIRED_PAGE, LockRuleError, lockedError, ops, type AcquireResult } from './lock-ops';
import { CommitInDoubt, RowBusy, StoreUnavailable, type LockRow, type Requester, type SessionRow } from './store/store';
import type { WaitQueue } from './waiters';

export interface RequestContext {
  who: Requester;
  /** Names the request in the diagnostics (the request's message). */
  tag?: object;
  /** Tells the client the daemon has started to wait for the lock (a get that asked for progress). */
  waiting?: () => void;
  /**
   * Hands a grant made after waiting to the client as a request (a get that asked for progress):
   * `gone` when nobody listens for it any more (the caller died, cancelled or timed out), else
   * `sent` (the client answered, or may yet: it keeps the grant). Once sent, the grant is the reply.
   */
  deliver?: (lock: LockRecord) => Promise<'sent' | 'gone'>;
  /** Set by the handler once `deliver` sent the reply. */
  delivered?: boolean;
  /**
   * Set by the handler: the store holds the outcome of this request's id as answered (recorded by
   * this run, or by an earlier one), so a later copy finds it there.
   */
  recorded?: boolean;
}

export type Handler<E extends Endpoint> = (req: NormalizedRequests[E], ctx: RequestContext) => Promise<Api[E]['result']>;
export type Handlers = { [E in Endpoint]: Handler<E> };

export interface HandlerOptions {
  /** How long the outcome of a request id is kept, beyond its wait (ms). */
  requestWindowMs: number;
  /** The largest reply a NATS message may carry now (the server's max_payload, less a margin). */
  maxReplyBytes(): number;
  /** Other daemons serve the same store (PostgreSQL): answers to copies are recorded in it. */
  sharedStore: boolean;
  /**
   * How long a lock of a session stays after its session lapsed, or after it was released by name
   * (by force): the holder's time to stop before the name is granted again (ms).
   */
  lockDelayMs: number;
}

/** The seed's default owner: requests that name none are recorded as this host's. */
const FALLBACK_OWNER = hostname();
/** A grant is sent only while this share of its lifetime is left. */
const LEAST_LIFETIME_LEFT = 0.25;
/** A waiting get looks again this often at a name whose row another session holds. */
const BUSY_LOOK_MS = 250;
/** Answers kept for copies of requests: at most this many (the newest). */
const MAX_ANSWERS_KEPT = 20_000;

/**
 * The daemon is stopping: a `get` that was waiting for its lock is given up, not refused. The
 * client sends it again (same request id) to another daemon, or to one started in this one's place.
 */
export class DaemonStopping extends Error {
  constructor(name: string) {
    super(
      `this daemon is stopping and gave up waiting for lock ${name}: send the request again (same request_id, what is left of the wait)`,
    );
    this.name = 'DaemonStopping';
  }
}

/** Who a request says it is (`locked_by`, process id) and which NATS client sent it. */
export function requesterOf(req: NormalizedRequests[Endpoint], client: string | null): Requester {
  const r = req as { lockedBy?: string | null; process?: number | null };
  return { lockedBy: r.lockedBy ?? FALLBACK_OWNER, process: r.process ?? null, client };
}

/**
 * A grant of `lifetimeMs` (null: never expires) decided after `startedAt` (ms, performance.now())
 * has less than a quarter of its lifetime left now. The lifetime started no earlier than
 * `startedAt`, so this errs on the safe side.
 */
function tooLate(lifetimeMs: number | null, startedAt: number): boolean {
  return lifetimeMs !== null && lifetimeMs - (performance.now() - startedAt) < lifetimeMs * LEAST_LIFETIME_LEFT;
}

/** The grants (`granted` rows) decided after `startedAt` that would be sent too late. */
function lateGrants(granted: readonly LockRow[], startedAt: number): LockRow[] {
  return granted.filter((g) => tooLate(g.locked_until === null ? null : g.locked_until - g.created_at, startedAt));
}

export function lockHandlers(batcher: Batcher, waiters: WaitQueue, clock: Clock, options: HandlerOptions): Handlers {
  /**
   * Run `op`, once per request id when the request has one: the value, or the result an earlier
   * run of the id recorded (`recalled`).
   */
  async function once<T, R>(
    op: Operation<T>,
    req: Mutation,
    ctx: RequestContext,
    outcome: (value: T) => R | undefined,
    waitMs = 0,
  ): Promise<{ value: T } | { recalled: R }> {
    ctx.recorded = false;
    if (req.requestId === null) return { value: await batcher.run(op, ctx.tag) };
    // The value whose outcome the last run recorded (a transaction may run again, and change nothing then).
    let recordedValue: { value: T } | undefined;
    const record = (value: T): R | undefined => {
      const o = outcome(value);
      recordedValue = o === undefined ? undefined : { value };
      return o;
    };
    const spec: Once<T> = { id: req.requestId, copy: req.attempt > 1, keepMs: options.requestWindowMs + waitMs, outcome: record };
    const r = await batcher.runOnce({ ...op, once: spec }, ctx.tag);
    if ('value' in r) {
      ctx.recorded = recordedValue !== undefined && recordedValue.value === r.value;
      return r;
    }
    ctx.recorded = true;
    if (r.refusal) throw refusalError(r.refusal);
    return { recalled: r.result as R };
  }

  /** Release grants that would be sent too late, and say so instead of granting. */
  async function withdrawIfLate(granted: readonly LockRow[], startedAt: number, req: Mutation, ctx: RequestContext): Promise<void> {
    const late = lateGrants(granted, startedAt);
    if (late.length === 0) return;
    // A repeat already answered with these grants keeps them, and this late reply says the same.
    if (!(await batcher.run(ops.withdraw(granted, req.requestId, ctx.who), ctx.tag))) return;
    const names = late.length > 3 ? `${late.length} locks (${late[0]!.name}, …)` : late.map((g) => g.name).join(', ');
    throw new StoreUnavailable(
      `granting ${names} took so long that less than a quarter of the lock's lifetime was left: released ${granted.length > 1 ? 'them' : 'it'}; try again`,
    );
  }

  /** One look at the lock: granted, held (with when it may be free), or recorded by an earlier run. */
  async function tryGet(req: NormalizedRequests['get'], ctx: RequestContext): Promise<LockRecord | { held: LockRow | null }> {
    const startedAt = performance.now();
    let r: { value: AcquireResult } | { recalled: LockRecord };
    try {
      r = await once(
        ops.get(req, ctx.who, options.lockDelayMs),
        req,
        ctx,
        (v) => ('granted' in v ? toLockRecord(v.granted) : undefined),
        req.waitMs,
      );
    } catch (err) {
      // Another session holds the name's row (stuck, or paused): as good as held, for a waiter.
      if (err instanceof RowBusy && req.waitMs > 0) return { held: null };
      throw err;
    }
    if ('recalled' in r) return r.recalled;
    if ('held' in r.value) return { held: r.value.held };
    await withdrawIfLate([r.value.granted], startedAt, req, ctx);
    return toLockRecord(r.value.granted);
  }

  /** get: try now; if held and the request may wait, sleep until a release or expiry, then retry. */
  async function getWithWait(req: NormalizedRequests['get'], ctx: RequestContext): Promise<LockRecord> {
    if (req.waitMs === 0) {
      const r = await tryGet(req, ctx);
      if ('held' in r) throw lockedError(r.held!);
      return r;
    }
    const deadline = clock.now() + req.waitMs;
    // Follow releases of the name from before the first look, so none is missed in between.
    const ticket = await waiters.follow(req.name);
    try {
      let front = false;
      for (;;) {
        const r = await tryGet(req, ctx);
        if (!('held' in r)) return front ? handOver(r, req, ctx) : r;
        if (clock.now() >= deadline) {
          if (r.held) throw lockedError(r.held);
          throw new RowBusy(`the row of lock ${req.name} is held by another database session`);
        }
        // Stopping, with wait left: not LOCKED, but "ask another daemon" (it no longer takes new
        // requests by now, so a copy sent again goes elsewhere).
        if (waiters.closed) throw new DaemonStopping(req.name);
        if (!front) ctx.waiting?.();
        const heldUntil = r.held ? (r.held.locked_until ?? Infinity) : clock.now() + BUSY_LOOK_MS;
        await waiters.wait(ticket, Math.min(deadline, heldUntil + 1), front);
        front = true;
      }
    } finally {
      waiters.unfollow(ticket);
    }
  }

  /**
   * A grant made after waiting goes to a caller that may have gone meanwhile (killed, cancelled,
   * timed out): hand it over as a request, and if nobody listens for it any more, withdraw it, so
   * that the next waiter gets the name at once instead of a dead one holding it.
   */
  async function handOver(lock: LockRecord, req: NormalizedRequests['get'], ctx: RequestContext): Promise<LockRecord> {
    if (!ctx.deliver) return lock;
    if ((await ctx.deliver(lock)) === 'sent') {
      ctx.delivered = true;
      return lock;
    }
    // A copy of the request answered with this grant keeps it (its caller is there).
    if (!(await batcher.run(ops.withdraw([toGrantedRow(lock)], req.requestId, ctx.who), ctx.tag))) return lock;
    // The reply reaches nobody; a copy of the request that joined this one learns the name is taken.
    throw new LockRuleError(ErrorCode.LOCKED, `nobody waits for the grant of ${req.name} any more (the caller is gone): withdrawn`);
  }

  async function set(req: NormalizedRequests['set'], ctx: RequestContext): Promise<LockSetResultRecord> {
    const startedAt = performance.now();
    const changed = (v: LockSetResultRecord) => (v.counts.created + v.counts.renewed > 0 ? v : undefined);
    const r = await once(ops.set(req, ctx.who, options.maxReplyBytes()), req, ctx, changed);
    if ('recalled' in r) return r.recalled;
    // Every lock this request created has the lifetime it asked for: their rows are rebuilt from
    // the records only when that is too late.
    if (r.value.counts.created > 0 && tooLate(req.expiresMs, startedAt)) {
      const created = new Set(r.value.statuses.filter(([, s]) => s.status === 'create').map(([name]) => name));
      await withdrawIfLate(r.value.locks.filter((l) => created.has(l.name)).map(toGrantedRow), startedAt, req, ctx);
    }
    return r.value;
  }

  /**
   * Copies of one request (the client sends one when no answer came in time) get one answer and
   * the request is done once: a copy that arrives while the first is handled joins it (a get that
   * waits tells the copy so); one that arrives later gets the answer given, kept for
   * `requestWindowMs` (or the outcome the store recorded, looked up there).
   * With a store other daemons share, the answer to a copy is recorded there too, so that a copy
   * still on its way to another daemon answers the same.
   */
  const running = new Map<string, Promise<unknown>>();
  const answered = new AnswerMemory(options.requestWindowMs, MAX_ANSWERS_KEPT);
  function joinCopies<Q, R>(handler: (req: Q, ctx: RequestContext) => Promise<R>): (req: Q, ctx: RequestContext) => Promise<R> {
    return (req, ctx) => {
      const { requestId: id, attempt } = req as Partial<Mutation>;
      if (id === undefined || id === null) return handler(req, ctx);
      const given = answered.get(id, clock.now());
      const inStore = given !== undefined && 'inStore' in given;
      if (given && !inStore) return Promise.resolve().then(() => settle<R>(given));
      const first = running.get(id) as Promise<R> | undefined;
      if (first) {
        if ((req as Partial<NormalizedRequests['get']>).waitMs) ctx.waiting?.();
        return first;
      }
      // A send of an id whose outcome this daemon recorded is a copy, whatever its attempt says:
      // looked up in the store.
      const sendAttempt = attempt ?? 1;
      const asAttempt = inStore ? Math.max(2, sendAttempt) : sendAttempt;
      const asSent = asAttempt === sendAttempt ? req : { ...req, attempt: asAttempt };
      const done = answerOnce(handler, asSent, ctx, id, asAttempt).finally(() => running.delete(id));
      running.set(id, done);
      return done;
    };
  }

  async function answerOnce<Q, R>(
    handler: (req: Q, ctx: RequestContext) => Promise<R>,
    req: Q,
    ctx: RequestContext,
    id: string,
    attempt: number,
  ): Promise<R> {
    let answer: Answer;
    try {
      answer = { value: await handler(req, ctx) };
    } catch (error) {
      answer = { error };
    }
    if (options.sharedStore && attempt > 1 && ('value' in answer || answer.error instanceof LockRuleError)) {
      answer = await settleShared(id, answer, ctx);
    }
    // Committed or not is unknown, or nothing was done because this daemon is stopping: a copy
    // must find out again. A result the store holds is looked up there by a copy: kept whole
    // here, a busy daemon's answers fill V8's old space (and RSS) for copies that rarely come.
    if ('value' in answer && ctx.recorded) answered.set(id, IN_STORE, clock.now());
    else if (!('error' in answer && (answer.error instanceof CommitInDoubt || answer.error instanceof DaemonStopping))) {
      answered.set(id, answer, clock.now());
    }
    return settle<R>(answer);
  }

  /** The answer to a copy, as recorded in the shared store: this one, or one recorded before. */
  async function settleShared(id: string, answer: Answer, ctx: RequestContext): Promise<Answer> {
    const recorded = 'value' in answer ? { result: answer.value } : { refusal: refusalOf(answer.error as LockRuleError) };
    try {
      const before = await batcher.run(ops.settle(id, JSON.stringify(recorded), options.requestWindowMs), ctx.tag);
      if (!before) return answer;
      return before.refusal ? { error: refusalError(before.refusal) } : { value: before.result };
    } catch {
      return answer; // not recorded: the store is away, and the answer stands as given
    }
  }

  const unlock = joinCopies(async (req: NormalizedRequests['unlock'], ctx: RequestContext) => {
    const r = await once(ops.unlock(req, ctx.who, options.lockDelayMs), req, ctx, (released) =>
      released ? { unlocked: true } : undefined,
    );
    return 'recalled' in r ? r.recalled : { unlocked: r.value };
  });
  const renew = joinCopies(async (req: NormalizedRequests['renew'], ctx: RequestContext) => {
    const r = await once(ops.renew(req, ctx.who), req, ctx, toLockRecord);
    return 'recalled' in r ? r.recalled : toLockRecord(r.value);
  });
  const setOnce = joinCopies(set);

  // The admin endpoints do the same as the everyday ones; what differs is what validation lets
  // through (by name, renewing) and who NATS permissions let send it.
  return {
    set: setOnce,
    get: joinCopies(getWithWait),
    unlock,
    renew,
    admin_set: setOnce,
    admin_unlock: unlock,
    admin_renew: renew,
    is_locked: async (req, ctx) => {
      const row = await batcher.run(ops.isLocked(req.name), ctx.tag);
      return { locked: row !== null, lock: row ? toLockRecord(row) : null };
    },
    list: (req, ctx) => batcher.run(ops.list(req, options.maxReplyBytes()), ctx.tag),
    // Naturally idempotent: a repeat removes only what expired since.
    clean: async (_req, ctx) => {
      let removed = 0;
      for (;;) {
        const rows = await batcher.run(ops.deleteExpired(EXPIRED_PAGE, ctx.who, 'clean'), ctx.tag);
        removed += rows.length;
        if (rows.length < EXPIRED_PAGE) return { removed };
      }
    },
    // Recorded even when nothing was removed: a repeat must not remove locks taken since.
    reset: joinCopies(async (req, ctx) => {
      const r = await once(ops.reset(ctx.who), req, ctx, (rows) => ({ removed: rows.length }));
      return 'recalled' in r ? r.recalled : { removed: r.value.length };
    }),
    // Sessions: opening one twice opens two (an unused one lapses); keepalive and close are
    // naturally idempotent.
    session_open: async (req, ctx) => {
      const row = await batcher.run(ops.openSession(randomBytes(16).toString('base64url'), req.ttlMs, ctx.who), ctx.tag);
      return sessionResult(row);
    },
    session_keepalive: async (req, ctx) => {
      const { session, locks } = await batcher.run(ops.keepSession(req.session, options.lockDelayMs), ctx.tag);
      return { ...sessionResult(session), locks: locks.map((l) => ({ name: l.name, token: l.token })) };
    },
    session_close: async (req, ctx) => {
      const released = await batcher.run(ops.closeSession(req.session, ctx.who), ctx.tag);
      return { closed: released !== null, released: released?.length ?? 0 };
    },
  };
}

function sessionResult(row: SessionRow): SessionResult {
  return { session: row.id, ttl: row.ttl_ms / 1000, expires_at: iso(row.expires_at) };
}

function refusalOf(e: LockRuleError): RecordedRefusal {
  return e.lock ? { code: e.code, message: e.message, lock: e.lock } : { code: e.code, message: e.message };
}

/** A refusal recorded for a request id, as the error it was. */
function refusalError(r: RecordedRefusal): LockRuleError {
  return new LockRuleError(r.code as ErrorCode, r.message, r.lock as LockRecord | undefined);
}

/** A granted lock's record as the row it came from (times in ms), for withdrawing it: by name and token. */
function toGrantedRow(l: LockRecord): LockRow {
  const ms = (iso: string) => Date.parse(iso);
  return {
    name: l.name,
    locked_by: l.locked_by,
    lock_process: l.lock_process,
    locked_until: l.locked_until === null ? null : ms(l.locked_until),
    created_at: ms(l.created_at),
    updated_at: ms(l.updated_at),
    token: l.token,
    session_id: null, // the record names its session by its public name only
  };
}
