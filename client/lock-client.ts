/**
 * LockClient: django-lockmgr's API over NATS request/reply. Thin by design: it validates names,
 * fills in the defaults the seed documents (600 s, the hostname as `locked_by`), sends one request
 * and maps the reply, or its absence, to a result or one of the error classes.
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import {
  ErrorCode as NatsErrorCode,
  headers,
  NatsError,
  RequestStrategy,
  type ConnectionOptions,
  type Msg,
  type MsgHdrs,
  type NatsConnection,
} from 'nats';
import { connectNats, DEFAULT_NATS_URL, natsSecurityFromEnv, pickSecurity, type NatsSecurity } from '../shared/connect';
import { maskNatsUrls } from '../shared/nats-url';
import {
  bodyBytes,
  CLIENT_HEADER,
  DEFAULT_EXPIRES,
  DEFAULT_PREFIX,
  DEFAULT_SESSION_TTL,
  isWaitingNotice,
  requestSubject,
  type Api,
  type Endpoint,
  type GetRequest,
  type LockRecord,
  type ListResult,
  type MutationFields,
  type Reply,
} from '../shared/protocol';
import { lockNameProblem } from '../shared/validate';
import {
  Cancelled,
  ConnectionClosed,
  InvalidRequest,
  LockError,
  NatsUnavailable,
  NoDaemon,
  RequestTimeout,
  SessionNotFound,
  errorFromNats,
  errorFromWire,
} from './errors';
import { HeldLock } from './held-lock';
import { Session, type SessionOptions } from './session';
import { Lock, LockSetResult } from './lock';
import { LockManager, type WithLockOptions } from './lock-manager';
import { LockEventStream, type EventsOptions } from './events';
import { NatsLink } from './nats-link';

export interface LockClientOptions {
  /** Subject prefix the daemons serve (default `lock`). */
  prefix?: string;
  /** Milliseconds a call may take, its re-sends included (default 10000); `getLock` adds its `wait`. */
  timeout?: number;
  /**
   * Milliseconds without an answer before a call is sent again (default 100), to whichever daemon
   * NATS picks, under the same request id: a daemon that is paused or cut off costs a re-send, not
   * the call. Later re-sends come half as long again apart, up to four times this. A `getLock` that
   * waits is not sent again while a daemon says it is waiting for the lock.
   */
  resendAfter?: number;
  /** Default `locked_by` for requests that name none (default: this machine's hostname). */
  locked_by?: string;
  /** Seconds the client's shared session (for `hold` and `withLock`) lives without a keepalive (default 15). */
  sessionTtl?: number;
}

export interface ConnectOptions extends LockClientOptions, NatsSecurity {
  /**
   * NATS server URL(s), a comma-separated string or a list; `nats://user:pass@host` and
   * `nats://token@host` log in, `tls://host` asks for TLS. Default `LOCKMGR_NATS_URL` or
   * nats://127.0.0.1:4222. The login and TLS settings (`creds`, `nkey`, `token`, `user`, `password`,
   * `tlsCa`, `tlsCert`, `tlsKey`; file settings are paths) default to their LOCKMGR_* variables.
   */
  servers?: string | string[];
  /**
   * When the connection to NATS is lost: `true` (default) reconnect forever, trying every second;
   * a number: give up after that many attempts per server; `false` (or 0): do not reconnect. While
   * reconnecting, calls wait for NATS within their own timeout (then NatsUnavailable); once the
   * client has given up, its connection is closed and every call fails with ConnectionClosed.
   * `nats.reconnect`, `nats.maxReconnectAttempts` and `nats.reconnectTimeWait`, when given, win.
   */
  reconnect?: boolean | number;
  /** Anything else for the NATS connection (name, reconnect policy, more TLS options...). */
  nats?: Omit<ConnectionOptions, 'servers'>;
}

/** What every call takes. */
export interface RequestOptions {
  /**
   * Aborting it ends the call at once with `Cancelled` (cause: the signal's reason): the call
   * stops listening for answers and sends no more copies. A copy already sent may still be done
   * by a daemon. An already-aborted signal fails the call without sending anything.
   */
  signal?: AbortSignal;
}

export interface SetLockOptions extends RequestOptions {
  /** Seconds; 0 or null: never expires. Default 600. */
  timeout?: number | null;
  /** All or nothing: if any name is held, raise LockFail and keep nothing. Default false. */
  fail?: boolean;
  /** Renew names that are already locked. Default true. */
  renew?: boolean;
  /** Create names that are not locked. Default true. */
  create?: boolean;
  locked_by?: string;
  process_id?: number;
}

