/**
 * The daemon's HTTP listener against real daemons, a real nats-server and real databases:
 * /metrics follows the requests (counters by endpoint and outcome, the latency histogram, held
 * locks, sessions, waiters, the outbox while NATS is away), $SRV.STATS counts error replies and
 * times whole requests, /healthz answers while the process lives, and /readyz reports this
 * daemon's own NATS and database connections — not another daemon's on the same prefix.
 */
import { connect, RequestStrategy, type NatsConnection, type ServiceStats } from 'nats';
import { LockClient, Locked, LockNotFound } from '../../client/index';
import type { LockDaemon } from '../../daemon/lock-daemon';
import { eventually } from '../helpers/cli';
import { STORES } from '../helpers/databases';
import { httpGet, scrape, type Scrape } from '../helpers/http-metrics';
import { startStack, type Stack } from '../helpers/stack';
import { startTcpProxy } from '../helpers/tcp-proxy';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const HTTP = { httpListen: '127.0.0.1:0' };

function urlOf(d: LockDaemon): string {
  if (!d.httpUrl) throw new Error('the daemon serves no HTTP');
  return d.httpUrl;
}

/** Scrapes until `check` passes (it throws while it does not). */
async function scrapeUntil(url: string, check: (m: Scrape) => void, timeoutMs = 15_000): Promise<Scrape> {
  return eventually(async () => {
    const m = await scrape(url);
    check(m);
    return m;
  }, timeoutMs);
}

/** What every daemon on `prefix` answers to $SRV.STATS.lockmgr. */
async function serviceStats(nc: NatsConnection, prefix: string): Promise<ServiceStats[]> {
  const out: ServiceStats[] = [];
  for await (const s of await nc.services.client({ strategy: RequestStrategy.Timer, maxWait: 1000 }).stats('lockmgr')) {
    if (s.metadata?.prefix === prefix) out.push(s);
  }
  return out;
}

