/**
 * Event delivery across NATS outages, with a nats-server each test starts, stops, kills and
 * restarts itself. What the daemon wrote to the outbox is recorded by a database trigger; once
 * NATS is back, the stream must hold every recorded event exactly once, under its id, with each
 * lock's events in order (and, on SQLite, all events in outbox order).
 */
import { eventually } from '../helpers/cli';
import { connect } from 'nats';
import { Locked } from '../../client/index';
import { eventPayload } from '../../daemon/relay/publisher';
import { toOutboxEvent } from '../../daemon/store/sql-outbox';
import { eventSubject } from '../../shared/events';
import { STORES } from '../helpers/databases';
import {
  compareWithOutbox,
  outboxCount,
  readStream,
  recordOutbox,
  recordedOutbox,
  sqlQuery,
  startNatsOnPort,
  waitFor,
  sleep,
} from '../helpers/events';
import { startNatsServer, type NatsServer } from '../helpers/nats-server';
import { startStack, type Stack } from '../helpers/stack';

jest.setTimeout(60_000);

async function liveLocks(stack: Stack): Promise<number> {
  const [row] = await sqlQuery(stack.db, 'SELECT COUNT(*) AS n FROM lockmgr_locks');
  return Number(row?.n ?? 0);
}

async function expectStreamMatchesOutbox(stack: Stack, store: string): Promise<number> {
  // Generous: after a kill, JetStream may take several seconds to recover its store, and each
  // unanswered probe waits out the publish timeout before the relay retries.
  await waitFor(async () => (await outboxCount(stack.db)) === 0, 60_000, 'the outbox to drain');
  const stored = await readStream(stack.nats.url, `EV_${stack.prefix}`);
  const recorded = await recordedOutbox(stack.db);
  expect(compareWithOutbox(stored, recorded)).toEqual([]);
  expect(stored).toHaveLength(recorded.length);
  if (store === 'sqlite') {
    // One writer: the stream is in outbox order exactly.
    expect(stored.map((s) => s.event.seq)).toEqual(recorded.map((r) => r.seq));
  }
  return stored.length;
}