export interface GetLockOptions extends RequestOptions {
  /** Seconds; 0 or null: never expires. Default 600. Not with `session`: the session decides. */
  expires?: number | null;
  /** Take the lock in this session: it lasts as long as the session is kept alive. */
  session?: Session;
  locked_by?: string;
  lock_process?: number;
  /** Seconds to wait for a held lock to be released (woken by the release). Default 0. */
  wait?: number;
}

export interface RenewLockOptions extends RequestOptions {
  /** Seconds. Default 600. A lock is never shortened. */
  expires?: number | null;
  /** Add to the current expiry instead of setting now + expires. Default false. */
  add_time?: boolean;
  /** Create the lock if it does not exist. Default false. */
  create?: boolean;
  locked_by?: string;
  lock_process?: number;
}

export interface ListLocksOptions extends RequestOptions {
  /** Only names starting with this. */
  prefix?: string;
  /** Page size (1-10000, default 1000). */
  limit?: number;
  /** Start after this name (the previous page's `next`). */
  after?: string;
}

/** The answer to a grant handed over after a wait: any body says "taken". */
const HANDOVER_TAKEN = bodyBytes('{}');
const MAX_TIMER_MS = 2 ** 31 - 1;
/** The requests that change something: each call carries a request id, kept across its attempts. */
const MUTATIONS: ReadonlySet<Endpoint> = new Set([
  'set',
  'get',
  'unlock',
  'renew',
  'clean',
  'reset',
  'admin_set',
  'admin_unlock',
  'admin_renew',
]);
/**
 * Copies of an unanswered call: the first after this, then each half as long again after the
 * last, up to four times as long. Well above an answer's usual time (ms), so that copies go out
 * only when a daemon is paused, cut off or gone; a copy that reaches a daemon still working on
 * the request joins it.
 */
const DEFAULT_RESEND_AFTER_MS = 100;
const RESEND_GROWTH = 1.5;
const RESEND_MAX_FACTOR = 4;
/** Pauses before asking again when no daemon answered: doubling from the first to the most. */
const FIRST_PAUSE_MS = 50;
const MAX_PAUSE_MS = 500;
/** What one more name adds to the time a `setLock` copy waits for its answer before it is sent again. */
const SET_MS_PER_NAME = 2;
/** A copy needs at least this long to be answered; with less left none is sent. */
const MIN_ATTEMPT_MS = 20;

export interface CallOptions {
  /** A get's wait (ms): copies ask for progress and carry what is left of it. */
  waitMs?: number;
  /** More time (ms) the request takes to do, before a copy is sent again. */
  slowMs?: number;
  /** Set to when (performance.now()) the call's first copy went out. */
  firstSent?: { at: number };
  /** Aborting it ends the call with Cancelled, its copies no longer listened to. */
  signal?: AbortSignal;
}

/** Between reconnect attempts (nats.js waits 2 s): calls work again within about a second of NATS coming back. */
const RECONNECT_WAIT_MS = 1000;

/** The reconnect policy of `connect()`'s `reconnect` option, as nats.js options. */
function reconnectPolicy(reconnect: boolean | number | undefined): Partial<ConnectionOptions> {
  const r = reconnect ?? true;
  if (r === true) return { reconnect: true, maxReconnectAttempts: -1, reconnectTimeWait: RECONNECT_WAIT_MS, ignoreAuthErrorAbort: true };
  if (r === false || r === 0) return { reconnect: false };
  if (typeof r !== 'number' || !Number.isInteger(r) || r < 0) {
    throw new InvalidRequest(`reconnect must be true, false or a whole number of attempts, got ${String(r)}`, [
      { field: 'reconnect', problem: 'must be true, false or a whole number of attempts' },
    ]);
  }
  return { reconnect: true, maxReconnectAttempts: r, reconnectTimeWait: RECONNECT_WAIT_MS };
}

/**
 * Request ids unique to one call: 128 random bits drawn once per client, then a counter (drawing
 * random bytes per call cost more than the rest of the call).
 */
class RequestIds {
  private readonly prefix = randomBytes(16).toString('base64url');
  private count = 0;
  next(): string {
    return `${this.prefix}.${(++this.count).toString(36)}`;
  }
}
const decoder = new TextDecoder();

function parseOrNull(data: Uint8Array): unknown {
  try {
    return JSON.parse(decoder.decode(data));
  } catch {
    return null;
  }
}