describe.each(STORES)('metrics and health over HTTP (%s)', (store) => {
  let stack: Stack;
  let url: string;

  beforeAll(async () => {
    stack = await startStack({ store, config: HTTP });
    url = urlOf(stack.daemons[0]!);
  });
  afterAll(() => stack?.stop());

  it('serves request counters by endpoint and outcome, a latency histogram of whole requests, and the gauges, changing as requests are made; $SRV.STATS agrees', async () => {
    const before = await scrape(url);
    expect(before.value('lockmgr_requests_total', { endpoint: 'get', outcome: 'ok' })).toBe(0);
    expect(before.value('lockmgr_requests_total', { endpoint: 'set', outcome: 'ok' })).toBe(0);
    expect(before.value('lockmgr_locks_held')).toBe(0);
    expect(before.value('lockmgr_sessions')).toBe(0);
    expect(before.value('lockmgr_store_errors_total', { kind: 'unavailable' })).toBe(0);
    // The prefix is a label of every sample; Node's process metrics are there too.
    expect(before.all('lockmgr_locks_held', { prefix: stack.prefix })).toHaveLength(1);
    expect(before.value('process_cpu_seconds_total')).toBeGreaterThan(0);

    // Clients that send no copy of a request within the test (copies are requests too, counted as such).
    const once = () => LockClient.connect({ servers: stack.nats.url, prefix: stack.prefix, resendAfter: 10_000 });
    const client = await once();
    const other = await once();
    const held = await client.getLock('m.a', { expires: 60 });
    await expect(client.getLock('m.a')).rejects.toBeInstanceOf(Locked);
    // By name: an admin request.
    await expect(client.renewLock('m.missing')).rejects.toBeInstanceOf(LockNotFound);
    await client.setLock('m.b', 'm.c', { timeout: 60, renew: false });
    // An invalid request, straight on the wire.
    const nc = await connect({ servers: stack.nats.url });
    try {
      const bad = await nc.request(`${stack.prefix}.set`, new TextEncoder().encode('{not json'), { timeout: 5000 });
      expect(bad.headers?.get('Nats-Service-Error-Code')).toBe('400');
      const session = await client.openSession({ ttl: 30 });
      // A get that waits for m.a, in another client: a waiter and a request in flight.
      const waited = Date.now();
      const waiting = other.getLock('m.a', { wait: 30, expires: 60 });
      const during = await scrapeUntil(url, (m) => expect(m.value('lockmgr_waiters')).toBe(1));
      expect(during.value('lockmgr_requests_in_flight')).toBeGreaterThanOrEqual(1);
      expect(during.value('lockmgr_locks_held')).toBe(3);
      expect(during.value('lockmgr_sessions')).toBe(1);
      expect(during.value('lockmgr_requests_total', { endpoint: 'get', outcome: 'ok' })).toBe(1);
      expect(during.value('lockmgr_requests_total', { endpoint: 'get', outcome: 'LOCKED' })).toBe(1);
      expect(during.value('lockmgr_requests_total', { endpoint: 'admin_renew', outcome: 'LOCK_NOT_FOUND' })).toBe(1);
      expect(during.value('lockmgr_requests_total', { endpoint: 'set', outcome: 'ok' })).toBe(1);
      expect(during.value('lockmgr_requests_total', { endpoint: 'set', outcome: 'INVALID_REQUEST' })).toBe(1);
      // The waiting get is counted once answered, not before.
      expect(during.value('lockmgr_request_duration_seconds_count', { endpoint: 'get' })).toBe(2);
      expect(during.value('lockmgr_request_duration_seconds_bucket', { endpoint: 'get', le: '+Inf' })).toBe(2);
      expect(during.value('lockmgr_request_duration_seconds_sum', { endpoint: 'get' })).toBeGreaterThan(0);
      expect(during.value('lockmgr_batch_size_count')).toBeGreaterThan(0);

      await sleep(300);
      await client.unlock(held);
      const granted = await waiting;
      const waitedMs = Date.now() - waited;
      await session.close();
      await other.unlock(granted);

      const after = await scrapeUntil(url, (m) => {
        expect(m.value('lockmgr_requests_total', { endpoint: 'get', outcome: 'ok' })).toBe(2);
        expect(m.value('lockmgr_waiters')).toBe(0);
        expect(m.value('lockmgr_sessions')).toBe(0);
        expect(m.value('lockmgr_locks_held')).toBe(2);
      });
      // The waiting get's time is its wait: the histogram times whole requests.
      expect(after.value('lockmgr_request_duration_seconds_count', { endpoint: 'get' })).toBe(3);
      expect(after.value('lockmgr_request_duration_seconds_sum', { endpoint: 'get' })).toBeGreaterThanOrEqual(0.3);
      expect(after.value('lockmgr_request_duration_seconds_bucket', { endpoint: 'get', le: '0.25' })).toBeLessThanOrEqual(2);
      expect(after.value('lockmgr_request_duration_seconds_sum', { endpoint: 'get' })).toBeLessThanOrEqual(waitedMs / 1000 + 1);

      // $SRV.STATS: error replies are errors, and async handlers' whole time is counted.
      const [stats, ...others] = await serviceStats(nc, stack.prefix);
      expect(others).toHaveLength(0);
      const ep = (name: string) => stats!.endpoints!.find((e) => e.name === name)!;
      expect(ep('admin_renew')).toMatchObject({ num_requests: 1, num_errors: 1, last_error: 'LOCK_NOT_FOUND' });
      expect(ep('set')).toMatchObject({ num_requests: 2, num_errors: 1, last_error: 'INVALID_REQUEST' });
      expect(ep('get')).toMatchObject({ num_requests: 3, num_errors: 1, last_error: 'LOCKED' });
      expect(ep('get').processing_time).toBeGreaterThanOrEqual(300e6); // ns: the wait included
      expect(ep('set').processing_time).toBeGreaterThan(0);
      expect(ep('set').average_processing_time).toBeGreaterThan(0);
      expect(ep('is_locked')).toMatchObject({ num_requests: 0, num_errors: 0, processing_time: 0 });
      // The same requests as Prometheus counts them.
      for (const e of stats!.endpoints!) {
        expect([e.name, after.sum('lockmgr_requests_total', { endpoint: e.name })]).toEqual([e.name, e.num_requests]);
      }
    } finally {
      await Promise.all([nc.close(), client.close(), other.close()]);
    }
  });

  it('/healthz answers while the process lives; /readyz follows its NATS connection; expiries wait in the outbox meanwhile, and the relay lag shows it', async () => {
    expect(await httpGet(url, '/healthz')).toMatchObject({ status: 200, text: 'ok\n' });
    expect(await httpGet(url, '/readyz')).toMatchObject({ status: 200, text: 'ready\n' });
    expect(await httpGet(url, '/nothing')).toMatchObject({ status: 404 });
    expect(await httpGet(url, '/readyz', 'POST')).toMatchObject({ status: 405 });
    expect((await httpGet(url, '/metrics')).contentType).toMatch(/^text\/plain; version=0\.0\.4/);
    const heldBefore = (await scrape(url)).value('lockmgr_locks_held');
    await stack.client.setLock('o.1', 'o.2', 'o.3', { timeout: 1 });
    await scrapeUntil(url, (m) => {
      expect(m.value('lockmgr_locks_held')).toBe(heldBefore + 3);
      expect(m.value('lockmgr_outbox_events')).toBe(0);
    });

    await stack.nats.stop();
    try {
      const notReady = await eventually(async () => {
        const r = await httpGet(url, '/readyz');
        expect(r.status).toBe(503);
        return r;
      });
      expect(notReady.text).toMatch(/^not ready: .*NATS/);
      expect(await httpGet(url, '/healthz')).toMatchObject({ status: 200 });
      // The sweeper expires the three locks; their events wait for NATS.
      const waiting = await scrapeUntil(url, (m) => {
        expect(m.value('lockmgr_locks_held')).toBe(heldBefore);
        expect(m.value('lockmgr_outbox_events')).toBeGreaterThanOrEqual(3);
      });
      await sleep(500);
      const later = await scrape(url);
      expect(later.value('lockmgr_relay_lag_seconds')).toBeGreaterThanOrEqual(0.5);
      expect(later.value('lockmgr_outbox_events')).toBe(waiting.value('lockmgr_outbox_events'));
      // Sweeps go on without NATS.
      expect(later.value('lockmgr_sweeper_lag_seconds')).toBeLessThan(5);
    } finally {
      await stack.nats.restart();
    }
    await eventually(async () => expect(await httpGet(url, '/readyz')).toMatchObject({ status: 200 }), 20_000);
    await scrapeUntil(url, (m) => {
      expect(m.value('lockmgr_outbox_events')).toBe(0);
      expect(m.value('lockmgr_relay_lag_seconds')).toBe(0);
    });
  });
});

