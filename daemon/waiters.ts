/**
 * Requests blocked in `get` with `wait`, queued per lock name. A release or expiry wakes the
 * first waiter of that name at once (no polling); each waiter also wakes by itself when the
 * holder's lock runs out or its own wait ends.
 */

/** setTimeout's longest delay; a longer one fires at once. A waiter woken early simply waits again. */
const MAX_TIMER_MS = 2 ** 31 - 1;

interface Waiter {
  wake(): void;
  timer: NodeJS.Timeout;
}

/** Told when a name gets its first waiter and loses its last (to follow releases elsewhere). */
export interface WaitHooks {
  watch(name: string): void;
  unwatch(name: string): void;
}

export class WaitQueue {
  private readonly queues = new Map<string, Waiter[]>();

  constructor(private readonly hooks?: WaitHooks) {}
  /** Once closed (the daemon is stopping), waits end at once. */
  closed = false;

  /**
   * Resolve when `name` may be free: on notify(name) reaching this waiter, at `until`
   * (ms since the epoch), whichever is first. `front` puts a waiter that just lost a race back
   * at the head, so waiting stays first come, first served.
   */
  wait(name: string, until: number, front = false): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      const waiter: Waiter = {
        wake: () => {
          clearTimeout(waiter.timer);
          this.remove(name, waiter);
          resolve();
        },
        timer: setTimeout(() => waiter.wake(), Math.min(MAX_TIMER_MS, Math.max(0, until - Date.now()))),
      };
      let queue = this.queues.get(name);
      if (!queue) {
        queue = [];
        this.queues.set(name, queue);
        this.hooks?.watch(name);
      }
      if (front) queue.unshift(waiter);
      else queue.push(waiter);
    });
  }

  /** A lock named `name` was released or expired: let its first waiter try. */
  notify(name: string): void {
    this.queues.get(name)?.[0]?.wake();
  }

  /** Wake everyone and refuse new waits (shutdown). */
  close(): void {
    this.closed = true;
    for (const queue of [...this.queues.values()]) for (const w of [...queue]) w.wake();
  }

  /** Wake everyone (reset). */
  notifyAll(): void {
    for (const queue of [...this.queues.values()]) for (const w of [...queue]) w.wake();
  }

  get size(): number {
    let n = 0;
    for (const q of this.queues.values()) n += q.length;
    return n;
  }

  private remove(name: string, waiter: Waiter): void {
    const queue = this.queues.get(name);
    if (!queue) return;
    const i = queue.indexOf(waiter);
    if (i >= 0) queue.splice(i, 1);
    if (queue.length === 0) {
      this.queues.delete(name);
      this.hooks?.unwatch(name);
    }
  }
}