function checkName(name: unknown): string {
  const problem = lockNameProblem(name);
  if (problem) throw new InvalidRequest(`invalid lock name ${JSON.stringify(name)}: ${problem}`, [{ field: 'name', problem }]);
  return name as string;
}

/**
 * Stop listening for the replies of a request-many: nats.js returns its queued iterator (typed as
 * a plain AsyncIterable), whose `stop()` ends the iteration and removes the request's inbox entry.
 */
function stopReplies(replies: AsyncIterable<Msg>): void {
  (replies as AsyncIterable<Msg> & { stop?: () => void }).stop?.();
}

/** Drop undefined fields so the daemon applies its defaults. */
function compact<T extends object>(o: T): T {
  for (const k of Object.keys(o) as (keyof T)[]) if (o[k] === undefined) delete o[k];
  return o;
}

/** The client's shared session, while it opens (cancelled once every caller waiting for it cancelled) and after. */
interface SharedSession {
  promise: Promise<Session>;
  opening: boolean;
  /** Callers with a signal waiting for it to open. */
  waiters: number;
  controller: AbortController;
}

export class LockClient {
  readonly prefix: string;
  readonly timeout: number;
  readonly resendAfter: number;
  readonly lockedBy: string;
  private readonly ownsConnection: boolean;
  private readonly link: NatsLink;
  private clientHeaders?: ReturnType<typeof headers>;
  private readonly requestIds = new RequestIds();
  private sharedSession?: SharedSession;
  /** The sessions this client took locks in, by public name (as lock records name them), to let go of a lock released by its token. */
  private readonly sessions = new Map<string, Session>();
  /** Seconds: the ttl of the shared session. */
  readonly sessionTtl: number;

  /** Use an existing NATS connection (the client will not close it). */
  constructor(
    readonly nc: NatsConnection,
    options: LockClientOptions = {},
    ownsConnection = false,
  ) {
    this.prefix = options.prefix ?? DEFAULT_PREFIX;
    this.timeout = options.timeout ?? 10_000;
    this.resendAfter = options.resendAfter ?? DEFAULT_RESEND_AFTER_MS;
    this.lockedBy = options.locked_by ?? hostname();
    this.sessionTtl = options.sessionTtl ?? DEFAULT_SESSION_TTL;
    this.ownsConnection = ownsConnection;
    this.link = NatsLink.of(nc);
  }

  /**
   * Connect to NATS and return a client that closes the connection on `close()`. It reconnects
   * forever after losing NATS unless `reconnect` says otherwise. Fails with NatsUnavailable when
   * NATS cannot be reached now, PermissionDenied when it refuses the login.
   */
  static async connect(options: ConnectOptions = {}): Promise<LockClient> {
    const { name, ...nats } = options.nats ?? {};
    const servers = options.servers ?? process.env.LOCKMGR_NATS_URL;
    let nc: NatsConnection;
    try {
      nc = await connectNats({
        servers,
        ...natsSecurityFromEnv(),
        // The login and TLS settings among the options; an undefined one leaves its LOCKMGR_* variable in force.
        ...pickSecurity((_key, field) => options[field]),
        name: name ?? `lockmgr-client ${hostname()}:${process.pid}`,
        nats: { ...reconnectPolicy(options.reconnect), ...nats },
      });
    } catch (err) {
      const urls = typeof servers === 'string' ? servers : (servers ?? [DEFAULT_NATS_URL]).join(',');
      throw errorFromNats(err, { connecting: maskNatsUrls(urls) });
    }
    return new LockClient(nc, { prefix: options.prefix ?? process.env.LOCKMGR_PREFIX, ...options }, true);
  }

  /** Says who sends the requests (recorded in lock events); built once, encoded per request. */
  private makeClientHeaders() {
    const h = headers();
    h.set(CLIENT_HEADER, `${this.nc.info?.client_id ?? '?'}@${hostname()}:${process.pid}`);
    return h;
  }