describe('readiness is per daemon: PostgreSQL cut off from one of two daemons on the prefix', () => {
  it('that daemon answers /readyz 503 naming the database, and counts its failed transactions; the other stays ready; restored, both are', async () => {
    const stack = await startStack({ store: 'postgres', daemons: 0 });
    const pg = new URL(stack.db.url);
    const proxy = await startTcpProxy({ host: pg.hostname, port: Number(pg.port || 5432) });
    try {
      pg.port = String(proxy.port);
      const cut = urlOf(await stack.startDaemon({ ...HTTP, db: pg.toString(), dbStatementTimeout: 1 }));
      const other = urlOf(await stack.startDaemon(HTTP));
      await stack.client.getLock('r.held', { expires: 600 });
      for (const u of [cut, other]) expect(await httpGet(u, '/readyz')).toMatchObject({ status: 200 });
      const errorsBefore = (await scrape(cut)).value('lockmgr_store_errors_total', { kind: 'unavailable' });

      proxy.blackhole();
      const r = await httpGet(cut, '/readyz');
      expect(r.status).toBe(503);
      expect(r.text).toMatch(/^not ready: database unavailable/);
      expect(await httpGet(cut, '/healthz')).toMatchObject({ status: 200 });
      expect(await httpGet(other, '/readyz')).toMatchObject({ status: 200, text: 'ready\n' });
      // A scrape still answers, the store's numbers unknown; the other daemon counts them.
      const m = await scrape(cut);
      expect(m.value('lockmgr_locks_held')).toBeNaN();
      expect(m.value('lockmgr_outbox_events')).toBeNaN();
      expect((await scrape(other)).value('lockmgr_locks_held')).toBe(1);
      // Its sweeps fail meanwhile, each a store error.
      await scrapeUntil(cut, (s) => expect(s.value('lockmgr_store_errors_total', { kind: 'unavailable' })).toBeGreaterThan(errorsBefore));

      proxy.restore();
      await eventually(async () => expect(await httpGet(cut, '/readyz')).toMatchObject({ status: 200 }), 20_000);
      await scrapeUntil(cut, (s) => expect(s.value('lockmgr_locks_held')).toBe(1));
    } finally {
      proxy.restore();
      await stack.stop();
      await proxy.close();
    }
  });
});
