/**
 * The object `withLock` hands to its callback: django-lockmgr's LockMgr, with its bugs fixed.
 * It remembers each grant by token, so leaving releases only the grants it still holds, never a
 * lock someone else has taken since.
 */
import { DEFAULT_EXPIRES, DEFAULT_RENEW_SECONDS } from '../shared/protocol';
import { InvalidRequest, Locked, LockNotFound, NotOwner } from './errors';
import { LockLost, type Session } from './session';
import type { Lock } from './lock';
import type { LockClient } from './lock-client';

export interface WithLockOptions {
  /**
   * Keep the locks alive in the client's session while the callback runs (default true). False:
   * take them for `expires` seconds, as django-lockmgr did.
   */
  keepalive?: boolean;
  /** With `keepalive: false`: seconds the locks last; 0 or null: never expire. Default 600. */
  expires?: number | null;
  locked_by?: string;
  lock_process?: number;
  /** Seconds to wait for a held lock (woken by its release). Default 0: fail at once. */
  wait?: number;
  /**
   * Cancels the manager's calls (taking the lock, `mgr.lock()`, `mgr.renew()`) with Cancelled.
   * The releases on the way out are made all the same.
   */
  signal?: AbortSignal;
}

export interface ManagerLockOptions {
  /** Default: the manager's `signal`. */
  signal?: AbortSignal;
  /**
   * Seconds this lock lasts (0 or null: never expires). Given, the lock is taken for that long,
   * outside the session; by default it is kept alive with the manager's (or lasts its `expires`).
   */
  expires?: number | null;
  /** Default: the manager's `wait`. */
  wait?: number;
  /** Return false instead of throwing Locked. */
  ret?: boolean;
}

export interface ManagerRenewOptions {
  /** Default: the manager's `signal`. */
  signal?: AbortSignal;
  /** Seconds. Default 120. */
  expires?: number | null;
  /** Default true: add to the current expiry. */
  add_time?: boolean;
  /** Default true: re-create the lock if it expired meanwhile. */
  create?: boolean;
}

export class LockManager {
  /** The lock this manager was made for, once taken. */
  main_lock: Lock | null = null;
  /** Every grant this manager holds. */
  readonly locks: Lock[] = [];
  readonly expires: number | null;
  readonly wait: number;
  readonly locked_by: string;
  readonly lock_process: number | undefined;
  /** The caller's `signal`: cancels taking locks (not the releases on the way out). */
  private readonly cancelSignal: AbortSignal | undefined;

  /** Signals of the locks taken in the session, by grant. */
  private readonly signals = new Map<Lock, AbortSignal>();
  private readonly controller = new AbortController();

  constructor(
    private readonly client: LockClient,
    readonly name: string,
    options: WithLockOptions = {},
    /** The session the locks are taken in, kept alive meanwhile; null: locks that last `expires`. */
    private session: Session | null = null,
  ) {
    if (options.wait !== undefined && (typeof options.wait !== 'number' || !(options.wait >= 0))) {
      // The same class the daemon's INVALID_REQUEST maps to, so callers catch one error type.
      throw new InvalidRequest(`wait must be a non-negative number of seconds, got ${options.wait}`, [
        { field: 'wait', problem: 'must be a non-negative number of seconds' },
      ]);
    }
    this.expires = options.expires === undefined ? DEFAULT_EXPIRES : options.expires;
    this.wait = options.wait ?? 0;
    this.locked_by = options.locked_by ?? client.lockedBy;
    this.lock_process = options.lock_process;
    this.cancelSignal = options.signal;
  }

  /** @internal Take the main lock (throws Locked when it cannot), in `session` if one is given. */
  async enter(session: Session | null = null): Promise<void> {
    this.session ??= session;
    await this.lock(this.name);
  }

  /** Take another lock under this manager. Throws Locked, or returns false with `ret: true`. */
  async lock(name: string, options: ManagerLockOptions = {}): Promise<boolean> {
    try {
      const lock = await this.client.getLock(name, {
        // A lock given its own `expires` lasts that long, outside the session.
        ...(this.session && options.expires === undefined
          ? { session: this.session }
          : { expires: options.expires === undefined ? this.expires : options.expires }),
        wait: options.wait ?? this.wait,
        locked_by: this.locked_by,
        lock_process: this.lock_process,
        signal: options.signal ?? this.cancelSignal,
      });
      if (this.main_lock === null) this.main_lock = lock;
      this.locks.push(lock);
      if (options.expires === undefined) this.watch(lock);
      return true;
    } catch (err) {
      if (options.ret && err instanceof Locked) return false;
      throw err;
    }
  }

