/**
 * The client against NATS going away and refusing, with nats-servers the tests start, kill and
 * restart themselves: a client with default options and daemon processes (one on SQLite, one on
 * PostgreSQL) survive a 60 s outage; calls made meanwhile fail with NatsUnavailable when their own
 * time is up, and calls work again, on the same client, once NATS is back. Every failure NATS
 * causes reaches the caller as a LockError with a stable code.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConnectionClosed, LockClient, type LockError, NatsUnavailable, PermissionDenied, type Lock } from '../../client/index';
import { createTestDatabase, type TestDatabase } from '../helpers/databases';
import { startDaemon, type RunningDaemon } from '../helpers/daemon-process';
import { cleanupDir, freePort, startNatsServer, type NatsServer } from '../helpers/nats-server';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Run `fn`; what it threw (or that it did not) and how long it took. */
async function timed(fn: () => Promise<unknown>): Promise<{ err: unknown; ms: number }> {
  const start = Date.now();
  try {
    await fn();
    return { err: undefined, ms: Date.now() - start };
  } catch (err) {
    return { err, ms: Date.now() - start };
  }
}

const OUTAGE_MS = 60_000;

describe('a 60 s NATS outage', () => {
  let nats: NatsServer | undefined;
  const daemons: RunningDaemon[] = [];
  const clients: LockClient[] = [];
  let pg: TestDatabase | undefined;
  let dir: string | undefined;

  afterAll(async () => {
    await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
    await Promise.all(daemons.map((d) => d.stop()));
    await nats?.stop('SIGKILL');
    await pg?.drop().catch(() => undefined);
    if (nats) cleanupDir(nats.storeDir);
    if (dir) cleanupDir(dir);
  }, 30_000);

  it('a client with default options and daemons (SQLite, PostgreSQL) survive it: calls meanwhile fail NATS_UNAVAILABLE in their time, then work again', async () => {
    nats = await startNatsServer();
    dir = mkdtempSync(join(tmpdir(), 'lockmgr-outage-'));
    pg = await createTestDatabase('postgres');
    const stores = [
      { store: 'sqlite', db: join(dir, 'locks.sqlite'), prefix: `out${process.pid}s` },
      { store: 'postgres', db: pg.url, prefix: `out${process.pid}p` },
    ];
    const sides: { store: string; client: LockClient; held: Lock; daemon: RunningDaemon }[] = [];
    for (const s of stores) {
      const daemon = await startDaemon({ natsUrl: nats.url, db: s.db, prefix: s.prefix });
      daemons.push(daemon);
      // Default options: the default timeout (10 s), reconnecting forever.
      const client = await LockClient.connect({ servers: nats.url, prefix: s.prefix });
      clients.push(client);
      const held = await client.getLock('outage.held', { expires: 600 });
      sides.push({ store: s.store, client, held, daemon });
    }

    await nats.stop('SIGKILL');
    const killedAt = Date.now();

    // Calls made during the outage fail when their own time is up (10 s; a get adds its wait),
    // with NatsUnavailable saying that NATS is disconnected.
    const during = await Promise.all(
      sides.flatMap(({ store, client }) => [
        timed(() => client.isLocked('outage.held')).then((r) => ({ store, call: 'isLocked', limit: 10_000, ...r })),
        timed(() => client.getLock('outage.new', { wait: 2 })).then((r) => ({ store, call: 'getLock wait 2', limit: 12_000, ...r })),
        timed(() => client.setLock('outage.set')).then((r) => ({ store, call: 'setLock', limit: 10_000, ...r })),
      ]),
    );
    for (const d of during) {
      expect({ store: d.store, call: d.call, err: d.err }).toEqual({ store: d.store, call: d.call, err: expect.any(NatsUnavailable) });
      expect((d.err as LockError).code).toBe('NATS_UNAVAILABLE');
      expect((d.err as Error).message).toMatch(/NATS is disconnected \(the client is reconnecting/);
      // Ended by its own timeout, not hanging past it.
      expect({ call: d.call, withinItsTime: d.ms < d.limit + 5000 }).toEqual({ call: d.call, withinItsTime: true });
    }

    // Calls still running when NATS comes back go through.
    await sleep(killedAt + OUTAGE_MS - 8000 - Date.now());
    const late = sides.map(({ client }) => client.getLock('outage.late', { expires: 60, wait: 30 }));
    await sleep(killedAt + OUTAGE_MS - Date.now());
    for (const { daemon } of sides) expect(daemon.alive).toBe(true);
    await nats.restart();

    for (const [i, side] of sides.entries()) {
      const { store, client, held, daemon } = side;
      const lateLock = await late[i]!;
      expect({ store, late: lateLock.name }).toEqual({ store, late: 'outage.late' });
      // The same client object, not connected again; the same daemon process.
      expect((await client.lockInfo('outage.held'))?.token).toBe(held.token);
      const after = await client.getLock('outage.after');
      expect(after.token).toBeGreaterThan(held.token);
      expect(await client.unlock(after)).toBe(true);
      expect(daemon.alive).toBe(true);
    }
  }, 100_000);
});

describe('NATS errors reach callers as LockErrors with stable codes', () => {
  it('a user NATS does not allow on the prefix: PermissionDenied for calls and for events; a bad password too', async () => {
    const nats = await startNatsServer({
      config: `authorization {
  users = [
    { user: limited, password: limitedpw, permissions: { publish: { deny: ["perm.>"] }, subscribe: { deny: ["perm.events.>"] } } }
  ]
}
`,
    });
    const url = `nats://limited:limitedpw@127.0.0.1:${nats.port}`;
    const client = await LockClient.connect({ servers: url, prefix: 'perm', timeout: 3000 });
    try {
      for (const [call, fn] of [
        ['getLock', () => client.getLock('x')],
        ['getLock wait', () => client.getLock('x', { wait: 5 })],
        ['setLock', () => client.setLock('x', 'y')],
        ['unlock', () => client.unlock('x')],
        ['isLocked', () => client.isLocked('x')],
        ['listLocks', () => client.listLocks()],
        ['resetLocks', () => client.resetLocks()],
      ] as const) {
        const { err } = await timed(fn);
        expect({ call, err }).toEqual({ call, err: expect.any(PermissionDenied) });
        expect((err as LockError).code).toBe('PERMISSION_DENIED');
        expect(((err as LockError).cause as { code?: string }).code).toBe('PERMISSIONS_VIOLATION');
        expect((err as Error).message).toContain('perm.');
      }
      // Subscribing to events is refused too: the iteration ends with PermissionDenied.
      const stream = client.events();
      const { err } = await timed(async () => {
        for await (const e of stream) void e;
      });
      expect(err).toBeInstanceOf(PermissionDenied);
      expect(((err as LockError).cause as { code?: string }).code).toBe('PERMISSIONS_VIOLATION');

      const refused = await timed(() => LockClient.connect({ servers: `nats://limited:wrongpw@127.0.0.1:${nats.port}`, prefix: 'perm' }));
      expect(refused.err).toBeInstanceOf(PermissionDenied);
      expect((refused.err as LockError).code).toBe('PERMISSION_DENIED');
      expect((refused.err as Error).message).not.toContain('wrongpw');
    } finally {
      await client.close();
      await nats.stop();
      cleanupDir(nats.storeDir);
    }
  });

  it('a closed client: ConnectionClosed for every call and for events, without sending', async () => {
    const nats = await startNatsServer();
    try {
      const client = await LockClient.connect({ servers: nats.url, prefix: 'closed' });
      await client.close();
      for (const fn of [() => client.getLock('x'), () => client.setLock('x'), () => client.isLocked('x'), () => client.listLocks()]) {
        const { err } = await timed(fn);
        expect(err).toBeInstanceOf(ConnectionClosed);
        expect((err as LockError).code).toBe('CONNECTION_CLOSED');
      }
      expect(() => client.events()).toThrow(ConnectionClosed);
      await client.close(); // twice is fine
    } finally {
      await nats.stop();
      cleanupDir(nats.storeDir);
    }
  });

  it('reconnect: false, or nats.maxReconnectAttempts: the client gives up once NATS is gone, and calls fail ConnectionClosed', async () => {
    const nats = await startNatsServer();
    try {
      const never = await LockClient.connect({ servers: nats.url, prefix: 'gone', reconnect: false });
      const twice = await LockClient.connect({
        servers: nats.url,
        prefix: 'gone',
        nats: { maxReconnectAttempts: 2, reconnectTimeWait: 100 },
      });
      await nats.stop('SIGKILL');
      for (const client of [never, twice]) {
        await client.nc.closed();
        const { err } = await timed(() => client.getLock('x'));
        expect(err).toBeInstanceOf(ConnectionClosed);
        expect((err as LockError).code).toBe('CONNECTION_CLOSED');
        await client.close();
      }
      // A client left to its default keeps trying: its calls say NATS is away, not closed.
      const forever = await timed(() => LockClient.connect({ servers: nats.url, prefix: 'gone' }));
      expect(forever.err).toBeInstanceOf(NatsUnavailable);
    } finally {
      await nats.stop();
      cleanupDir(nats.storeDir);
    }
  });

  it('nothing listens where NATS should be: NatsUnavailable at connect, naming the server without its password', async () => {
    const port = await freePort();
    const { err } = await timed(() => LockClient.connect({ servers: `nats://someone:secretpw@127.0.0.1:${port}` }));
    expect(err).toBeInstanceOf(NatsUnavailable);
    expect((err as LockError).code).toBe('NATS_UNAVAILABLE');
    expect((err as Error).message).toContain(`127.0.0.1:${port}`);
    expect((err as Error).message).not.toContain('secretpw');
    expect((err as LockError).cause).toBeDefined();
  });
});
