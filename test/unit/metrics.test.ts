/**
 * What the metrics record, without NATS or a database: the request side reports every request once,
 * answered, with its outcome and its whole time; the batcher reports commits and failed
 * transactions; the tallies behind $SRV.STATS; a scrape reads the sampled values and does not hang
 * on a store that does not answer.
 */
import { Batcher, type BatchObserver } from '../../daemon/batcher';
import type { Handlers } from '../../daemon/handlers';
import { LockRuleError } from '../../daemon/lock-ops';
import { LockService, type Outcome, type Responder } from '../../daemon/lock-service';
import { createLogger } from '../../daemon/logger';
import { DaemonMetrics, SCRAPE_STORE_TIMEOUT_MS, storeErrorKind, type MetricSources } from '../../daemon/metrics';
import {
  CommitInDoubt,
  DuplicateRequest,
  RowBusy,
  StoreUnavailable,
  TransactionConflict,
  type StoreCounts,
} from '../../daemon/store/store';
import { ENDPOINTS, ErrorCode, type Endpoint } from '../../shared/protocol';
import { parseExposition } from '../helpers/http-metrics';
import { flushPromises, ManualClock } from '../helpers/manual-clock';
import { MemoryStore } from '../helpers/memory-store';

const logger = createLogger({ level: 'error', format: 'json', silent: true });
const encode = (v: unknown) => new TextEncoder().encode(typeof v === 'string' ? v : JSON.stringify(v));

function responder(body: unknown): Responder & { respond: jest.Mock; respondError: jest.Mock } {
  return { data: encode(body), respond: jest.fn(() => true), respondError: jest.fn(() => true) };
}

describe('LockService reports each request once it is answered', () => {
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => jest.useRealTimers());

  const seen: [Endpoint, Outcome, number][] = [];
  const handlers = {
    is_locked: async ({ name }: { name: string }) => {
      // Asynchronous work: a wait of 500 ms before the answer.
      await new Promise((r) => setTimeout(r, 500));
      if (name === 'missing') throw new LockRuleError(ErrorCode.LOCK_NOT_FOUND, 'no lock');
      if (name === 'db-away') throw new StoreUnavailable('connection refused');
      if (name === 'bug') throw new Error('a bug');
      return true;
    },
  } as unknown as Handlers;
  const service = () => {
    seen.length = 0;
    return new LockService(handlers, logger, undefined, undefined, (e, o, ms) => seen.push([e, o, ms]));
  };

  it.each([
    ['a', 'ok', 'respond'],
    ['missing', ErrorCode.LOCK_NOT_FOUND, 'respondError'],
    ['db-away', ErrorCode.STORE_UNAVAILABLE, 'respondError'],
    ['bug', ErrorCode.INTERNAL, 'respondError'],
  ] as const)('%s: outcome %s, timed to its answer, asynchronous work included', async (name, outcome, replied) => {
    const s = service();
    const msg = responder({ name });
    s.handle('is_locked', msg);
    await jest.advanceTimersByTimeAsync(499);
    expect(seen).toEqual([]);
    expect(s.inFlight).toBe(1);
    await jest.advanceTimersByTimeAsync(1);
    expect(seen).toEqual([['is_locked', outcome, 500]]);
    expect(msg[replied]).toHaveBeenCalledTimes(1);
    expect(s.inFlight).toBe(0);
  });

  it('an invalid request is answered INVALID_REQUEST without its handler, and reported so', async () => {
    const s = service();
    const msg = responder('{not json');
    s.handle('is_locked', msg);
    await jest.advanceTimersByTimeAsync(0);
    expect(seen).toEqual([['is_locked', ErrorCode.INVALID_REQUEST, 0]]);
    expect(msg.respondError).toHaveBeenCalledWith(400, expect.any(String), expect.any(Uint8Array));
  });
});

