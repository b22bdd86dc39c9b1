/**
 * The daemon as operators run it: the built `lockmgr daemon` process, its log lines, a drain on
 * SIGTERM under load, NATS credentials and reconnects, and two daemons sharing PostgreSQL.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { Cancelled, LockClient, NoDaemon } from '../../client/index';
import { runCli, startCli, until } from '../helpers/cli';
import { createTestDatabase, type TestDatabase } from '../helpers/databases';
import { startNatsOnPort } from '../helpers/events';
import { freePort, startNatsServer, type NatsServer } from '../helpers/nats-server';
import { spawnDaemon, type DaemonProcess } from '../helpers/stack';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
let seq = 0;
const uniquePrefix = () => `lc${process.pid}x${++seq}`;

function logLines(out: string): Record<string, unknown>[] {
  return out
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l));
}

describe('lockmgr daemon lifecycle (built binary)', () => {
  it('drains on SIGTERM under load: every request gets a reply, every acknowledged lock is in the database, exit 0', async () => {
    const nats = await startNatsServer();
    const db = await createTestDatabase('sqlite');
    const prefix = uniquePrefix();
    const daemon = await spawnDaemon({
      LOCKMGR_NATS_URL: nats.url,
      LOCKMGR_DB: db.url,
      LOCKMGR_PREFIX: prefix,
      LOCKMGR_EVENTS_STREAM: `EV_${prefix}`,
      LOCKMGR_DRAIN_TIMEOUT: '10',
    });
    const client = await LockClient.connect({ servers: nats.url, prefix, timeout: 15_000 });
    try {
      const acknowledged: string[] = [];
      const failures: unknown[] = [];
      let noDaemon = 0;
      let stop = false;
      // 64 clients in a closed loop, each setting 10 new locks per request, until the daemon is gone.
      const worker = async (w: number) => {
        for (let i = 0; !stop; i++) {
          const names = Array.from({ length: 10 }, (_, k) => `w${w}.r${i}.n${k}`);
          try {
            await client.setLock(names, { timeout: 3600 });
            acknowledged.push(...names);
          } catch (err) {
            if (err instanceof NoDaemon) noDaemon += 1;
            else failures.push(err);
            return;
          }
        }
      };
      const workers = Array.from({ length: 64 }, (_, w) => worker(w));
      await until(() => acknowledged.length >= 2000, 15_000, 'load to build up');
      // Requests certain to be in flight at the signal: gets waiting for a held lock. SQLite
      // batches finish within one turn of the event loop, so the signal never falls inside one.
      await client.getLock('drain.held', { expires: 3600 });
      acknowledged.push('drain.held');
      const giveUp = new AbortController();
      const waiting = Array.from({ length: 5 }, () =>
        client.getLock('drain.held', { wait: 60, signal: giveUp.signal }).then(
          () => 'granted',
          (err: unknown) => err,
        ),
      );
      await new Promise((r) => setTimeout(r, 300));
      daemon.child.kill('SIGTERM');
      const code = await daemon.exited;
      stop = true;
      await Promise.all(workers);

      expect(code).toBe(0);
      // Every request got an answer: a result, or (sent after the endpoints stopped) "no responders".
      expect(failures).toEqual([]);
      expect(noDaemon).toBe(64);
      const lines = logLines(daemon.output());
      const stopping = lines.find((l) => String(l.message).startsWith('stopping: no new requests'));
      expect(stopping).toBeDefined();
      expect(Number(stopping!.inFlight)).toBeGreaterThanOrEqual(5);
      expect(lines.some((l) => l.message === 'stopped')).toBe(true);
      // The waiting gets did not hold up the stop, and were handed back (DAEMON_STOPPING), not
      // answered LOCKED: their calls go on asking for a daemon, within their wait.
      const early = await Promise.race([Promise.all(waiting).then(() => 'settled'), sleep(1000).then(() => 'still asking')]);
      expect(early).toBe('still asking');
      giveUp.abort();
      for (const outcome of await Promise.all(waiting)) expect(outcome).toBeInstanceOf(Cancelled);

      const sqlite = new BetterSqlite3(db.url, { readonly: true });
      const stored = new Set((sqlite.prepare('SELECT name FROM lockmgr_locks').all() as { name: string }[]).map((r) => r.name));
      sqlite.close();
      const missing = acknowledged.filter((n) => !stored.has(n));
      expect(missing).toEqual([]);
      expect(acknowledged.length).toBeGreaterThanOrEqual(2000);
    } finally {
      await client.close().catch(() => undefined);
      if (daemon.child.exitCode === null) await daemon.stop('SIGKILL');
      await nats.stop();
    }
  });

  it('NATS away at start: it says so, keeps retrying (never exits), and serves once NATS is up', async () => {
    const port = await freePort();
    const db = await createTestDatabase('sqlite');
    const prefix = uniquePrefix();
    const daemon = startCli(['daemon', '--log-format', 'json'], {
      env: {
        LOCKMGR_NATS_URL: `nats://127.0.0.1:${port}`,
        LOCKMGR_DB: db.url,
        LOCKMGR_PREFIX: prefix,
        LOCKMGR_EVENTS_STREAM: `EV_${prefix}`,
      },
      timeoutMs: 60_000,
    });
    let nats: { stop(): Promise<void> } | undefined;
    let client: LockClient | undefined;
    try {
      // Attempts at 0 s and ~1 s have failed: the daemon waits, alive, for the next one.
      await until(() => /cannot reach NATS at .*retrying in 2s \(attempt 2\)/.test(daemon.stdout()), 10_000, 'a second attempt');
      expect(daemon.child.exitCode).toBeNull();
      nats = await startNatsOnPort(port, { jetstream: true });
      await until(() => /"message":"ready"/.test(daemon.stdout()), 30_000, 'the daemon to be ready');
      client = await LockClient.connect({ servers: `nats://127.0.0.1:${port}`, prefix });
      expect((await client.getLock('after-outage')).name).toBe('after-outage');
    } finally {
      await client?.close();
      daemon.child.kill('SIGTERM');
      const { code } = await daemon.done;
      expect(code).toBe(0);
      await nats?.stop();
    }
  });

  describe('logs, NATS credentials and reconnects', () => {
    let port: number;
    let storeDir: string;
    let natsProc: ChildProcess | undefined;
    let db: TestDatabase;
    let daemon: DaemonProcess | undefined;
    const prefix = uniquePrefix();
    const NATS_PASS = 'nats-s3cret';
    const PG_PASS = 'pg-s3cret';

    const startAuthNats = async () => {
      natsProc = spawn(
        'nats-server',
        ['-a', '127.0.0.1', '-p', String(port), '--user', 'lockmgr', '--pass', NATS_PASS, '-js', '-sd', storeDir],
        {
          stdio: 'ignore',
        },
      );
      const probe = await LockClient.connect({
        servers: `nats://127.0.0.1:${port}`,
        nats: { user: 'lockmgr', pass: NATS_PASS, maxReconnectAttempts: 40, reconnectTimeWait: 50, waitOnFirstConnect: true },
      });
      await probe.close();
    };
    const stopAuthNats = async () => {
      if (!natsProc || natsProc.exitCode !== null) return;
      const exited = new Promise((r) => natsProc!.once('exit', r));
      natsProc.kill('SIGTERM');
      await exited;
    };

    beforeAll(async () => {
      port = await freePort();
      storeDir = mkdtempSync(join(tmpdir(), 'lockmgr-authnats-'));
      await startAuthNats();
      db = await createTestDatabase('postgres');
    });
    afterAll(async () => {
      if (daemon && daemon.child.exitCode === null) await daemon.stop('SIGKILL');
      await stopAuthNats();
      await db?.drop();
    });

    it('logs each lifecycle step and each request at debug, never a password or a token; survives a NATS restart; exits 0 on SIGTERM', async () => {
      // Trust auth ignores the password, but it must never be printed.
      const pgUrl = db.url.replace('postgres://postgres@', `postgres://postgres:${PG_PASS}@`);
      const natsUrl = `nats://lockmgr:${NATS_PASS}@127.0.0.1:${port}`;
      daemon = await spawnDaemon(
        { LOCKMGR_NATS_URL: natsUrl, LOCKMGR_DB: pgUrl, LOCKMGR_PREFIX: prefix, LOCKMGR_EVENTS_STREAM: `EV_${prefix}` },
        ['--log-level', 'debug'],
      );
      const conn = ['--nats-url', natsUrl, '--prefix', prefix];

      // The CLI authenticates with the credentials in the URL; without them NATS refuses it.
      const set = await runCli(['set-lock', 'audit.a', 'audit.b', '--json', ...conn]);
      expect(set.code).toBe(0);
      const tokens: number[] = JSON.parse(set.stdout).locks.map((l: { token: number }) => l.token);
      const denied = await runCli(['ping', '--nats-url', `nats://127.0.0.1:${port}`, '--prefix', prefix]);
      expect(denied.code).toBe(69);
      expect(denied.stderr).toMatch(
        /^lockmgr: NATS at nats:\/\/127\.0\.0\.1:\d+ refused the connection \('Authorization Violation'\): give credentials/,
      );

      // Restart NATS under the daemon: it logs the disconnect and the reconnect and serves again.
      await stopAuthNats();
      await until(() => daemon!.output().includes('NATS disconnected'), 10_000, 'the disconnect to be logged');
      await startAuthNats();
      await until(() => daemon!.output().includes('NATS reconnected'), 15_000, 'the reconnect to be logged');
      const after = await runCli(['list-locks', '--json', ...conn]);
      expect(after.code).toBe(0);
      expect(JSON.parse(after.stdout).locks.map((l: { name: string }) => l.name)).toEqual(['audit.a', 'audit.b']);
      expect((await runCli(['clear-lock', 'audit.a', ...conn])).code).toBe(0);

      daemon.child.kill('SIGTERM');
      expect(await daemon.exited).toBe(0);

      const out = daemon.output();
      expect(out).not.toContain(PG_PASS);
      expect(out).not.toContain(NATS_PASS);
      const lines = logLines(out);
      const messages = lines.map((l) => String(l.message));
      const order = [
        'starting lockmgr daemon',
        'store ready',
        'serving',
        'ready',
        'NATS disconnected; reconnecting',
        'NATS reconnected',
        'SIGTERM received: draining (send it again to exit at once)',
        'stopped',
      ];
      let last = -1;
      for (const m of order) {
        const at = messages.findIndex((x, i) => i > last && x === m);
        expect([m, at > last]).toEqual([m, true]);
        last = at;
      }
      const start = lines.find((l) => l.message === 'starting lockmgr daemon')!;
      expect((start.config as Record<string, unknown>).db).toContain(':***@');
      expect((start.config as Record<string, unknown>).natsUrl).toBe(`nats://***@127.0.0.1:${port}`);
      const serving = lines.find((l) => l.message === 'serving')!;
      expect(serving.subjects).toEqual(expect.arrayContaining([`${prefix}.set`, `${prefix}.get`, `${prefix}.unlock`, `${prefix}.renew`]));
      // One debug line per request, naming the endpoint, and no token anywhere in the log.
      const requests = lines.filter((l) => l.message === 'request');
      // set-lock renews by default and clear-lock releases by name: the admin endpoints.
      expect(requests.filter((l) => l.endpoint === 'admin_set').length).toBe(1);
      expect(requests.filter((l) => l.endpoint === 'list').length).toBe(1);
      expect(requests.filter((l) => l.endpoint === 'admin_unlock').length).toBe(1);
      for (const l of lines) expect(Object.keys(l)).not.toContain('token');
      for (const t of tokens) expect(out).not.toMatch(new RegExp(`"token":\\s*${t}\\b`));
    });
  });

  // Two daemons and seven CLI runs, each a Node process starting up: on a busy host that alone can
  // take longer than the default 30 s.
  it('two daemons share one PostgreSQL database (the docker compose layout) and either can stop', async () => {
    const nats: NatsServer = await startNatsServer();
    const db = await createTestDatabase('postgres');
    const prefix = uniquePrefix();
    const env = { LOCKMGR_NATS_URL: nats.url, LOCKMGR_DB: db.url, LOCKMGR_PREFIX: prefix, LOCKMGR_EVENTS_STREAM: `EV_${prefix}` };
    const conn = ['--nats-url', nats.url, '--prefix', prefix];
    const [a, b] = await Promise.all([spawnDaemon(env), spawnDaemon(env)]);
    try {
      const ping = await runCli(['ping', '--json', ...conn]);
      expect(ping.code).toBe(0);
      expect(JSON.parse(ping.stdout).daemons).toHaveLength(2);
      expect((await runCli(['set-lock', 'shared', ...conn])).code).toBe(0);
      // Whichever daemon answers, the lock is held: mutual exclusion holds across both.
      for (let i = 0; i < 4; i++) {
        const r = await runCli(['set-lock', '-e', 'shared', ...conn]);
        expect(r.code).toBe(2);
      }
      a.child.kill('SIGTERM');
      expect(await a.exited).toBe(0);
      const list = await runCli(['list-locks', '--json', ...conn]);
      expect(list.code).toBe(0);
      expect(JSON.parse(list.stdout).locks.map((l: { name: string }) => l.name)).toEqual(['shared']);
    } finally {
      await Promise.all([a.stop(), b.stop()]);
      await nats.stop();
      await db.drop();
    }
  }, 90_000);
});