  /**
   * Send a request; resolve its result or throw the mapped error. While no answer has come, a copy
   * goes out again after `resendAfter` ms (half as long again each time, up to four times as long), to
   * whichever daemon NATS picks, under the same request id — so a request that changes something
   * is never done twice, and a paused or cut-off daemon costs a re-send, not the call. Every copy
   * stays in the race: the first answer wins. No daemon at all, or one that lost its database
   * while committing, is asked again after a pause; a daemon that stops while the request waits
   * for its lock (DAEMON_STOPPING) at once. While NATS is down no copy goes out; one goes as soon
   * as it is back. The call ends after `timeoutMs` (NatsUnavailable if NATS is down then), when the
   * connection closes (ConnectionClosed), or when `options.signal` aborts (Cancelled); then it
   * stops listening for the answers of all its copies.
   */
  async call<E extends Endpoint>(
    endpoint: E,
    request: Api[E]['request'],
    timeoutMs = this.timeout,
    options: CallOptions = {},
  ): Promise<Api[E]['result']> {
    const subject = requestSubject(this.prefix, endpoint);
    const { signal } = options;
    if (signal?.aborted) throw new Cancelled(`the call on ${subject}`, signal.reason);
    const link = this.link;
    if (link.closed || this.nc.isClosed()) throw this.closedError(subject);
    const h = (this.clientHeaders ??= this.makeClientHeaders());
    const body: Api[E]['request'] & MutationFields & Pick<GetRequest, 'wait' | 'progress'> = MUTATIONS.has(endpoint)
      ? { ...request, request_id: this.requestIds.next() }
      : { ...request };
    const waitMs = options.waitMs ?? 0;
    if (waitMs > 0) body.progress = true;
    const started = performance.now();
    const deadline = started + timeoutMs;
    if (options.firstSent) options.firstSent.at = started;
    const firstResend = this.resendAfter + (options.slowMs ?? 0);
    let resendIn = firstResend;
    let pause = FIRST_PAUSE_MS;
    let copies = 0;
    let unanswered = 0;
    let disconnected = !link.connected;

    return new Promise<Api[E]['result']>((resolve, reject) => {
      // Why the call fails if its time runs out; null: nothing but the time (the error is built then:
      // an error captures a stack, which costs more than the rest of a call).
      let failure: Error | null = null;
      let resend: ReturnType<typeof setTimeout> | undefined;
      let ended = false;
      // Aborted when the call ends: every copy that listens on its own stops (made only for such
      // copies: an AbortController and its abort cost more than the rest of a plain call).
      let copiesDone: AbortController | undefined;
      const end = (settle: () => void) => {
        if (ended) return;
        ended = true;
        clearTimeout(resend);
        clearTimeout(expiry);
        copiesDone?.abort();
        signal?.removeEventListener('abort', cancel);
        unwatch();
        settle();
      };
      const cancel = () => end(() => reject(new Cancelled(`the call on ${subject}`, signal?.reason)));
      signal?.addEventListener('abort', cancel, { once: true });
      const unwatch = link.onChange(() => {
        if (link.closed) return end(() => reject(this.closedError(subject)));
        if (!link.connected) disconnected = true;
        // Back: a copy goes out at once (a daemon that has the request joins it, or answers it again).
        else sendIn(0);
      });
      // Timers cannot run longer than 2^31-1 ms (a longer one fires at once): a long `wait` is
      // timed in steps.
      const expire = () => {
        const left = deadline - performance.now();
        if (left > 0) expiry = setTimeout(expire, Math.min(left, MAX_TIMER_MS));
        else end(() => reject(this.expiredError(subject, timeoutMs, failure, disconnected)));
      };
      let expiry = setTimeout(expire, Math.min(timeoutMs, MAX_TIMER_MS));
      const sendIn = (ms: number) => {
        clearTimeout(resend);
        if (!ended) resend = setTimeout(send, Math.max(0, Math.min(ms, deadline - performance.now() - MIN_ATTEMPT_MS, MAX_TIMER_MS)));
      };
      const send = () => {
        const now = performance.now();
        const left = deadline - now;
        if (ended || left < MIN_ATTEMPT_MS) return; // the expiry ends the call
        // NATS is down: nats.js would drop the copy at its next dial; one goes out when it is back.
        if (!link.connected) return;
        copies += 1;
        unanswered += 1;
        if (copies > 1 && body.request_id !== undefined) body.attempt = copies;
        // A copy waits only for what is left of the wait the call asked for.
        const waitLeft = Math.max(0, waitMs - (now - started));
        if (waitMs > 0) body.wait = waitLeft / 1000;
        const data = bodyBytes(JSON.stringify(body));
        // A copy listens until the call ends, or as long as a timer can run: then a new copy goes.
        const listen = Math.min(left, MAX_TIMER_MS);
        // Without a signal a copy is nats.js's plain request, the cheapest (its inbox entry goes
        // when it is answered or its time is up); with one, a request-many, which the call stops
        // as it ends.
        const copy =
          waitLeft > 0
            ? this.requestCopy(subject, data, h, listen, (copiesDone ??= new AbortController()).signal, () =>
                sendIn(Math.min(waitLeft + firstResend, listen)),
              )
            : signal
              ? this.requestCopy(subject, data, h, listen, (copiesDone ??= new AbortController()).signal)
              : this.nc.request(subject, data, { timeout: listen, headers: h });
        copy.then(answer, fail);
        sendIn(resendIn);
        resendIn = Math.min(resendIn * RESEND_GROWTH, firstResend * RESEND_MAX_FACTOR);
      };
      const answer = (msg: Msg) => {
        unanswered -= 1;
        let reply: Reply<Api[E]['result']>;
        try {
          reply = JSON.parse(decoder.decode(msg.data));
        } catch {
          return end(() => reject(new LockError('PROTOCOL_MISMATCH', `reply on ${subject} is not JSON`)));
        }
        if (reply.ok === true) return end(() => resolve(reply.result));
        if (reply.ok !== false || !reply.error)
          return end(() => reject(new LockError('PROTOCOL_MISMATCH', `reply on ${subject} is not a lockmgr reply`)));
        const error = errorFromWire(reply.error);
        // The daemon stopped while the request waited: at once to another daemon (or, with none
        // yet, after pauses, as below), with what is left of the wait.
        if (reply.error.code === 'DAEMON_STOPPING') {
          failure = error;
          return sendIn(0);
        }
        // Committed or not, only a re-send of the same request id can tell.
        if (reply.error.code !== 'OUTCOME_UNKNOWN' || body.request_id === undefined) return end(() => reject(error));
        failure = error;
        sendIn(pause);
        pause = Math.min(pause * 2, MAX_PAUSE_MS);
      };
      const fail = (err: unknown) => {
        unanswered -= 1;
        if (ended) return;
        const code = (err as { code?: string }).code;
        if (code === NatsErrorCode.Timeout) return; // the call's own expiry says so
        if (code !== NatsErrorCode.NoResponders) {
          if (link.closed || this.nc.isClosed()) return end(() => reject(this.closedError(subject)));
          return end(() => reject(errorFromNats(err, { subject })));
        }
        // No daemon yet (a restart): ask again after a pause, unless a copy is still out.
        failure = new NoDaemon(subject, { cause: err });
        if (unanswered === 0) sendIn(pause);
        pause = Math.min(pause * 2, MAX_PAUSE_MS);
      };
      send();
    });
  }

