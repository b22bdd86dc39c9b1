/**
 * The daemon process (the built CLI) starting before its database: PostgreSQL not listening yet
 * is waited for, with one log line, and a stop while waiting is clean; what waiting cannot cure
 * (a missing database or role, a SQLite path that cannot be made) fails the start at once.
 */
import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LockClient } from '../../client/index';
import { until } from '../helpers/cli';
import { createTestDatabase, type TestDatabase } from '../helpers/databases';
import { launchDaemon, tryStartDaemon } from '../helpers/daemon-process';
import { cleanupDir, freePort, startNatsServer, type NatsServer } from '../helpers/nats-server';
import { startTcpProxy, type TcpProxy } from '../helpers/tcp-proxy';

let seq = 0;
const uniquePrefix = () => `dbs${process.pid}x${++seq}`;

interface LogLine {
  level: string;
  message: string;
}
function logLines(out: string): LogLine[] {
  return out
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as LogLine);
}

/** `url` with its port (and password: trust auth ignores it, the log must hide it) replaced. */
function viaPort(url: string, port: number): string {
  const u = new URL(url);
  u.port = String(port);
  u.password = 'not-to-be-logged';
  return u.toString();
}

function withUser(url: string, user: string): string {
  const u = new URL(url);
  u.username = user;
  return u.toString();
}

describe('lockmgr daemon: the database at start (built binary)', () => {
  let nats: NatsServer;
  let db: TestDatabase;
  beforeAll(async () => {
    nats = await startNatsServer();
    db = await createTestDatabase('postgres');
  });
  afterAll(async () => {
    await nats?.stop();
    if (nats) cleanupDir(nats.storeDir);
    await db?.drop();
  });

  it('PostgreSQL not listening yet: one line says so, the daemon keeps trying, and serves once it can connect', async () => {
    const port = await freePort();
    const url = viaPort(db.url, port);
    const prefix = uniquePrefix();
    const daemon = launchDaemon({ natsUrl: nats.url, db: url, prefix, env: { LOCKMGR_LOG_LEVEL: 'debug' } });
    let proxy: TcpProxy | undefined;
    let client: LockClient | undefined;
    try {
      const masked = `postgres://postgres:***@127.0.0.1:${port}/${new URL(db.url).pathname.slice(1)}`;
      const waiting = `waiting for the database at ${masked}: connect ECONNREFUSED 127.0.0.1:${port}; retrying`;
      // Several attempts have failed (debug lines), and only the first was told at warn level.
      await until(
        () => logLines(daemon.stdout()).filter((l) => l.message.startsWith('the database is still unreachable')).length >= 3,
        20_000,
        'more attempts',
      );
      expect(daemon.alive).toBe(true);
      expect(logLines(daemon.stdout()).filter((l) => l.level !== 'debug' && l.message.includes('database'))).toEqual([
        { level: 'warn', message: waiting, timestamp: expect.any(String) },
      ]);

      // The database appears on that port.
      const target = new URL(db.url);
      proxy = await startTcpProxy({ host: target.hostname, port: Number(target.port || 5432) }, port);
      await until(() => /"message":"ready"/.test(daemon.stdout()), 30_000, 'the daemon to be ready');
      client = await LockClient.connect({ servers: nats.url, prefix });
      expect((await client.getLock('after-the-database')).name).toBe('after-the-database');

      const messages = logLines(daemon.stdout()).map((l) => l.message);
      expect(messages.filter((m) => m === waiting)).toHaveLength(1);
      expect(messages.indexOf('connected to the database')).toBeGreaterThan(messages.indexOf(waiting));
      expect(messages.indexOf('store ready')).toBeGreaterThan(messages.indexOf('connected to the database'));
      expect(daemon.output()).not.toContain('not-to-be-logged');
    } finally {
      await client?.close();
      await daemon.stop();
      await proxy?.close();
    }
    expect(await daemon.exited).toBe(0);
  }, 60_000);

  it('SIGTERM while waiting for the database: no further attempt, exit 0 without a failure', async () => {
    const port = await freePort();
    const daemon = launchDaemon({
      natsUrl: nats.url,
      db: viaPort(db.url, port),
      prefix: uniquePrefix(),
      env: { LOCKMGR_LOG_LEVEL: 'debug' },
    });
    await until(() => /waiting for the database at/.test(daemon.stdout()), 20_000, 'the daemon to wait');
    await until(() => /the database is still unreachable/.test(daemon.stdout()), 20_000, 'a second attempt');
    daemon.signal('SIGTERM');
    expect(await daemon.exited).toBe(0);
    const messages = logLines(daemon.stdout()).map((l) => l.message);
    const signalled = messages.indexOf('SIGTERM received: draining (send it again to exit at once)');
    expect(signalled).toBeGreaterThan(0);
    // The wait was abandoned, not sat out: no attempt after the signal.
    expect(messages.slice(signalled).filter((m) => m.startsWith('the database is still unreachable'))).toEqual([]);
    expect(messages[messages.length - 1]).toBe('stopped');
    expect(messages.some((m) => m.includes('failed to start'))).toBe(false);
    expect(daemon.stderr()).toBe('');
  });

  it('what waiting cannot cure fails at once, with a line saying what: a missing database or role, a SQLite path that cannot be made', async () => {
    const cases: { db: string; says: RegExp }[] = [
      { db: `${db.url}_missing`, says: /^daemon failed to start: database "\w+_missing" does not exist$/ },
      { db: withUser(db.url, 'lockmgr_no_such_role'), says: /role "lockmgr_no_such_role" does not exist/ },
    ];
    // A folder that cannot be made: its parent is a file.
    const file = join(tmpdir(), `lockmgr-not-a-dir-${process.pid}`);
    writeFileSync(file, '');
    cases.push({ db: join(file, 'sub', 'locks.sqlite'), says: /cannot create the folder of SQLite database .*: ENOTDIR/ });
    for (const c of cases) {
      const r = await tryStartDaemon({ natsUrl: nats.url, db: c.db, prefix: uniquePrefix() });
      expect(r.ready).toBe(false);
      if (r.ready) continue;
      expect({ db: c.db, code: r.code }).toEqual({ db: c.db, code: 1 });
      expect(r.message).toMatch(c.says);
      expect(r.output).not.toContain('waiting for the database');
    }
    cleanupDir(file);
  });
});
