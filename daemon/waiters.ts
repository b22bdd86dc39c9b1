/**
 * Requests blocked in `get` with `wait`, queued per lock name. A release or expiry wakes the
 * first waiter of that name at once (no polling); each waiter also wakes by itself when the
 * holder's lock runs out or its own wait ends.
 */
import { systemClock, type Cancel, type Clock } from './clock';

interface Waiter {
  wake(): void;
  cancelTimer: Cancel;
}

/** Told when a name gets its first follower and loses its last (to follow releases elsewhere). */
export interface WaitHooks {
  /** May return a promise that settles once releases made elsewhere will reach `notify`. */
  watch(name: string): void | Promise<void>;
  unwatch(name: string): void;
}

/**
 * A `get` that may wait follows its name from before its first look at the lock until it is done,
 * so a release that lands between a look ("held") and the wait is not missed: the wait then
 * returns at once and the request looks again.
 */
export interface WaitTicket {
  readonly name: string;
  /** Releases of the name this request has already taken into account. */
  seen: number;
}

interface Followed {
  followers: number;
  releases: number;
  ready: Promise<void>;
}

export class WaitQueue {
  private readonly queues = new Map<string, Waiter[]>();
  private readonly followed = new Map<string, Followed>();

  constructor(
    private readonly hooks?: WaitHooks,
    private readonly clock: Clock = systemClock,
  ) {}
  /** Once closed (the daemon is stopping), waits end at once. */
  closed = false;

  /** Start following `name`; call before looking at its lock, and `unfollow` when done. */
  async follow(name: string): Promise<WaitTicket> {
    let f = this.followed.get(name);
    if (!f) {
      f = { followers: 0, releases: 0, ready: Promise.resolve() };
      this.followed.set(name, f);
      // A hook that fails (even synchronously) leaves the name followed, woken by its timers.
      f.ready = Promise.resolve()
        .then(() => this.hooks?.watch(name))
        .catch(() => undefined);
    }
    f.followers += 1;
    await f.ready;
    return { name, seen: f.releases };
  }

  unfollow(ticket: WaitTicket): void {
    const f = this.followed.get(ticket.name);
    if (!f || --f.followers > 0) return;
    this.followed.delete(ticket.name);
    this.hooks?.unwatch(ticket.name);
  }

  /**
   * Resolve when the name may be free: at once if it was released since the ticket last looked,
   * else on notify(name) reaching this waiter, or at `until` (ms since the epoch), whichever is
   * first. `front` puts a waiter that just lost a race back at the head, so waiting stays first
   * come, first served.
   */
  wait(ticket: WaitTicket, until: number, front = false): Promise<void> {
    const { name } = ticket;
    const f = this.followed.get(name);
    if (this.closed) return Promise.resolve();
    if (f && f.releases !== ticket.seen) {
      ticket.seen = f.releases;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      // A timer longer than the clock allows fires early; the request then looks and waits again.
      const waiter: Waiter = {
        wake: () => {
          waiter.cancelTimer();
          this.remove(name, waiter);
          if (f) ticket.seen = f.releases;
          resolve();
        },
        cancelTimer: this.clock.schedule(() => waiter.wake(), until - this.clock.now()),
      };
      const queue = this.queues.get(name) ?? [];
      this.queues.set(name, queue);
      if (front) queue.unshift(waiter);
      else queue.push(waiter);
    });
  }

  /** Requests waiting now, all names together. */
  get size(): number {
    let n = 0;
    for (const queue of this.queues.values()) n += queue.length;
    return n;
  }

  /** A lock named `name` was released or expired: let its first waiter try. */
  notify(name: string): void {
    const f = this.followed.get(name);
    if (f) f.releases += 1;
    this.queues.get(name)?.[0]?.wake();
  }

  /** Wake everyone and refuse new waits (shutdown). */
  close(): void {
    this.closed = true;
    for (const queue of [...this.queues.values()]) for (const w of [...queue]) w.wake();
  }

  private remove(name: string, waiter: Waiter): void {
    const queue = this.queues.get(name);
    if (!queue) return;
    const i = queue.indexOf(waiter);
    if (i >= 0) queue.splice(i, 1);
    if (queue.length === 0) this.queues.delete(name);
  }
}