describe('DaemonMetrics', () => {
  let clock: ManualClock;
  let sources: MetricSources & { store?: () => Promise<StoreCounts> };
  let metrics: DaemonMetrics;

  beforeEach(() => {
    clock = new ManualClock();
    sources = {
      counts: () => sources.store?.(),
      waiters: () => 4,
      inFlight: () => 6,
      sweeperLagMs: () => 250,
    };
    metrics = new DaemonMetrics('pfx', ENDPOINTS, sources, clock);
  });

  const render = async () => parseExposition((await metrics.render()).body);

  it('tallies whole requests and error replies per endpoint, in nanoseconds, for $SRV.STATS', () => {
    expect(metrics.endpointStats('renew')).toEqual({ num_requests: 0, num_errors: 0, processing_time: 0, average_processing_time: 0 });
    metrics.request('renew', 'ok', 2);
    metrics.request('renew', ErrorCode.LOCK_NOT_FOUND, 4);
    expect(metrics.endpointStats('renew')).toEqual({
      num_requests: 2,
      num_errors: 1,
      processing_time: 6_000_000,
      average_processing_time: 3_000_000,
      last_error: 'LOCK_NOT_FOUND',
    });
    expect(metrics.endpointStats('$SYS')).toBeUndefined();
  });

  it('counts requests by endpoint and outcome, observes their seconds, and labels every sample with the prefix', async () => {
    metrics.request('get', 'ok', 2);
    metrics.request('get', ErrorCode.LOCKED, 3);
    metrics.request('get', ErrorCode.LOCKED, 30_000);
    const m = await render();
    expect(m.value('lockmgr_requests_total', { endpoint: 'get', outcome: 'ok', prefix: 'pfx' })).toBe(1);
    expect(m.value('lockmgr_requests_total', { endpoint: 'get', outcome: 'LOCKED' })).toBe(2);
    // Every endpoint's ok counter is there from the start.
    expect(m.value('lockmgr_requests_total', { endpoint: 'session_close', outcome: 'ok' })).toBe(0);
    expect(m.value('lockmgr_request_duration_seconds_count', { endpoint: 'get' })).toBe(3);
    expect(m.value('lockmgr_request_duration_seconds_sum', { endpoint: 'get' })).toBeCloseTo(30.005, 6);
    expect(m.value('lockmgr_request_duration_seconds_bucket', { endpoint: 'get', le: '0.0025' })).toBe(1);
    expect(m.value('lockmgr_request_duration_seconds_bucket', { endpoint: 'get', le: '10' })).toBe(2);
    expect(m.value('lockmgr_request_duration_seconds_bucket', { endpoint: 'get', le: '30' })).toBe(3);
    expect(m.all('lockmgr_locks_held').map((s) => s.labels)).toEqual([{ prefix: 'pfx' }]);
  });

  it('reads the sampled values at the scrape: waiters, requests in flight, sweeper lag, and the store counts with the relay lag on the store clock', async () => {
    sources.store = async () => ({ locks: 12, sessions: 3, outbox: 7, oldestEventAt: clock.now() - 5000, now: clock.now() + 1500 });
    const m = await render();
    expect(m.value('lockmgr_waiters')).toBe(4);
    expect(m.value('lockmgr_requests_in_flight')).toBe(6);
    expect(m.value('lockmgr_sweeper_lag_seconds')).toBe(0.25);
    expect(m.value('lockmgr_locks_held')).toBe(12);
    expect(m.value('lockmgr_sessions')).toBe(3);
    expect(m.value('lockmgr_outbox_events')).toBe(7);
    expect(m.value('lockmgr_relay_lag_seconds')).toBe(6.5);
    sources.store = async () => ({ locks: 0, sessions: 0, outbox: 0, oldestEventAt: null, now: clock.now() });
    expect((await render()).value('lockmgr_relay_lag_seconds')).toBe(0);
  });

  it('reports the store counts as NaN when there is no store yet, it fails, or it does not answer in time; the scrape itself answers', async () => {
    expect((await render()).value('lockmgr_locks_held')).toBeNaN();
    sources.store = () => Promise.reject(new StoreUnavailable('connection refused'));
    expect((await render()).value('lockmgr_outbox_events')).toBeNaN();
    let calls = 0;
    sources.store = () => {
      calls += 1;
      return new Promise<never>(() => undefined);
    };
    let done = false;
    const first = metrics.render().then((r) => ((done = true), r));
    // A second scrape meanwhile shares the query.
    const second = metrics.render();
    await flushPromises();
    expect(done).toBe(false);
    expect(calls).toBe(1);
    await clock.advance(SCRAPE_STORE_TIMEOUT_MS);
    for (const r of [await first, await second]) expect(parseExposition(r.body).value('lockmgr_relay_lag_seconds')).toBeNaN();
    expect(parseExposition((await first).body).value('lockmgr_waiters')).toBe(4);
  });

  it('names store errors by kind', () => {
    expect(storeErrorKind(new CommitInDoubt('x'))).toBe('commit_in_doubt');
    expect(storeErrorKind(new StoreUnavailable('x'))).toBe('unavailable');
    expect(storeErrorKind(new RowBusy('x'))).toBe('row_busy');
    expect(storeErrorKind(new TransactionConflict('x'))).toBe('conflict');
    expect(storeErrorKind(new DuplicateRequest(['r1']))).toBe('conflict');
    expect(storeErrorKind(new Error('syntax error'))).toBe('other');
  });
});

describe('the batcher tells its observer of commits and failed transactions', () => {
  it('the size of each committed batch; each failed attempt, retried or not', async () => {
    const store = new MemoryStore();
    const committed: number[] = [];
    const failed: string[] = [];
    const observer: BatchObserver = { committed: (n) => committed.push(n), failed: (err) => failed.push(storeErrorKind(err)) };
    const batcher = new Batcher(store, { observer });
    const op = { run: async () => 1 };
    await Promise.all([batcher.run(op), batcher.run(op), batcher.run(op)]);
    expect(committed).toEqual([3]);

    store.failNext(new TransactionConflict('deadlock'));
    await batcher.run(op);
    expect(failed).toEqual(['conflict']);
    expect(committed).toEqual([3, 1]);

    store.failNext(new StoreUnavailable('connection refused'));
    await expect(batcher.run(op)).rejects.toBeInstanceOf(StoreUnavailable);
    expect(failed).toEqual(['conflict', 'unavailable']);
    expect(committed).toEqual([3, 1]);
  });
});
