/**
 * The waits between attempts, and the start-up loop that tries NATS or the database until it
 * works: on a manual clock, so the waits are checked without sleeping.
 */
import { backoffDelay, retryUntilDone, StartAborted, type RetryOptions } from '../../daemon/backoff';
import { ManualClock } from '../helpers/manual-clock';

describe('backoffDelay', () => {
  it('doubles from the first wait up to the cap', () => {
    const b = { minMs: 250, maxMs: 5000 };
    expect([1, 2, 3, 4, 5, 6, 7, 100].map((n) => backoffDelay(n, b))).toEqual([250, 500, 1000, 2000, 4000, 5000, 5000, 5000]);
  });

  it('spreads each wait by the jitter, either way', () => {
    const b = { minMs: 1000, maxMs: 8000, jitter: 0.2 };
    expect(backoffDelay(1, b, () => 0)).toBe(800);
    expect(backoffDelay(1, b, () => 0.5)).toBe(1000);
    expect(backoffDelay(1, b, () => 1)).toBe(1200);
    expect(backoffDelay(9, b, () => 1)).toBe(9600);
  });
});

describe('retryUntilDone', () => {
  const unreachable = Object.assign(new Error('connect ECONNREFUSED'), { retry: true });
  const refused = Object.assign(new Error('password authentication failed'), { retry: false });

  function setup(outcomes: (Error | string)[]) {
    const clock = new ManualClock();
    const stop = new AbortController();
    const retries: { failures: number; delayMs: number; at: number }[] = [];
    let attempts = 0;
    const options: RetryOptions<string> = {
      what: 'the database was reached',
      backoff: { minMs: 100, maxMs: 400 },
      clock,
      signal: stop.signal,
      retryable: (err) => (err as { retry?: boolean }).retry === true,
      onRetry: (_err, failures, delayMs) => retries.push({ failures, delayMs, at: clock.now() }),
    };
    const attempt = async () => {
      const next = outcomes[attempts++] ?? new Error('no more outcomes');
      if (next instanceof Error) throw next;
      return next;
    };
    return { clock, stop, retries, options, attempt, attempts: () => attempts };
  }

  it('tries again after each retryable failure, waiting the backoff, until it works', async () => {
    const t = setup([unreachable, unreachable, unreachable, unreachable, 'connected']);
    const start = t.clock.now();
    let result: string | undefined;
    void retryUntilDone(t.attempt, t.options).then((r) => (result = r));
    await t.clock.flush();
    expect(t.attempts()).toBe(1);
    await t.clock.advance(99);
    expect(t.attempts()).toBe(1); // not before its wait
    await t.clock.advance(1);
    expect(t.attempts()).toBe(2);
    await t.clock.advance(200 + 400 + 400);
    expect(result).toBe('connected');
    expect(t.retries).toEqual([
      { failures: 1, delayMs: 100, at: start },
      { failures: 2, delayMs: 200, at: start + 100 },
      { failures: 3, delayMs: 400, at: start + 300 },
      { failures: 4, delayMs: 400, at: start + 700 },
    ]);
  });

  it('throws a failure waiting cannot cure at once, without a retry', async () => {
    const t = setup([unreachable, refused]);
    const outcome = retryUntilDone(t.attempt, t.options).catch((err: unknown) => err);
    await t.clock.advance(100);
    expect(await outcome).toBe(refused);
    expect(t.retries).toHaveLength(1);
    expect(t.clock.pending()).toBe(0);
  });

  it('a stop during a wait ends it at once (no time passes, no further attempt): StartAborted', async () => {
    const t = setup([unreachable, unreachable, 'connected']);
    const outcome = retryUntilDone(t.attempt, t.options).catch((err: unknown) => err);
    await t.clock.flush();
    t.stop.abort();
    const err = await outcome;
    expect(err).toBeInstanceOf(StartAborted);
    expect((err as Error).message).toBe('stopped before the database was reached');
    expect(t.attempts()).toBe(1);
    expect(t.clock.pending()).toBe(0); // the wait's timer is gone too
  });

  it('a stop during an attempt does not wait for it; what it delivers late is let go of', async () => {
    const clock = new ManualClock();
    const stop = new AbortController();
    let deliver!: (v: string) => void;
    const discarded: string[] = [];
    const outcome = retryUntilDone(() => new Promise<string>((resolve) => (deliver = resolve)), {
      what: 'NATS was reached',
      backoff: { minMs: 100, maxMs: 400 },
      clock,
      signal: stop.signal,
      retryable: () => true,
      onRetry: () => undefined,
      discard: (v) => discarded.push(v),
    }).catch((err: unknown) => err);
    await clock.flush();
    stop.abort();
    expect(await outcome).toBeInstanceOf(StartAborted);
    deliver('a connection');
    await clock.flush();
    expect(discarded).toEqual(['a connection']);
  });

  it('a daemon stopped before the first attempt makes none', async () => {
    const t = setup(['connected']);
    t.stop.abort();
    expect(await retryUntilDone(t.attempt, t.options).catch((err: unknown) => err)).toBeInstanceOf(StartAborted);
    expect(t.attempts()).toBe(0);
  });
});
