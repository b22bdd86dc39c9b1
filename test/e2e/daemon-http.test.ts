/**
 * The built `lockmgr daemon` with its HTTP listener, as an operator starts it: the flag, the log
 * line naming the address, the endpoints while it serves and after a lock command, the listener
 * gone with the process; a bad address and a taken port refuse the start.
 */
import { createServer, type Server } from 'node:net';
import { runCli } from '../helpers/cli';
import { createTestDatabase, type TestDatabase } from '../helpers/databases';
import { httpGet, scrape } from '../helpers/http-metrics';
import { startNatsServer, type NatsServer } from '../helpers/nats-server';
import { spawnDaemon } from '../helpers/stack';

let nats: NatsServer;
let db: TestDatabase;
let seq = 0;
const env = () => {
  const prefix = `hd${process.pid}x${++seq}`;
  return { LOCKMGR_NATS_URL: nats.url, LOCKMGR_DB: db.url, LOCKMGR_PREFIX: prefix, LOCKMGR_EVENTS_STREAM: `EV_${prefix}` };
};

beforeAll(async () => {
  nats = await startNatsServer();
  db = await createTestDatabase('sqlite');
});
afterAll(async () => {
  await nats?.stop();
  await db?.drop();
});

describe('lockmgr daemon --http-listen (built binary)', () => {
  it('logs where it serves; /healthz, /readyz and /metrics answer and follow a lock command; the listener ends with the process', async () => {
    const e = env();
    const daemon = await spawnDaemon(e, ['--http-listen', '127.0.0.1:0']);
    let url: string | undefined;
    try {
      const line = daemon
        .output()
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as { message: string; url?: string })
        .find((l) => l.message === 'serving HTTP');
      expect(line?.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      url = line!.url!;
      expect(await httpGet(url, '/healthz')).toMatchObject({ status: 200, text: 'ok\n' });
      expect(await httpGet(url, '/readyz')).toMatchObject({ status: 200, text: 'ready\n' });
      const before = await scrape(url);
      expect(before.value('lockmgr_requests_total', { endpoint: 'set', outcome: 'ok', prefix: e.LOCKMGR_PREFIX })).toBe(0);
      expect(before.value('lockmgr_locks_held')).toBe(0);

      const set = await runCli(['set-lock', 'e2e.a', 'e2e.b', '--nats-url', nats.url, '--prefix', e.LOCKMGR_PREFIX]);
      expect(set.code).toBe(0);
      const after = await scrape(url);
      // set-lock renews by default: the admin endpoint.
      expect(after.value('lockmgr_requests_total', { endpoint: 'admin_set', outcome: 'ok' })).toBeGreaterThanOrEqual(1);
      expect(after.value('lockmgr_request_duration_seconds_count', { endpoint: 'admin_set' })).toBeGreaterThanOrEqual(1);
      expect(after.value('lockmgr_locks_held')).toBe(2);
    } finally {
      expect(await daemon.stop('SIGTERM')).toBe(0);
    }
    // Nothing answers there any more.
    await expect(httpGet(url!, '/healthz')).rejects.toThrow();
  });

  it('refuses an address that is not host:port (exit 78), and a port another process holds (exit 1), naming it', async () => {
    const bad = await runCli(['daemon', '--http-listen', '127.0.0.1'], { env: env() });
    expect(bad.code).toBe(78);
    expect(bad.stderr).toMatch(/flag --http-listen: httpListen must be host:port/);

    const taken: Server = createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    const port = (taken.address() as { port: number }).port;
    try {
      const busy = await runCli(['daemon', '--log-format', 'json'], { env: { ...env(), LOCKMGR_HTTP_LISTEN: `127.0.0.1:${port}` } });
      expect(busy.code).toBe(1);
      expect(busy.stdout).toContain(`daemon failed to start: cannot listen for HTTP on 127.0.0.1:${port} (httpListen)`);
      expect(busy.stdout).toContain('EADDRINUSE');
    } finally {
      await new Promise((r) => taken.close(r));
    }
  });
});
