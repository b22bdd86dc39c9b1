/**
 * A lock held in a session, for code that cannot put its work in a `withLock` callback:
 *
 *   await using held = await client.hold('reports');
 *   await work({ signal: held.signal, fencingToken: held.token });
 *
 * The lock stays while its session is kept alive; `signal` fires before anyone else can be
 * granted it (see session.ts). Leaving the scope, or `release()`, releases it by its token.
 */
import { NotOwner } from './errors';
import type { Lock } from './lock';
import type { LockClient } from './lock-client';
import type { Session } from './session';

export class HeldLock implements AsyncDisposable {
  /** Fires when the lock is lost (its reason a LockLost), or once it is released. */
  readonly signal: AbortSignal;
  private released?: Promise<boolean>;

  /** @internal Use `client.hold()`. */
  constructor(
    private readonly client: LockClient,
    readonly session: Session,
    readonly lock: Lock,
  ) {
    this.signal = session.signalOf(lock);
  }

  get name(): string {
    return this.lock.name;
  }

  /** The grant's fencing token: pass it to what the lock protects. */
  get token(): number {
    return this.lock.token;
  }

  /** True while the lock is held: not lost, not released. */
  get held(): boolean {
    return this.released === undefined && !this.signal.aborted;
  }

  /** Release the lock (by its token); false if it was no longer this grant's. Safe to call twice. */
  release(): Promise<boolean> {
    this.released ??= (async () => {
      this.session.untrack(this.lock);
      try {
        return await this.client.unlock(this.lock);
      } catch (err) {
        if (err instanceof NotOwner) return false;
        throw err;
      }
    })();
    return this.released;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.release();
  }
}