  /** The connection is closed (by `close()`, or nats.js gave up reconnecting). */
  private closedError(subject: string): ConnectionClosed {
    const err = this.link.closeError;
    return new ConnectionClosed(
      `the NATS connection is closed${err ? ` (it gave up reconnecting: ${err.message})` : ''}; no request on ${subject}: connect a new client`,
      err ? { cause: err } : undefined,
    );
  }

  /** Why a call whose time ran out failed: NATS down now, else what was last heard (no answer at all by default). */
  private expiredError(subject: string, timeoutMs: number, failure: Error | null, disconnected: boolean): Error {
    failure ??= new RequestTimeout(subject, timeoutMs);
    if (!this.link.connected) {
      const last = this.link.lastError ? `; last error: ${this.link.lastError}` : '';
      return new NatsUnavailable(
        `NATS is disconnected (the client is reconnecting${last}): no answer on ${subject} within ${timeoutMs} ms; calls work again once NATS is back`,
        { cause: failure },
      );
    }
    if (disconnected && failure instanceof RequestTimeout) {
      return new RequestTimeout(
        subject,
        timeoutMs,
        { cause: failure },
        `no reply on ${subject} within ${timeoutMs} ms (NATS was disconnected for part of it)`,
      );
    }
    return failure;
  }

  /**
   * One copy of a request that listens on its own: resolves its answer; stops listening when
   * `done` aborts. A get that may wait (`onWaiting` given) is told when the daemon starts waiting,
   * then answered by the end of the wait; a grant made after waiting comes as a request, and
   * answering it tells the daemon someone took it. Such a copy listens on an inbox of its own,
   * gone once the call ends, so that a grant for a call that ended finds nobody and is withdrawn.
   */
  private async requestCopy(
    subject: string,
    data: Uint8Array,
    h: MsgHdrs,
    timeout: number,
    done: AbortSignal,
    onWaiting?: () => void,
  ): Promise<Msg> {
    const replies = await this.nc.requestMany(subject, data, {
      strategy: RequestStrategy.Count,
      maxMessages: onWaiting ? 2 : 1,
      maxWait: timeout,
      headers: h,
      noMux: onWaiting !== undefined,
    });
    const stop = () => stopReplies(replies);
    done.addEventListener('abort', stop, { once: true });
    try {
      if (done.aborted) stop();
      for await (const msg of replies) {
        if (onWaiting && msg.data.length < 64 && isWaitingNotice(parseOrNull(msg.data))) {
          onWaiting();
          continue;
        }
        if (msg.reply) msg.respond(HANDOVER_TAKEN);
        return msg;
      }
    } finally {
      done.removeEventListener('abort', stop);
    }
    throw NatsError.errorForCode(NatsErrorCode.Timeout);
  }

