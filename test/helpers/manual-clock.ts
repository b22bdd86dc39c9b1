/**
 * A Clock for unit tests: time moves only when the test says so. Timers fire in time order
 * during `advance`, with promise chains settling between them, so waits, timeouts and backoff
 * are tested without sleeping.
 */
import { MAX_TIMER_MS, type Cancel, type Clock } from '../../daemon/clock';

interface Timer {
  at: number;
  /** Scheduling order: timers due at the same time fire first scheduled, first fired. */
  order: number;
  fn: () => void;
}

/**
 * Let pending promise chains (and setImmediate callbacks) run: each turn of the event loop
 * drains the microtask queue. Not a sleep: no time passes on any clock.
 */
export async function flushPromises(turns = 10): Promise<void> {
  for (let i = 0; i < turns; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}

export class ManualClock implements Clock {
  private time: number;
  private timers: Timer[] = [];
  private scheduled = 0;

  constructor(start = 1_700_000_000_000) {
    this.time = start;
  }

  now(): number {
    return this.time;
  }

  /** Jump to `ms` without firing anything (timers due by then fire at the next advance). */
  set(ms: number): void {
    this.time = ms;
  }

  schedule(fn: () => void, ms: number): Cancel {
    // Same bounds as systemClock: negative or NaN delays fire at the next advance, long ones early.
    const delay = Number.isFinite(ms) ? Math.min(MAX_TIMER_MS, Math.max(0, ms)) : 0;
    const timer: Timer = { at: this.time + delay, order: ++this.scheduled, fn };
    this.timers.push(timer);
    return () => {
      this.timers = this.timers.filter((t) => t !== timer);
    };
  }

  /** Timers scheduled and neither fired nor cancelled. */
  pending(): number {
    return this.timers.length;
  }

  /**
   * Move time forward by `ms`, firing every timer that falls due on the way, in time order, and
   * those that fired callbacks schedule within the window too.
   */
  async advance(ms: number): Promise<void> {
    const target = this.time + Math.max(0, ms);
    await flushPromises();
    for (;;) {
      const timer = this.next();
      if (!timer || timer.at > target) break;
      this.timers = this.timers.filter((t) => t !== timer);
      this.time = Math.max(this.time, timer.at);
      timer.fn();
      await flushPromises();
    }
    this.time = target;
    await flushPromises();
  }

  /** Settle promise chains without moving time. */
  flush(): Promise<void> {
    return flushPromises();
  }

  private next(): Timer | undefined {
    let best: Timer | undefined;
    for (const t of this.timers) if (!best || t.at < best.at || (t.at === best.at && t.order < best.order)) best = t;
    return best;
  }
}
