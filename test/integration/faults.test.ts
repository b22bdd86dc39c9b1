/**
 * Faults, caused for real: no daemon on the prefix, a daemon that never answers, a daemon that
 * stops, and a lock database that goes away (PostgreSQL refusing connections; a SQLite file the
 * daemon can no longer write, or that another writer holds). Requests then fail at once with a
 * coded error (NoDaemon, StoreUnavailable), never by running into the request timeout, and the
 * same daemon serves again once the database is back, with every lock it acknowledged before.
 * A PostgreSQL cut off without a reset is given up within the statement timeout; a session ended
 * in the middle of a transaction fails that transaction only.
 */
import { eventually } from '../helpers/cli';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import BetterSqlite3 from 'better-sqlite3';
import { Client } from 'pg';
import { LockClient, NoDaemon, RequestTimeout, StoreUnavailable, type Lock } from '../../client/index';
import { PostgresStore } from '../../daemon/store/postgres/postgres-store';
import { StoreUnavailable as StoreUnavailableError } from '../../daemon/store/store';
import { createTestDatabase, PG_ADMIN_URL, STORES } from '../helpers/databases';
import { sqlQuery } from '../helpers/events';
import { startStack, type Stack } from '../helpers/stack';
import { startTcpProxy } from '../helpers/tcp-proxy';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Run `fn`; resolve with what it threw and how long it took. */
async function failure(fn: () => Promise<unknown>): Promise<{ err: unknown; ms: number }> {
  const start = Date.now();
  try {
    await fn();
  } catch (err) {
    return { err, ms: Date.now() - start };
  }
  throw new Error('expected the call to fail, but it succeeded');
}

/** Every kind of request once; each must fail with StoreUnavailable, promptly. */
async function expectStoreUnavailable(client: LockClient, name: string, held: Lock): Promise<void> {
  const calls: [string, () => Promise<unknown>][] = [
    ['getLock', () => client.getLock(`${name}.new`)],
    ['getLock with wait', () => client.getLock(`${name}.waited`, { wait: 5 })],
    ['setLock', () => client.setLock(`${name}.a`, `${name}.b`)],
    ['isLocked', () => client.isLocked(held.name)],
    ['renewLock', () => client.renewLock(held)],
    ['unlock', () => client.unlock(`${name}.other`)],
    ['listLocks', () => client.listLocks()],
  ];
  for (const [call, fn] of calls) {
    const { err, ms } = await failure(fn);
    expect({ call, err }).toEqual({ call, err: expect.any(StoreUnavailable) });
    expect((err as StoreUnavailable).code).toBe('STORE_UNAVAILABLE');
    // An answer, not the client's 10 s request timeout running out.
    expect({ call, fast: ms < 4000 }).toEqual({ call, fast: true });
  }
}

describe.each(STORES)('faults on %s', (store) => {
  let stack: Stack;
  let seq = 0;
  const uniq = (base: string) => `${base}_${store}_${++seq}`;

  beforeAll(async () => {
    stack = await startStack({ store });
  });
  afterAll(async () => {
    await stack?.stop();
  });

  it('no daemon on the prefix: the call asks again until its timeout, then NoDaemon', async () => {
    const nobody = new LockClient(stack.client.nc, { prefix: `${stack.prefix}_nobody`, timeout: 600 });
    for (const fn of [
      () => nobody.getLock('x'),
      () => nobody.setLock('x'),
      () => nobody.isLocked('x'),
      () => nobody.unlock('x'),
      () => nobody.cleanLocks(),
    ]) {
      const { err, ms } = await failure(fn);
      expect(err).toBeInstanceOf(NoDaemon);
      expect((err as NoDaemon).code).toBe('NO_DAEMON');
      expect((err as Error).message).toContain(`${stack.prefix}_nobody`);
      expect(ms).toBeGreaterThanOrEqual(550);
      expect(ms).toBeLessThan(1600);
    }
  });

  it('a daemon that starts while a call asks again is found: the call succeeds', async () => {
    const prefix = `${stack.prefix}_late`;
    const waiting = new LockClient(stack.client.nc, { prefix, timeout: 8000 });
    const call = waiting.getLock(uniq('late'));
    await sleep(400);
    // A database of its own: a SQLite file serves one daemon.
    const own = await createTestDatabase(store);
    const late = await stack.startDaemon({ prefix, eventsStream: `EV_${prefix}`, db: own.url });
    try {
      expect((await call).token).toBeGreaterThan(0);
    } finally {
      await late.stop(2000);
      stack.daemons.splice(stack.daemons.indexOf(late), 1);
      await own.drop();
    }
  });

  it('a responder that never answers: RequestTimeout after the client timeout', async () => {
    const prefix = `${stack.prefix}_mute`;
    const sub = stack.client.nc.subscribe(`${prefix}.get`, { callback: () => undefined });
    try {
      const mute = new LockClient(stack.client.nc, { prefix, timeout: 300 });
      const { err, ms } = await failure(() => mute.getLock('x'));
      expect(err).toBeInstanceOf(RequestTimeout);
      expect((err as RequestTimeout).code).toBe('REQUEST_TIMEOUT');
      expect(ms).toBeGreaterThanOrEqual(290);
      expect(ms).toBeLessThan(3000);
    } finally {
      sub.unsubscribe();
    }
  });

  it('the daemon stops: NoDaemon once the call times out; a new daemon on the same database has every acknowledged lock', async () => {
    const client = stack.client;
    const kept = await client.getLock(uniq('kept'), { expires: 600 });
    const forever = await client.getLock(uniq('forever'), { expires: null });
    const set = await client.setLock(uniq('set_a'), uniq('set_b'));
    await stack.daemons[0]!.stop();
    const brief = new LockClient(client.nc, { prefix: stack.prefix, timeout: 500 });
    const { err, ms } = await failure(() => brief.isLocked(kept.name));
    expect(err).toBeInstanceOf(NoDaemon);
    expect(ms).toBeLessThan(1500);

    await stack.startDaemon();
    for (const lock of [kept, forever, ...set.locks]) {
      const row = await client.lockInfo(lock.name);
      expect(row?.token).toBe(lock.token);
      expect(row?.locked_until?.getTime() ?? null).toBe(lock.locked_until?.getTime() ?? null);
    }
    // Tokens keep growing across the restart.
    const next = await client.getLock(uniq('after_restart'));
    expect(next.token).toBeGreaterThan(Math.max(kept.token, forever.token, ...set.locks.map((l) => l.token)));
  });
});