describe.each(STORES)('event delivery across NATS outages on %s', (store) => {
  let nats: NatsServer | undefined;
  let stack: Stack | undefined;
  afterEach(async () => {
    await stack?.stop();
    await nats?.stop('SIGKILL');
    stack = nats = undefined;
  });

  it('nats-server stopped while locks expire: every event reaches the stream once, in order, after it returns', async () => {
    nats = await startNatsServer();
    stack = await startStack({ store, nats, config: { sweepInterval: 0.2, eventsDuplicateWindow: 1 } });
    await recordOutbox(stack.db);
    const c = stack.client;
    const names = Array.from({ length: 200 }, (_, i) => `out.${i}`);
    await c.setLock(...names.slice(0, 100), { timeout: 1.5 });
    await Promise.all(names.slice(100).map((n) => c.getLock(n, { expires: 1.5 })));
    await Promise.all(names.slice(0, 40).map((n) => c.renewLock(n, { expires: 1.5 })));
    await Promise.all(names.slice(150).map((n) => c.unlock(n)));
    await nats.stop();
    // The expiries happen, and are recorded, while NATS is down.
    await waitFor(async () => (await liveLocks(stack!)) === 0, 10_000, 'the sweeper to expire every lock');
    expect(await outboxCount(stack.db)).toBeGreaterThanOrEqual(150);
    await nats.restart();
    const n = await expectStreamMatchesOutbox(stack, store);
    // 200 created, 40 renewed, 50 released, 150 expired.
    expect(n).toBe(440);
  });

  it('nats-server killed (SIGKILL) right after a burst of replies: what was left in the outbox arrives once, in order', async () => {
    nats = await startNatsServer();
    stack = await startStack({ store, nats, config: { sweepInterval: 0.2, eventsDuplicateWindow: 1 } });
    await recordOutbox(stack.db);
    const clients = [stack.client, await stack.newClient(), await stack.newClient()];
    const names = Array.from({ length: 300 }, (_, i) => `kill.${i}`);
    // Many small requests, then two of 750 names each that commit together: the relay takes the
    // outbox a page at a time (a few hundred events), so it is still publishing those when the
    // replies are in and the server dies.
    const bulk = Array.from({ length: 1500 }, (_, i) => `kill.bulk.${i}`);
    await Promise.all(
      names.map(async (n, i) => {
        const c = clients[i % clients.length]!;
        // 4 s: a grant that arrives with less than a quarter of its lifetime left is withdrawn
        // instead, and 300 gets at once on PostgreSQL may take over a second on a busy host.
        const lock = await c.getLock(n, { expires: 4 });
        if (i % 3 === 0) await c.unlock(lock);
        else if (i % 3 === 1) await c.renewLock(lock, { expires: 4.4 });
      }),
    );
    // 10 s, for the same reason: 750 names on PostgreSQL take 0.5–1 s on a quiet host, and were
    // seen taking over 3 s on a busy one.
    await Promise.all([0, 1].map((k) => clients[k]!.setLock(...bulk.slice(k * 750, (k + 1) * 750), { timeout: 10 })));
    await nats.stop('SIGKILL');
    const leftAtKill = await outboxCount(stack.db);
    if (process.env.LOCKMGR_TEST_REPORT) process.stdout.write(`${store}: ${leftAtKill} events in the outbox when nats-server was killed\n`);
    await waitFor(async () => (await liveLocks(stack!)) === 0, 20_000, 'the sweeper to expire every lock');
    await nats.restart();
    const n = await expectStreamMatchesOutbox(stack, store);
    expect(n).toBe(300 + 100 + 100 + 200 + 1500 + 1500);
    // The burst's last events had not left the outbox when the server died.
    expect(leftAtKill).toBeGreaterThan(0);
  });

  it('events the stream already holds when a daemon starts (acknowledgement lost) are not sent again, even after the duplicate window', async () => {
    nats = await startNatsServer();
    stack = await startStack({ store, nats, config: { sweepInterval: 0.2, eventsDuplicateWindow: 1 } });
    await recordOutbox(stack.db);
    await stack.client.setLock(...Array.from({ length: 50 }, (_, i) => `ack.${i}`), { timeout: 0.5 });
    await waitFor(async () => (await outboxCount(stack!.db)) === 0, 5000, 'the created events');
    await nats.stop();
    await waitFor(async () => (await outboxCount(stack!.db)) === 50, 5000, 'the sweeper to record 50 expiries');
    await stack.daemons[0]!.stop(500);
    await nats.restart();
    // As if a relay had published the first 20 and died before removing them from the outbox.
    const rows = await sqlQuery(
      stack.db,
      'SELECT seq, event_id, type, name, lock, cause, daemon, at FROM lockmgr_outbox ORDER BY seq LIMIT 20',
    );
    const nc = await connect({ servers: nats.url });
    try {
      const js = nc.jetstream();
      for (const row of rows) {
        const e = toOutboxEvent(row);
        await js.publish(eventSubject(stack.prefix, e.type, e.name), new TextEncoder().encode(eventPayload(e)), { msgID: e.id });
      }
    } finally {
      await nc.close();
    }
    await sleep(1200); // past the duplicate window: the stream would take a re-send
    await stack.startDaemon();
    expect(await expectStreamMatchesOutbox(stack, store)).toBe(100);
  });

  it('JetStream away while NATS is up: requests still succeed, events wait, and arrive once JetStream is back', async () => {
    nats = await startNatsServer();
    stack = await startStack({ store, nats, config: { sweepInterval: 0.2, eventsDuplicateWindow: 1 } });
    await recordOutbox(stack.db);
    // A short timeout: a request sent while the client reconnects can go unanswered.
    const c = await stack.newClient({ timeout: 1000 });
    await c.setLock('js.before', { timeout: 60 });
    await waitFor(async () => (await outboxCount(stack!.db)) === 0, 5000, 'the first event');
    await nats.stop();
    const plain = await startNatsOnPort(nats.port, { jetstream: false });
    try {
      await eventually(() => c.setLock('js.during.0', { timeout: 60 }));
      for (let i = 1; i < 20; i++) await c.setLock(`js.during.${i}`, { timeout: 0.3 });
      expect(await c.unlock('js.before')).toBe(true);
      await expect(c.getLock('js.during.0')).rejects.toBeInstanceOf(Locked);
      await sleep(800); // the short ones expire and are swept
      expect(await outboxCount(stack.db)).toBe(20 + 1 + 19);
      expect(stack.daemons[0]!.eventDelivery).toBe('jetstream');
    } finally {
      await plain.stop();
    }
    await nats.restart();
    expect(await expectStreamMatchesOutbox(stack, store)).toBe(1 + 20 + 1 + 19);
  });

  it('without JetStream at start: events go out on core NATS; once a server with JetStream appears they go to the stream', async () => {
    nats = await startNatsServer({ jetstream: false });
    stack = await startStack({ store, nats });
    expect(stack.daemons[0]!.eventDelivery).toBe('core');
    const got: string[] = [];
    const sub = stack.client.events({ names: 'core.>' });
    await sub.ready;
    const reading = (async () => {
      for await (const e of sub) if (got.push(`${e.type} ${e.lock.name}`) === 2) break;
    })();
    await stack.client.setLock('core.a');
    await stack.client.unlock('core.a');
    await reading;
    expect(got).toEqual(['created core.a', 'released core.a']);
    await waitFor(async () => (await outboxCount(stack!.db)) === 0, 5000, 'the outbox to drain');

    await nats.stop();
    const withJs = await startNatsOnPort(nats.port, { jetstream: true });
    try {
      await waitFor(() => stack!.daemons[0]!.eventDelivery === 'jetstream', 10_000, 'the daemon to find JetStream');
      const c = await stack.newClient({ timeout: 1000 });
      await eventually(() => c.setLock('core.b'));
      await waitFor(async () => (await outboxCount(stack!.db)) === 0, 5000, 'the outbox to drain');
      const stored = await readStream(stack.nats.url, `EV_${stack.prefix}`);
      expect(stored.map((s) => `${s.event.type} ${s.event.lock.name}`)).toEqual(['created core.b']);
    } finally {
      await stack.stop();
      stack = undefined;
      await withJs.stop();
    }
  });
});