  /**
   * Release the main lock, or the given one; only a grant this manager holds is released. Only a
   * `signal` given here cancels it (not the manager's: a release is wanted all the same).
   */
  async unlock(lock?: string | Lock, options: { signal?: AbortSignal } = {}): Promise<boolean> {
    const grant = this.grantFor(lock);
    if (!grant) return typeof lock === 'string' ? this.client.unlock(lock, options) : false;
    this.locks.splice(this.locks.indexOf(grant), 1);
    return this.releaseQuietly(grant, options.signal);
  }

  /**
   * Extend the main lock (or the given one) by 120 s; re-create it if it has expired, with this
   * manager's owner fields.
   */
  async renew(lock?: string | Lock, options: ManagerRenewOptions = {}): Promise<Lock> {
    const expires = options.expires === undefined ? DEFAULT_RENEW_SECONDS : options.expires;
    const create = options.create ?? true;
    const signal = options.signal ?? this.cancelSignal;
    const renewOptions = {
      expires,
      add_time: options.add_time ?? true,
      locked_by: this.locked_by,
      lock_process: this.lock_process,
      signal,
    };
    const grant = this.grantFor(lock);
    if (grant) return this.client.renewLock(grant, { ...renewOptions, create });
    // Not a grant we hold. A lock this call creates becomes ours (released on exit); one that
    // someone else holds is only extended, never adopted, or leaving would release their lock.
    const name = typeof lock === 'string' ? lock : (lock?.name ?? this.name);
    for (let attempt = 1; ; attempt++) {
      if (create) {
        try {
          const created = await this.client.getLock(name, { expires, locked_by: this.locked_by, lock_process: this.lock_process, signal });
          this.locks.push(created);
          if (name === this.name) this.main_lock = created;
          return created;
        } catch (err) {
          if (!(err instanceof Locked)) throw err;
        }
      }
      try {
        return await this.client.renewLock(name, { ...renewOptions, create: false });
      } catch (err) {
        // Released between our two requests: take it after all.
        if (!(create && err instanceof LockNotFound && attempt < 3)) throw err;
      }
    }
  }

  /**
   * Fires when a lock this manager holds in its session is lost (the reason: a LockLost), before
   * anyone else can be granted it. Stop working on what the lock protects. Never fires for locks
   * taken with `keepalive: false`.
   */
  get signal(): AbortSignal {
    // Reading each lock's own signal first catches a deadline passed during a pause.
    for (const s of this.signals.values()) if (s.aborted && !this.controller.signal.aborted) this.controller.abort(s.reason);
    return this.controller.signal;
  }

  /** @internal The LockLost of the first lock lost while held, if one was. */
  lost(): LockLost | undefined {
    const reason: unknown = this.signal.aborted ? this.signal.reason : undefined;
    return reason instanceof LockLost ? reason : undefined;
  }

  /** @internal Release every grant still held. */
  async exit(): Promise<void> {
    void this.signal; // a loss during the callback counts, even if seen only now
    const held = this.locks.splice(0);
    await Promise.all(held.map((l) => this.releaseQuietly(l)));
  }

  private watch(lock: Lock): void {
    if (!this.session) return;
    const signal = this.session.signalOf(lock);
    this.signals.set(lock, signal);
    const lose = () => {
      if (this.signals.has(lock) && !this.controller.signal.aborted) this.controller.abort(signal.reason);
    };
    if (signal.aborted) lose();
    else signal.addEventListener('abort', lose, { once: true });
  }

  private grantFor(lock?: string | Lock): Lock | undefined {
    if (lock === undefined) return this.main_lock && this.locks.includes(this.main_lock) ? this.main_lock : undefined;
    if (typeof lock !== 'string') return this.locks.find((l) => l === lock || (l.name === lock.name && l.token === lock.token));
    return this.locks.find((l) => l.name === lock);
  }

  /** Release a grant by token; a lock re-granted to someone else or gone is left alone. */
  private async releaseQuietly(grant: Lock, signal?: AbortSignal): Promise<boolean> {
    // Released on purpose: its signal no longer speaks for this manager.
    this.signals.delete(grant);
    this.session?.untrack(grant);
    try {
      return await this.client.unlock(grant, { signal });
    } catch (err) {
      if (err instanceof NotOwner || err instanceof LockNotFound) return false;
      throw err;
    }
  }
}