  /**
   * Create and/or renew several locks in one transaction (django-lockmgr's `set_lock`).
   * `setLock('hello', 'world')`, `setLock('a', 'b', {timeout: 30, fail: true})`.
   * Renewing (the default) extends whoever's locks hold the names: an admin operation (`P.admin.set`);
   * with `renew: false` it only creates (`P.set`).
   */
  async setLock(...args: (string | string[] | SetLockOptions)[]): Promise<LockSetResult> {
    const last = args[args.length - 1];
    const options: SetLockOptions = typeof last === 'object' && last !== null && !Array.isArray(last) ? (args.pop() as SetLockOptions) : {};
    const names = (args as (string | string[])[]).flat().map(checkName);
    const result = await this.call(
      options.renew === false ? 'set' : 'admin_set',
      compact({
        locks: names,
        timeout: options.timeout === undefined ? DEFAULT_EXPIRES : options.timeout,
        fail: options.fail,
        renew: options.renew,
        create: options.create,
        locked_by: options.locked_by ?? this.lockedBy,
        process_id: options.process_id,
      }),
      this.timeout,
      // Many names take longer to do: a copy waits longer before it is sent again.
      { slowMs: names.length * SET_MS_PER_NAME, signal: options.signal },
    );
    return new LockSetResult(result);
  }

  /** Take a free lock, or throw Locked (after waiting up to `wait` seconds for its release). */
  async getLock(name: string, options: GetLockOptions = {}): Promise<Lock> {
    const wait = options.wait ?? 0;
    const firstSent = { at: 0 };
    const session = options.session;
    if (session && !session.alive) throw new SessionNotFound(`session ${session.id} is lost or closed: open a new one`);
    const done = session?.acquiring(name);
    let record: LockRecord;
    try {
      record = await this.call(
        'get',
        compact({
          name: checkName(name),
          session: session?.id,
          expires: session ? undefined : options.expires === undefined ? DEFAULT_EXPIRES : options.expires,
          locked_by: options.locked_by ?? this.lockedBy,
          lock_process: options.lock_process,
          wait: wait || undefined,
        }),
        this.timeout + Math.max(0, wait) * 1000,
        { waitMs: Math.max(0, wait) * 1000, firstSent, signal: options.signal },
      );
    } finally {
      done?.();
    }
    const lock = Lock.fromRecord(record);
    if (session) {
      session.track(lock);
      for (const [id, s] of this.sessions) if (!s.alive) this.sessions.delete(id);
      this.sessions.set(session.publicId, session);
    }
    if (!wait) await this.refuseIfLate(lock, firstSent.at);
    return lock;
  }

  /**
   * A grant is worth having only with a quarter of its lifetime left. Its lifetime started after
   * the call's first copy went out, so the time since bounds what it lost on the way: if that leaves less
   * than a quarter, release it (by its token) and fail the call. (After a `wait`, the daemon
   * makes this check itself before it replies.)
   */
  private async refuseIfLate(lock: Lock, sentAt: number): Promise<void> {
    if (lock.locked_until === null) return;
    const lifetime = lock.locked_until.getTime() - lock.created_at.getTime();
    const roundTrip = performance.now() - sentAt;
    if (lifetime - roundTrip >= lifetime * 0.25) return;
    await this.unlock(lock).catch(() => undefined);
    throw new RequestTimeout(
      requestSubject(this.prefix, 'get'),
      Math.round(roundTrip),
      undefined,
      `the grant of ${lock.name} arrived after ${Math.round(roundTrip)} ms, with less than a quarter of its ${lifetime} ms left: released it`,
    );
  }

  /**
   * Release a lock. By a Lock: only that grant; if the name has since been granted to someone
   * else, NotOwner is thrown and their lock stays. By name: whoever holds it, an admin operation
   * (`P.admin.unlock`).
   * Resolves true if a live lock was released, false if there was none (not an error).
   */
  async unlock(lock: string | Lock, options: RequestOptions = {}): Promise<boolean> {
    if (typeof lock === 'string')
      return (await this.call('admin_unlock', { name: checkName(lock) }, this.timeout, { signal: options.signal })).unlocked;
    // Released on purpose: no longer one of its session's held locks.
    if (lock.session) this.sessions.get(lock.session)?.untrack(lock);
    const req = { name: checkName(lock.name), token: lock.token };
    return (await this.call('unlock', req, this.timeout, { signal: options.signal })).unlocked;
  }