describe('PostgreSQL going away under a running daemon', () => {
  let stack: Stack;
  let admin: Client;
  let dbName: string;

  beforeAll(async () => {
    stack = await startStack({ store: 'postgres' });
    dbName = new URL(stack.db.url).pathname.slice(1);
    admin = new Client({ connectionString: PG_ADMIN_URL });
    await admin.connect();
  });
  afterAll(async () => {
    await admin?.query(`ALTER DATABASE ${dbName} ALLOW_CONNECTIONS true`).catch(() => undefined);
    await admin?.end();
    await stack?.stop();
  });

  it('requests get StoreUnavailable (not a timeout); once it is back the same daemon serves again, acknowledged locks intact', async () => {
    const client = stack.client;
    const daemon = stack.daemons[0]!;
    const held = await client.getLock('pg_fault.held', { expires: 600 });
    const forever = await client.setLock('pg_fault.forever', { timeout: null });

    await admin.query(`ALTER DATABASE ${dbName} ALLOW_CONNECTIONS false`);
    try {
      await admin.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`, [dbName]);
      await expectStoreUnavailable(client, 'pg_fault', held);
      // Still down a little later (the pool does not paper over it), still a prompt answer.
      await sleep(500);
      await expectStoreUnavailable(client, 'pg_fault2', held);
    } finally {
      await admin.query(`ALTER DATABASE ${dbName} ALLOW_CONNECTIONS true`);
    }

    // The same daemon, not restarted.
    expect(stack.daemons).toHaveLength(1);
    expect(stack.daemons[0]).toBe(daemon);
    const row = await eventually(() => client.lockInfo(held.name), 10_000);
    expect(row?.token).toBe(held.token);
    expect(row?.locked_until?.getTime()).toBe(held.locked_until?.getTime());
    expect((await client.lockInfo('pg_fault.forever'))?.token).toBe(forever.locks[0]!.token);
    // Nothing asked for during the outage was done.
    expect(await client.isLocked('pg_fault.new')).toBe(false);
    expect(await client.isLocked('pg_fault.a')).toBe(false);
    // And it takes new work.
    const fresh = await client.getLock('pg_fault.new');
    expect(fresh.token).toBeGreaterThan(held.token);
    expect(await client.unlock(held)).toBe(true);
  });
});

describe('PostgreSQL cut off without a word (a network that drops every packet)', () => {
  it('requests get StoreUnavailable within the statement timeout, not the client timeout; restored, the daemon serves, nothing refused was done', async () => {
    const stack = await startStack({ store: 'postgres', daemons: 0 });
    const pg = new URL(stack.db.url);
    const proxy = await startTcpProxy({ host: pg.hostname, port: Number(pg.port || 5432) });
    try {
      pg.port = String(proxy.port);
      await stack.startDaemon({ db: pg.toString(), dbStatementTimeout: 1 });
      const client = stack.client; // timeout 10 s
      const held = await client.getLock('bh.held', { expires: 600 });

      proxy.blackhole();
      for (const [call, fn] of [
        ['getLock', () => client.getLock('bh.new')],
        ['isLocked', () => client.isLocked(held.name)],
        ['unlock', () => client.unlock(held)],
      ] as const) {
        const { err, ms } = await failure(fn);
        expect({ call, err }).toEqual({ call, err: expect.any(StoreUnavailable) });
        // dbStatementTimeout (1 s) and the daemon's 0.25 s margin, far from the client's 10 s.
        expect({ call, ms: ms < 2000 }).toEqual({ call, ms: true });
      }
      proxy.restore();

      const row = await eventually(() => client.lockInfo(held.name), 10_000);
      expect(row?.token).toBe(held.token);
      expect(await client.isLocked('bh.new')).toBe(false);
      expect((await client.getLock('bh.new')).token).toBeGreaterThan(held.token);
    } finally {
      proxy.restore();
      await stack.stop();
      await proxy.close();
    }
  });
});

describe('PostgreSQL ending a session in the middle of a transaction', () => {
  it('fails that transaction with StoreUnavailable; the process lives on and the next transaction works', async () => {
    const tdb = await createTestDatabase('postgres');
    const store = new PostgresStore({ url: tdb.url, daemonId: 'fault' });
    try {
      await store.migrate();
      const ended = store.transaction(async (tx) => {
        await tx.selectLive('x'); // the transaction is open on its connection
        // Its session is ended between two statements (an administrator, a failover, a restart).
        const killed = await sqlQuery(
          tdb,
          `SELECT pg_terminate_backend(pid) AS done FROM pg_stat_activity
            WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'idle in transaction'`,
        );
        expect(killed).toEqual([{ done: true }]);
        await sleep(100); // the server's notice of the end reaches the client while it is idle
        return tx.selectLive('y');
      });
      await expect(ended).rejects.toBeInstanceOf(StoreUnavailableError);
      // An 'error' event nobody listens to would have ended this process before here.
      expect((await store.transaction((tx) => tx.selectLive('z'))).value).toBeNull();
    } finally {
      await store.close();
      await tdb.drop();
    }
  });
});

describe('SQLite faults under a running daemon', () => {
  let stack: Stack;
  const files = () => [stack.db.url, `${stack.db.url}-wal`].filter((f) => existsSync(f));

  beforeAll(async () => {
    stack = await startStack({ store: 'sqlite' });
  });
  afterAll(async () => {
    if (stack) execFileSync('chattr', ['-i', ...files()]);
    await stack?.stop();
  });

  it('the database file cannot be written (immutable): StoreUnavailable; writable again: the same daemon serves', async () => {
    const client = stack.client;
    const daemon = stack.daemons[0]!;
    const held = await client.getLock('sqlite_fault.held', { expires: 600 });
    // chattr +i makes even writes through open descriptors fail (EPERM), for root too.
    execFileSync('chattr', ['+i', ...files()]);
    try {
      const { err, ms } = await failure(() => client.setLock('sqlite_fault.a', 'sqlite_fault.b'));
      expect(err).toBeInstanceOf(StoreUnavailable);
      expect(ms).toBeLessThan(4000);
      const again = await failure(() => client.getLock('sqlite_fault.c'));
      expect(again.err).toBeInstanceOf(StoreUnavailable);
    } finally {
      execFileSync('chattr', ['-i', ...files()]);
    }
    expect(stack.daemons[0]).toBe(daemon);
    const row = await eventually(() => client.lockInfo(held.name), 10_000);
    expect(row?.token).toBe(held.token);
    expect(await client.isLocked('sqlite_fault.a')).toBe(false);
    const fresh = await client.getLock('sqlite_fault.c');
    expect(fresh.token).toBeGreaterThan(held.token);
  });

  it('another process holds the write lock: StoreUnavailable after the busy timeout; released: served again', async () => {
    const client = stack.client;
    const held = await client.getLock('sqlite_busy.held', { expires: 600 });
    const other = new BetterSqlite3(stack.db.url);
    try {
      other.exec('BEGIN IMMEDIATE');
      const { err, ms } = await failure(() => client.getLock('sqlite_busy.new'));
      expect(err).toBeInstanceOf(StoreUnavailable);
      expect(ms).toBeLessThan(8000);
      other.exec('ROLLBACK');
    } finally {
      other.close();
    }
    expect((await eventually(() => client.lockInfo(held.name), 10_000))?.token).toBe(held.token);
    await expect(client.getLock('sqlite_busy.new')).resolves.toMatchObject({ name: 'sqlite_busy.new' });
  });
});
