/**
 * Rolling restarts lose no waiter. A daemon that drains (SIGTERM) no longer takes requests, then
 * gives up the gets waiting in it with DAEMON_STOPPING; their clients send each again (same
 * request id, what is left of the wait) to another daemon, or keep asking until one is started in
 * its place, and every waiter is granted the lock in the end — none is answered LOCKED. Daemons
 * are processes of the built CLI; who granted each lock is read from its `created` event.
 */
import { connect, type NatsConnection } from 'nats';
import { LockClient, type Lock } from '../../client/index';
import type { LockEvent } from '../../shared/events';
import { createTestDatabase, STORES, type StoreKind, type TestDatabase } from '../helpers/databases';
import { startDaemon, type RunningDaemon } from '../helpers/daemon-process';
import { cleanupDir, startNatsServer, type NatsServer } from '../helpers/nats-server';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const decoder = new TextDecoder();
const WAITERS = 4;

interface Rig {
  nats: NatsServer;
  db: TestDatabase;
  prefix: string;
  /** A connection of the test's own: it counts requests and reads events. */
  nc: NatsConnection;
  clients: LockClient[];
  daemons: RunningDaemon[];
  /** Who granted each lock: `created` events. */
  grants: LockEvent[];
  startDaemon(): Promise<RunningDaemon>;
  client(): Promise<LockClient>;
}

let rigs = 0;

async function rig(store: StoreKind): Promise<Rig> {
  const nats = await startNatsServer();
  const db = await createTestDatabase(store);
  const prefix = `roll${process.pid}x${++rigs}`;
  const nc = await connect({ servers: nats.url });
  const r: Rig = {
    nats,
    db,
    prefix,
    nc,
    clients: [],
    daemons: [],
    grants: [],
    startDaemon: async () => {
      const d = await startDaemon({ natsUrl: nats.url, db: db.url, prefix });
      r.daemons.push(d);
      return d;
    },
    client: async () => {
      const c = await LockClient.connect({ servers: nats.url, prefix });
      r.clients.push(c);
      return c;
    },
  };
  nc.subscribe(`${prefix}.events.created.>`, {
    callback: (_err, msg) => r.grants.push(JSON.parse(decoder.decode(msg.data)) as LockEvent),
  });
  await nc.flush();
  return r;
}

async function teardown(r: Rig | undefined): Promise<void> {
  if (!r) return;
  await Promise.all(r.clients.map((c) => c.close().catch(() => undefined)));
  await Promise.all(r.daemons.map((d) => d.stop()));
  await r.nc.close();
  await r.nats.stop();
  cleanupDir(r.nats.storeDir);
  await r.db.drop().catch(() => undefined);
}

/**
 * The pid of the daemon that granted each lock, from its `created` event (a daemon's id is
 * host:pid:random). Events are relayed after the reply, so they may take a moment.
 */
async function grantedBy(r: Rig, locks: Lock[]): Promise<number[]> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const events = locks.map((l) => r.grants.find((e) => e.lock.name === l.name && e.lock.token === l.token));
    if (events.every((e) => e !== undefined) || Date.now() > deadline) return events.map((e) => (e ? Number(e.daemon.split(':')[1]) : NaN));
    await sleep(100);
  }
}

/**
 * WAITERS clients wait (30 s) for `name`, each releasing it as soon as it has it. Returns once
 * each has reached a daemon; `outcomes` settles with what each call gave.
 */
async function waitFor(r: Rig, name: string): Promise<{ outcomes: Promise<(Lock | Error)[]> }> {
  // Counted only meanwhile: a subscriber of its own would keep NATS from answering "no responders".
  let gets = 0;
  const spy = r.nc.subscribe(`${r.prefix}.get`, { callback: () => void gets++ });
  await r.nc.flush();
  const clients = await Promise.all(Array.from({ length: WAITERS }, () => r.client()));
  const outcomes = clients.map(async (c) => {
    try {
      const lock = await c.getLock(name, { expires: 30, wait: 30 });
      await c.unlock(lock);
      return lock;
    } catch (err) {
      return err as Error;
    }
  });
  // Each has reached a daemon, which waits (and says so: no more copies).
  while (gets < WAITERS) await sleep(20);
  await sleep(300);
  spy.unsubscribe();
  await r.nc.flush();
  return { outcomes: Promise.all(outcomes) };
}

function expectAllGranted(outcomes: (Lock | Error)[], after: Lock): Lock[] {
  for (const o of outcomes) expect(o).toEqual(expect.objectContaining({ name: after.name }));
  const locks = outcomes as Lock[];
  expect(new Set(locks.map((l) => l.token)).size).toBe(WAITERS);
  for (const l of locks) expect(l.token).toBeGreaterThan(after.token);
  return locks;
}

describe.each(STORES)('rolling restart on %s', (store) => {
  let r: Rig | undefined;
  afterEach(async () => {
    await teardown(r);
    r = undefined;
  }, 30_000);

  it('the only daemon drains while gets wait: they keep asking, and the daemon started in its place grants them all', async () => {
    r = await rig(store);
    const first = await r.startDaemon();
    const holder = await r.client();
    const held = await holder.getLock('roll', { expires: 60 });
    const waiting = await waitFor(r, 'roll');

    first.signal('SIGTERM');
    expect(await first.exited).toBe(0);
    // No daemon for a while: the waiters ask again after pauses, within what is left of their wait.
    await sleep(1000);
    const second = await r.startDaemon();
    expect(await holder.unlock(held)).toBe(true);

    const locks = expectAllGranted(await waiting.outcomes, held);
    expect(await grantedBy(r, locks)).toEqual(locks.map(() => second.pid));
  }, 60_000);

  if (store === 'postgres') {
    it('two daemons: one drains while gets wait on it, the other grants them all; a daemon restarted later serves too', async () => {
      r = await rig(store);
      const a = await r.startDaemon();
      const holder = await r.client();
      const held = await holder.getLock('roll', { expires: 60 });
      // Every waiter on `a` (the only daemon yet), then `b` joins, then `a` drains.
      const waiting = await waitFor(r, 'roll');
      const b = await r.startDaemon();
      a.signal('SIGTERM');
      expect(await a.exited).toBe(0);
      expect(await holder.unlock(held)).toBe(true);
      const locks = expectAllGranted(await waiting.outcomes, held);
      expect(await grantedBy(r, locks)).toEqual(locks.map(() => b.pid));

      // `a` started again; now `b` drains, with waiters on either: the new `a` grants them all.
      const a2 = await r.startDaemon();
      const heldAgain = await holder.getLock('roll2', { expires: 60 });
      const waitingAgain = await waitFor(r, 'roll2');
      b.signal('SIGTERM');
      expect(await b.exited).toBe(0);
      expect(await holder.unlock(heldAgain)).toBe(true);
      const again = expectAllGranted(await waitingAgain.outcomes, heldAgain);
      expect(await grantedBy(r, again)).toEqual(again.map(() => a2.pid));
    }, 90_000);
  }
});
