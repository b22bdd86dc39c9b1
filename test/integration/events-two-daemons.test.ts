/**
 * Two daemons on one PostgreSQL database and one prefix (one in this process, one a child
 * process of the built CLI): both take requests and both sweep, yet each expiry is recorded and
 * published once and every event reaches the stream once; events committed by the daemon that
 * does not relay are delivered while the relaying one is idle; and when the relaying daemon
 * stops, the other takes the relay over.
 */
import { Locked } from '../../client/index';
import {
  compareWithOutbox,
  lifecycleProblems,
  outboxCount,
  readStream,
  recordOutbox,
  recordedOutbox,
  sleep,
  sqlQuery,
  waitFor,
} from '../helpers/events';
import { spawnDaemon, startStack, type DaemonProcess, type Stack } from '../helpers/stack';

jest.setTimeout(60_000);

async function liveLocks(stack: Stack): Promise<number> {
  return Number((await sqlQuery(stack.db, 'SELECT COUNT(*) AS n FROM lockmgr_locks'))[0]!.n);
}

function envFor(stack: Stack, extra: Record<string, string> = {}): Record<string, string> {
  return {
    LOCKMGR_DB: stack.db.url,
    LOCKMGR_NATS_URL: stack.nats.url,
    LOCKMGR_PREFIX: stack.prefix,
    LOCKMGR_EVENTS_STREAM: `EV_${stack.prefix}`,
    LOCKMGR_SWEEP_INTERVAL: '0.2',
    ...extra,
  };
}

