/**
 * Sessions on the client side: a session kept alive by keepalives, the locks held in it, and the
 * signals that tell their holders when a lock is lost — before anyone else can be granted it.
 *
 * Timing. A keepalive sent at `t` (this process's monotonic clock) moves the session's expiry to
 * no earlier than `t + ttl`: the daemon reads its clock after the request left. Nobody else can be
 * granted a lock of the session before that expiry plus the daemons' lock-delay. So the session is
 * surely alive until `t + ttl` for the last keepalive that was answered, and a held lock's signal
 * fires `margin` before that (covering clock rate drift and a slow answer), or as soon as a
 * keepalive says the lock is gone (released by name, or reset) — a lock released by force stays
 * through the lock-delay after its release, which came after the previous keepalive was sent, so
 * its holder has the lock-delay less the time since then to stop (`LockLost.lostAfter` says from
 * when the lock-delay counts, at the earliest). A process that was paused sees its
 * signals fired at once when it resumes: `signal.aborted` checks the deadline on every read, before
 * any of the process's timers catch up.
 */
import { publicSessionId } from '../shared/sessions';
import { LockError, SessionNotFound } from './errors';
import type { Lock } from './lock';
import type { LockClient } from './lock-client';

export interface SessionOptions {
  /** Seconds the session lives without a keepalive (1-3600, default 15); a keepalive goes every third of it. */
  ttl?: number;
  locked_by?: string;
}

/** A lock held in a session is lost: its signal fired, and `withLock` rejects with this. */
export class LockLost extends LockError {
  constructor(
    readonly lockName: string,
    /** Why, in a few words: the session lapsed, or the lock was released by someone else. */
    readonly why: string,
    /**
     * A moment (performance.now() ms) before which the lock was surely still its holder's: the
     * session's sure expiry when it lapsed (possibly still ahead when the signal fires), the
     * sending of the last keepalive answered before it was found released by name. The daemons
     * keep a lost lock from anyone else for their lock-delay after its loss, so nobody else can be
     * granted it before `lostAfter` plus the lock-delay — unless the locks were reset, which frees
     * them at once, or the holder itself closed the session.
     */
    readonly lostAfter: number = performance.now(),
  ) {
    super('LOCK_LOST', `lock ${lockName} was lost: ${why}`);
  }
}

/** Share of the ttl before the session's sure expiry at which signals fire (and at least this many ms). */
const MARGIN_SHARE = 0.1;
const MIN_MARGIN_MS = 500;
/** Keepalives per ttl. */
const KEEPALIVES_PER_TTL = 3;

/**
 * An AbortController whose signal also fires, on any read of `aborted` or `throwIfAborted()`, once
 * `deadline()` (performance.now() ms) has passed, so code resumed from a pause sees it first.
 */
function deadlineController(deadline: () => number, reason: () => unknown): AbortController {
  const controller = new AbortController();
  const signal = controller.signal;
  const proto = Object.getPrototypeOf(signal) as AbortSignal;
  const abortedOf = Object.getOwnPropertyDescriptor(proto, 'aborted')!.get!;
  const check = () => {
    if (!abortedOf.call(signal) && performance.now() >= deadline()) controller.abort(reason());
  };
  Object.defineProperty(signal, 'aborted', {
    get: () => {
      check();
      return abortedOf.call(signal) as boolean;
    },
  });
  const throwIfAborted = signal.throwIfAborted.bind(signal);
  signal.throwIfAborted = () => {
    check();
    throwIfAborted();
  };
  return controller;
}

/** One lock held in a session. */
interface Holding {
  lock: Lock;
  controller: AbortController;
  /** When (performance.now() ms) it was handed to the session, after its grant. */
  since: number;
}

export class Session {
  readonly id: string;
  /** How lock records and events name this session (`Lock.session`); the id itself stays here. */
  readonly publicId: string;
  /** Seconds. */
  readonly ttl: number;
  /** Fires when the session is lost (or closed): every lock held in it is lost then. */
  readonly signal: AbortSignal;
  private readonly controller: AbortController;
  /** Until when (performance.now() ms) the session is surely alive, less the margin. */
  private validUntil: number;
  /** When (performance.now() ms) the last answered keepalive (or the open) was sent. */
  private confirmedAt: number;
  private readonly holdings = new Map<string, Holding>();
  /** Names a `get` in this session is being sent for, and how many. */
  private readonly pending = new Map<string, number>();
  private timer?: ReturnType<typeof setTimeout>;
  private lostWhy?: string;
  private lostAfter?: number;
  private closing?: Promise<void>;

  /** @internal Use `client.openSession()`. */
  constructor(
    private readonly client: LockClient,
    opened: { session: string; ttl: number },
    sentAt: number,
  ) {
    this.id = opened.session;
    this.publicId = publicSessionId(this.id);
    this.ttl = opened.ttl;
    this.validUntil = sentAt + this.ttl * 1000 - this.margin;
    this.confirmedAt = sentAt;
    this.controller = deadlineController(
      () => this.validUntil,
      () => this.lost('no keepalive was answered in time (the session may have lapsed)', this.sureExpiry),
    );
    this.signal = this.controller.signal;
    this.schedule();
  }