  /**
   * Extend a lock (never shortening it). Given a Lock, only that grant is renewed, and the object
   * is updated in place and returned. By name, whoever holds it: an admin operation (`P.admin.renew`).
   */
  async renewLock(lock: string | Lock, options: RenewLockOptions = {}): Promise<Lock> {
    const byObject = typeof lock !== 'string';
    const record = await this.call(
      byObject ? 'renew' : 'admin_renew',
      compact({
        name: checkName(byObject ? lock.name : lock),
        token: byObject ? lock.token : undefined,
        expires: options.expires === undefined ? DEFAULT_EXPIRES : options.expires,
        add_time: options.add_time,
        create: options.create,
        locked_by: options.locked_by ?? this.lockedBy,
        lock_process: options.lock_process,
      }),
      this.timeout,
      { signal: options.signal },
    );
    return byObject ? lock.assign(record) : Lock.fromRecord(record);
  }

  /** True if a live (unexpired) lock holds the name. */
  async isLocked(lock: string | Lock, options: RequestOptions = {}): Promise<boolean> {
    const name = checkName(typeof lock === 'string' ? lock : lock.name);
    return (await this.call('is_locked', { name }, this.timeout, { signal: options.signal })).locked;
  }

  /** The live lock holding `name`, or null. */
  async lockInfo(name: string, options: RequestOptions = {}): Promise<Lock | null> {
    const r = await this.call('is_locked', { name: checkName(name) }, this.timeout, { signal: options.signal });
    return r.lock ? Lock.fromRecord(r.lock) : null;
  }

  /** Every live lock (all pages), in name order. */
  async listLocks(options: Omit<ListLocksOptions, 'after' | 'limit'> = {}): Promise<Lock[]> {
    const out: Lock[] = [];
    let after: string | undefined;
    do {
      const page = await this.listLocksPage({ ...options, after });
      out.push(...page.locks);
      after = page.next;
    } while (after !== undefined);
    return out;
  }

  /** One page of live locks; pass `next` back as `after` for the following page. */
  async listLocksPage(options: ListLocksOptions = {}): Promise<{ locks: Lock[]; next?: string }> {
    const request = compact({ prefix: options.prefix, limit: options.limit, after: options.after });
    const r: ListResult = await this.call('list', request, this.timeout, { signal: options.signal });
    return r.next === undefined ? { locks: r.locks.map(Lock.fromRecord) } : { locks: r.locks.map(Lock.fromRecord), next: r.next };
  }

  /** Remove expired locks now; resolves how many were removed. */
  async cleanLocks(options: RequestOptions = {}): Promise<number> {
    return (await this.call('clean', {}, this.timeout, { signal: options.signal })).removed;
  }

  /** Remove every lock, held or not (admin). Resolves how many were removed. */
  async resetLocks(options: RequestOptions = {}): Promise<number> {
    return (await this.call('reset', {}, this.timeout, { signal: options.signal })).removed;
  }

  /**
   * Open a session of your own (most code uses the client's shared one, through `hold` and
   * `withLock`). It is kept alive until `close()`, or until it is lost.
   */
  async openSession(options: SessionOptions & RequestOptions = {}): Promise<Session> {
    const sentAt = performance.now();
    const request = compact({ ttl: options.ttl, locked_by: options.locked_by ?? this.lockedBy });
    const opened = await this.call('session_open', request, this.timeout, { signal: options.signal });
    return new Session(this, opened, sentAt);
  }

