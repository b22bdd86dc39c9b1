/**
 * Waiting between attempts: the delay after the n-th failure, and a loop that tries a start-up
 * step (reaching NATS, reaching the database) until it works, fails for good, or the daemon is
 * stopped meanwhile.
 */
import type { Clock } from './clock';

export interface Backoff {
  /** Wait after the first failure (ms); it doubles after each further one... */
  minMs: number;
  /** ...up to this (ms). */
  maxMs: number;
  /** Spread each wait by up to this fraction either way (0.2: ±20%), so that daemons started together do not retry in step. */
  jitter?: number;
}

/** The wait after the `failures`-th failure in a row (1 for the first). */
export function backoffDelay(failures: number, b: Backoff, random: () => number = Math.random): number {
  const base = Math.min(b.maxMs, b.minMs * 2 ** Math.min(Math.max(failures - 1, 0), 30));
  const jitter = b.jitter ?? 0;
  return jitter > 0 ? Math.round(base * (1 - jitter + random() * 2 * jitter)) : base;
}

/** The daemon was stopped before a start-up step succeeded. */
export class StartAborted extends Error {
  constructor(what: string) {
    super(`stopped before ${what}`);
    this.name = 'StartAborted';
  }
}

export interface RetryOptions<T> {
  /** What is being waited for, for StartAborted's message ("NATS was reached"). */
  what: string;
  backoff: Backoff;
  clock: Clock;
  /** Aborted when the daemon is stopped: the wait (and an attempt in flight) ends at once. */
  signal: AbortSignal;
  /** False for a failure that waiting cannot cure: it is thrown at once. */
  retryable(err: unknown): boolean;
  /** Called after each retryable failure, before waiting `delayMs`. */
  onRetry(err: unknown, failures: number, delayMs: number): void;
  /** Lets go of what an attempt abandoned by a stop delivers after all (a connection). */
  discard?(value: T): void;
}

/** Run `attempt` until it resolves; throws its first failure that is not retryable, or StartAborted. */
export async function retryUntilDone<T>(attempt: () => Promise<T>, o: RetryOptions<T>): Promise<T> {
  const aborted = new Promise<never>((_, reject) => {
    const abort = () => reject(new StartAborted(o.what));
    if (o.signal.aborted) abort();
    else o.signal.addEventListener('abort', abort, { once: true });
  });
  aborted.catch(() => undefined);
  for (let failures = 1; ; failures++) {
    if (o.signal.aborted) throw new StartAborted(o.what);
    const running = attempt();
    try {
      // A stop does not wait for an attempt in flight (a connection timing out).
      return await Promise.race([running, aborted]);
    } catch (err) {
      if (o.signal.aborted) {
        running.then((value) => o.discard?.(value)).catch(() => undefined);
        throw new StartAborted(o.what);
      }
      if (!o.retryable(err)) throw err;
      const delayMs = backoffDelay(failures, o.backoff);
      o.onRetry(err, failures, delayMs);
      let cancel: (() => void) | undefined;
      await Promise.race([new Promise<void>((resolve) => (cancel = o.clock.schedule(resolve, delayMs))), aborted]).finally(() =>
        cancel?.(),
      );
    }
  }
}