  /** Milliseconds before the session's sure expiry at which its signals fire. */
  get margin(): number {
    return Math.max(MIN_MARGIN_MS, this.ttl * 1000 * MARGIN_SHARE);
  }

  /** Until when (performance.now() ms) the session is surely alive: the signals fire `margin` before. */
  get sureExpiry(): number {
    return this.validUntil + this.margin;
  }

  /** False once the session is lost or closed. */
  get alive(): boolean {
    return !this.signal.aborted;
  }

  /** @internal A `get` of `name` in this session is on its way: its grant is not a stray. */
  acquiring(name: string): () => void {
    this.pending.set(name, (this.pending.get(name) ?? 0) + 1);
    return () => {
      const n = (this.pending.get(name) ?? 1) - 1;
      if (n > 0) this.pending.set(name, n);
      else this.pending.delete(name);
    };
  }

  /** @internal The signal of a lock held in this session (tracking it if it is not yet). */
  signalOf(lock: Lock): AbortSignal {
    const h = this.holdings.get(lock.name);
    return h && h.lock.token === lock.token ? h.controller.signal : this.track(lock);
  }

  /**
   * @internal A lock just granted in this session: its signal fires when the session is lost, when
   * a keepalive no longer lists it, or when it is released.
   */
  track(lock: Lock): AbortSignal {
    const controller = deadlineController(
      () => this.validUntil,
      () =>
        new LockLost(
          lock.name,
          this.lostWhy ?? 'no keepalive was answered in time (the session may have lapsed)',
          this.lostAfter ?? this.sureExpiry,
        ),
    );
    if (this.signal.aborted) controller.abort(new LockLost(lock.name, this.lostWhy ?? 'its session was lost', this.lostAfter));
    this.holdings.set(lock.name, { lock, controller, since: performance.now() });
    return controller.signal;
  }

  /** @internal The lock is released (or given up): stop watching it. */
  untrack(lock: { name: string; token: number }): void {
    const h = this.holdings.get(lock.name);
    if (h && h.lock.token === lock.token) this.holdings.delete(lock.name);
  }

  /** Send a keepalive now; resolves once answered (or failed). */
  async keepalive(): Promise<void> {
    if (this.signal.aborted) return;
    const sentAt = performance.now();
    try {
      const r = await this.client.call('session_keepalive', { session: this.id }, this.remainingMs());
      if (this.signal.aborted) return;
      // A lock missing now was released after the previous answered keepalive was sent.
      const previous = this.confirmedAt;
      this.validUntil = Math.max(this.validUntil, sentAt + r.ttl * 1000 - this.margin);
      this.confirmedAt = Math.max(this.confirmedAt, sentAt);
      const listed = new Map(r.locks.map((l) => [l.name, l.token]));
      for (const [name, h] of [...this.holdings]) {
        // A lock granted while this keepalive was on its way may not be listed yet.
        if (listed.get(name) === h.lock.token || h.since > sentAt) continue;
        this.holdings.delete(name);
        h.controller.abort(new LockLost(name, 'it was released by someone else (by name) or reset', previous));
      }
      // A lock of the session nobody here holds or waits for: granted to a call whose reply
      // never arrived (it timed out, or was cancelled). Release it rather than keep it alive.
      for (const l of r.locks) {
        if (this.holdings.get(l.name)?.lock.token === l.token || this.pending.has(l.name)) continue;
        this.client.call('unlock', { name: l.name, token: l.token }).catch(() => undefined);
      }
    } catch (err) {
      if (err instanceof SessionNotFound) this.lose('the session lapsed (no keepalive reached a daemon within its ttl)', this.sureExpiry);
      // Anything else (no daemon, NATS away): try again at the next beat; the deadline still counts.
    }
  }

  /** End the session: its locks are released (no lock-delay). */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const wasAlive = this.alive;
      this.lose('the session was closed', performance.now());
      if (wasAlive) await this.client.call('session_close', { session: this.id }).catch(() => undefined);
    })();
    return this.closing;
  }

  private remainingMs(): number {
    return Math.max(1, this.validUntil + this.margin - performance.now());
  }

  private schedule(): void {
    const beat = (this.ttl * 1000) / KEEPALIVES_PER_TTL;
    this.timer = setTimeout(() => {
      void this.keepalive().finally(() => {
        if (this.alive) this.schedule();
      });
    }, beat);
    // A session must not keep a process alive by itself.
    this.timer.unref();
    // The deadline fires the signals even when no keepalive comes back.
    const deadlineTimer = setTimeout(() => void this.signal.aborted, Math.max(0, this.validUntil - performance.now()) + 1);
    deadlineTimer.unref();
  }

  private lost(why: string, lostAfter: number): LockLost {
    this.lostWhy ??= why;
    this.lostAfter ??= lostAfter;
    for (const [name, h] of this.holdings) h.controller.abort(new LockLost(name, why, lostAfter));
    this.holdings.clear();
    return new LockLost('(session)', why, lostAfter);
  }

  private lose(why: string, lostAfter: number): void {
    clearTimeout(this.timer);
    if (!this.controller.signal.aborted) this.controller.abort(this.lost(why, lostAfter));
  }
}