  /**
   * The client's shared session (`sessionTtl`), opened on first use and again after it was lost.
   * `signal` stops this caller's wait for it; the opening itself is cancelled only when every
   * caller waiting for it has cancelled.
   */
  async session(options: RequestOptions = {}): Promise<Session> {
    const { signal } = options;
    if (signal?.aborted) throw new Cancelled('opening a session', signal.reason);
    const current = this.sharedSession;
    if (current && !current.opening) {
      const session = await current.promise.catch(() => undefined);
      if (session?.alive) return session;
      if (this.sharedSession === current) this.sharedSession = undefined;
    }
    if (!this.sharedSession) {
      const controller = new AbortController();
      const shared: SharedSession = { opening: true, waiters: 0, controller, promise: undefined as unknown as Promise<Session> };
      shared.promise = this.openSession({ ttl: this.sessionTtl, signal: controller.signal }).finally(() => (shared.opening = false));
      // A failed opening is forgotten: the next caller tries again.
      shared.promise.catch(() => {
        if (this.sharedSession === shared) this.sharedSession = undefined;
      });
      this.sharedSession = shared;
    }
    const shared = this.sharedSession;
    if (!signal || !shared.opening) return shared.promise;
    shared.waiters += 1;
    let stop: (() => void) | undefined;
    const cancelled = new Promise<never>((_, reject) => {
      stop = () => {
        if (--shared.waiters === 0 && shared.opening) shared.controller.abort(signal.reason);
        reject(new Cancelled('opening a session', signal.reason));
      };
      signal.addEventListener('abort', stop, { once: true });
    });
    try {
      return await Promise.race([shared.promise, cancelled]);
    } finally {
      signal.removeEventListener('abort', stop!);
    }
  }

  /**
   * Take `name` in the shared session and hold it until released: `held.signal` fires before
   * anyone else can be granted it (the lock lost); `await using held = await client.hold(name)`
   * releases it when the scope ends.
   */
  async hold(name: string, options: Omit<GetLockOptions, 'expires' | 'session'> = {}): Promise<HeldLock> {
    checkName(name); // before a session is opened for it
    const session = await this.session({ signal: options.signal });
    const lock = await this.getLock(name, { ...options, session });
    return new HeldLock(this, session, lock);
  }

  /**
   * django-lockmgr's LockMgr: take `name`, run `fn(mgr)`, release on the way out (also when `fn`
   * throws, and the error propagates). `mgr.lock(other)` takes more locks, `mgr.renew()` adds 120 s.
   * Only grants the manager still holds are released.
   *
   * The locks are taken in the client's session and kept alive while `fn` runs (`keepalive: false`
   * takes them for `expires` seconds instead, as django-lockmgr did). `mgr.signal` fires if one is
   * lost — before anyone else can be granted it — and then `withLock` rejects with LockLost, even
   * when `fn` returned.
   */
  async withLock<T>(name: string, options: WithLockOptions, fn: (mgr: LockManager) => Promise<T> | T): Promise<T>;
  async withLock<T>(name: string, fn: (mgr: LockManager) => Promise<T> | T): Promise<T>;
  async withLock<T>(
    name: string,
    optionsOrFn: WithLockOptions | ((mgr: LockManager) => Promise<T> | T),
    maybeFn?: (mgr: LockManager) => Promise<T> | T,
  ): Promise<T> {
    const options = typeof optionsOrFn === 'function' ? {} : optionsOrFn;
    const fn = typeof optionsOrFn === 'function' ? optionsOrFn : maybeFn!;
    checkName(name); // the name and the options are checked before a session is opened for them
    const mgr = new LockManager(this, name, options);
    await mgr.enter(options.keepalive === false ? null : await this.session({ signal: options.signal }));
    let result: T;
    try {
      result = await fn(mgr);
    } finally {
      await mgr.exit();
    }
    const lost = mgr.lost();
    if (lost) throw lost;
    return result;
  }

  /**
   * Lock events as a typed async iterator: live ones (core NATS) by default, or replayed from the
   * daemons' JetStream stream with `since: {seq}` / `since: {time}` (and then followed with
   * `follow: true`). Filter with `types` and `names` (NATS wildcards: `orders.*`, `orders.>`).
   * Leaving the `for await` loop, or `close()`, ends the subscription.
   */
  events(options: EventsOptions = {}): LockEventStream {
    return new LockEventStream(this.nc, this.prefix, options);
  }

  /**
   * Close the shared session (releasing its locks), then the NATS connection if this client
   * opened it: drained (answers on their way are taken), or closed at once while NATS is down.
   * Calls after it fail with ConnectionClosed.
   */
  async close(): Promise<void> {
    const session = this.sharedSession;
    this.sharedSession = undefined;
    session?.controller.abort();
    if (session) await (await session.promise.catch(() => undefined))?.close();
    if (!this.ownsConnection || this.nc.isClosed()) return;
    if (this.nc.isDraining()) return void (await this.nc.closed());
    // A drain needs the server (nats.js leaves a connection open whose drain found NATS away).
    if (this.link.connected) await this.nc.drain().catch(() => undefined);
    if (!this.nc.isClosed()) await this.nc.close().catch(() => undefined);
  }
}
