/**
 * Time as the daemon's parts see it, passed in rather than read from globals, so that unit tests
 * can drive waits, timeouts and backoff with a manual clock instead of sleeping.
 */

/** Cancels a scheduled call; calling it again, or after the call ran, does nothing. */
export type Cancel = () => void;

export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
  /** Call `fn` once after `ms` milliseconds. Like setTimeout, a pending call keeps the process alive. */
  schedule(fn: () => void, ms: number): Cancel;
}

/** setTimeout's longest delay; a longer one would fire at once. Callers that wake early look again. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

export const systemClock: Clock = {
  now: () => Date.now(),
  schedule(fn, ms) {
    const timer = setTimeout(fn, Math.min(MAX_TIMER_MS, Math.max(0, ms)));
    return () => clearTimeout(timer);
  },
};

/** A promise that resolves after `ms` on `clock`. */
export function sleep(clock: Clock, ms: number): Promise<void> {
  return new Promise((resolve) => clock.schedule(resolve, ms));
}

/** `promise`, or a rejection naming `what` if it has not settled within `ms` on `clock`. */
export function within<T>(clock: Clock, promise: Promise<T>, ms: number, what: string): Promise<T> {
  let cancel: Cancel | undefined;
  const late = new Promise<never>((_, reject) => {
    cancel = clock.schedule(() => reject(new Error(`${what} did not answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, late]).finally(() => cancel?.());
}