describe('events with two daemons on postgres', () => {
  let stack: Stack | undefined;
  let other: DaemonProcess | undefined;
  afterEach(async () => {
    await other?.stop();
    await stack?.stop();
    stack = other = undefined;
  });

  it('publishes each expiry once, every event once, and hands the relay over when the relaying daemon stops', async () => {
    const s = (stack = await startStack({ store: 'postgres', config: { sweepInterval: 0.2 } }));
    const stream = `EV_${s.prefix}`;
    await recordOutbox(s.db);
    const spawned = (other = await spawnDaemon(envFor(s)));
    const inProcess = s.daemons[0]!;
    const clients = [s.client, await s.newClient(), await s.newClient()];

    // 300 locks through both daemons (the queue group spreads the requests), expiring together
    // so that both sweepers find them.
    const names = Array.from({ length: 300 }, (_, i) => `two.${i}`);
    await Promise.all(
      names.map(async (n, i) => {
        try {
          await clients[i % 3]!.getLock(n, { expires: 3 });
        } catch (err) {
          if (!(err instanceof Locked)) throw err;
        }
      }),
    );
    await waitFor(async () => (await liveLocks(s)) === 0, 10_000, 'every lock to expire');
    await waitFor(async () => (await outboxCount(s.db)) === 0, 10_000, 'the outbox to drain');
    const stored = await readStream(s.nats.url, stream);
    const events = stored.map((x) => x.event);
    const daemons = new Set(events.map((e) => e.daemon));
    expect(daemons.has(inProcess.id)).toBe(true);
    expect(daemons.size).toBe(2); // both daemons took requests or swept
    const expired = events.filter((e) => e.type === 'expired');
    expect(expired).toHaveLength(300);
    expect(new Set(expired.map((e) => `${e.lock.name}/${e.lock.token}`)).size).toBe(300);
    expect(events.filter((e) => e.type === 'created')).toHaveLength(300);
    expect(lifecycleProblems(events)).toEqual([]);
    expect(compareWithOutbox(stored, await recordedOutbox(s.db))).toEqual([]);

    // The in-process daemon started first and relays; stop it: the other one takes over.
    expect(spawned.output()).not.toMatch(/this daemon relays the events/);
    await inProcess.stop();
    await waitFor(
      async () => {
        try {
          await clients[0]!.setLock('two.after', { timeout: 60 });
          return true;
        } catch {
          return false;
        }
      },
      10_000,
      'the remaining daemon to answer',
    );
    await clients[0]!.unlock('two.after');
    // Its own events it delivers itself; the lease it takes at its next try (standbyRetryMs).
    await waitFor(async () => (await outboxCount(s.db)) === 0, 10_000, 'the other daemon to deliver its events');
    await waitFor(() => /this daemon relays the events/.test(spawned.output()), 5000, 'the other daemon to take the relay lease');
    const after = await readStream(s.nats.url, stream, stored.length + 1);
    expect(after.map((x) => `${x.event.type} ${x.event.lock.name}`)).toEqual(['created two.after', 'released two.after']);
    expect(compareWithOutbox([...stored, ...after], await recordedOutbox(s.db))).toEqual([]);
  });

  it("keeps each lock's events in order and loses or doubles none while one of the daemons is paused (SIGSTOP) mid-load", async () => {
    const s = (stack = await startStack({ store: 'postgres' }));
    const stream = `EV_${s.prefix}`;
    await recordOutbox(s.db);
    const paused = (other = await spawnDaemon(envFor(s)));
    const clients = [s.client, await s.newClient(), await s.newClient(), await s.newClient()];
    // 16 names, each taken and released over and over through both daemons (the queue group
    // spreads the requests): consecutive events of one lock are often committed by different daemons.
    let running = true;
    let cycles = 0;
    const loops = Array.from({ length: 16 }, async (_, i) => {
      const client = clients[i % clients.length]!;
      while (running) {
        try {
          await client.setLock(`ord.${i}`, { timeout: 30 });
          await client.unlock(`ord.${i}`);
          cycles += 1;
        } catch {
          // A request the paused daemon held: the client's retry, or the next cycle, goes on.
        }
      }
    });
    await sleep(1000);
    paused.child.kill('SIGSTOP');
    await sleep(3000);
    paused.child.kill('SIGCONT');
    await sleep(1500);
    running = false;
    await Promise.all(loops);
    expect(cycles).toBeGreaterThan(100);
    await waitFor(async () => (await outboxCount(s.db)) === 0, 15_000, 'the outbox to drain');
    const stored = await readStream(s.nats.url, stream);
    const events = stored.map((x) => x.event);
    expect(new Set(events.map((e) => e.daemon)).size).toBe(2);
    // Every recorded event in the stream once, under its id, each lock's in seq order; and each
    // lock's history a valid sequence of grants.
    expect(compareWithOutbox(stored, await recordedOutbox(s.db))).toEqual([]);
    expect(lifecycleProblems(events)).toEqual([]);
  });

  it('delivers the events a standing-by daemon records while the relaying daemon is idle', async () => {
    const s = (stack = await startStack({ store: 'postgres', daemons: 0 }));
    // The child process starts first and relays; it does not sweep. The in-process daemon,
    // standing by, is the only one to find the expiries.
    other = await spawnDaemon(envFor(s, { LOCKMGR_SWEEP_INTERVAL: '3600' }));
    await waitFor(() => /this daemon relays the events/.test(other!.output()), 5000, 'the child to relay');
    const standby = await s.startDaemon({ sweepInterval: 0.2 });
    await s.client.setLock(...Array.from({ length: 20 }, (_, i) => `idle.${i}`), { timeout: 0.5 });
    const expiredAt = Date.now() + 500;
    // No request from here on: the relaying daemon has nothing of its own to deliver.
    await waitFor(
      async () => (await readStream(s.nats.url, `EV_${s.prefix}`)).filter((x) => x.event.type === 'expired').length === 20,
      5000,
      '20 expired events in the stream',
    );
    const delay = Date.now() - expiredAt;
    const stored = await readStream(s.nats.url, `EV_${s.prefix}`);
    const expired = stored.filter((x) => x.event.type === 'expired').map((x) => x.event);
    expect(expired.every((e) => e.daemon === standby.id && e.cause.operation === 'sweeper')).toBe(true);
    expect(delay).toBeLessThan(2500);
  });
});
