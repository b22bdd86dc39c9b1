/**
 * `lockmgr events` and the auditor example, run as built programs (dist/) against a real daemon
 * over a real nats-server with JetStream.
 */
import { spawn } from 'node:child_process';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { LockEvent } from '../../shared/events';
import { LockClient } from '../../client/index';
import { cleanEnv, runCli, startCli } from '../helpers/cli';
import { createTestDatabase } from '../helpers/databases';
import { outboxCount, readStream, sqlQuery, waitFor } from '../helpers/events';
import { ROOT, startStack, type Stack } from '../helpers/stack';

const AUDITOR = join(ROOT, 'dist', 'examples', 'auditor.js');
const HOST = hostname();

function runAuditor(env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [AUDITOR], { env: cleanEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d) => (stdout += d));
    child.stderr!.on('data', (d) => (stderr += d));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('lockmgr events and the auditor example (built programs, real daemon)', () => {
  let stack: Stack;
  let conn: string[];
  let stream: string;
  const cli = (args: string[]) => runCli(['events', ...args, ...conn]);

  beforeAll(async () => {
    stack = await startStack({ store: 'sqlite' });
    stream = `EV_${stack.prefix}`;
    conn = ['--nats-url', stack.nats.url, '--prefix', stack.prefix, '--stream', stream];
    const c = stack.client;
    await c.setLock('cli.a', 'cli.b', { timeout: 60, locked_by: 'web-1', process_id: 123 });
    await c.renewLock('cli.a', { expires: 120 });
    await c.unlock('cli.b');
    await c.getLock('orders.1', { expires: 0 });
    await c.getLock('orders.2.x', { expires: 300 });
    await waitFor(async () => (await outboxCount(stack.db)) === 0, 5000, 'events to be relayed');
  });
  afterAll(async () => {
    await stack?.stop();
  });

  it('--json replays the whole stream, one event payload per line', async () => {
    const r = await cli(['--json']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const lines = r.stdout
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l) as LockEvent);
    const stored = await readStream(stack.nats.url, stream);
    expect(lines).toEqual(stored.map((s) => s.event));
    expect(lines.map((e) => `${e.type} ${e.lock.name}`)).toEqual([
      'created cli.a',
      'created cli.b',
      'renewed cli.a',
      'released cli.b',
      'created orders.1',
      'created orders.2.x',
    ]);
  });

  it('prints one readable line per event by default', async () => {
    const r = await cli([]);
    expect(r.code).toBe(0);
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines).toHaveLength(6);
    const stored = await readStream(stack.nats.url, stream);
    const first = stored[0]!.event;
    expect(lines[0]).toBe(
      `${first.at} #${first.seq} created  cli.a  by web-1 pid=123 token=${first.lock.token} until=${first.lock.locked_until} op=set stream=1`,
    );
    const released = stored[3]!.event;
    expect(lines[3]).toBe(
      `${released.at} #${released.seq} released cli.b  by ${HOST} pid=- token=${released.lock.token} holder=web-1 op=unlock stream=4`,
    );
    expect(lines[4]).toMatch(/ created {2}orders\.1 {2}by .* until=never op=get stream=5$/);
  });

  it('--since-seq replays exactly the tail; --since-time from a time; --type and --name filter', async () => {
    const tail = await cli(['--json', '--since-seq', '4']);
    expect(tail.code).toBe(0);
    expect(
      tail.stdout
        .trimEnd()
        .split('\n')
        .map((l) => (JSON.parse(l) as LockEvent).lock.name),
    ).toEqual(['cli.b', 'orders.1', 'orders.2.x']);

    const stored = await readStream(stack.nats.url, stream);
    const none = await cli(['--json', '--since-seq', String(stored.length + 1)]);
    expect(none).toMatchObject({ code: 0, stdout: '' });

    const future = await cli(['--since-time', new Date(Date.now() + 60_000).toISOString()]);
    expect(future).toMatchObject({ code: 0, stdout: '' });
    const past = await cli(['--json', '--since-time', new Date(Date.now() - 60_000).toISOString()]);
    expect(past.stdout.trimEnd().split('\n')).toHaveLength(6);

    const filtered = await cli(['--json', '--type', 'created', '--type', 'released', '--name', 'orders.>', '--name', 'cli.b']);
    expect(
      filtered.stdout
        .trimEnd()
        .split('\n')
        .map((l) => {
          const e = JSON.parse(l) as LockEvent;
          return `${e.type} ${e.lock.name}`;
        }),
    ).toEqual(['created cli.b', 'released cli.b', 'created orders.1', 'created orders.2.x']);
    const star = await cli(['--json', '--name', 'orders.*', '--type', 'created,renewed']);
    expect(
      star.stdout
        .trimEnd()
        .split('\n')
        .map((l) => (JSON.parse(l) as LockEvent).lock.name),
    ).toEqual(['orders.1']);
  });

  it('--follow prints live events until interrupted', async () => {
    const p = startCli(['events', '--follow', '--json', '--name', 'live.>', ...conn], { timeoutMs: 20_000 });
    // Keep producing events until the command shows it is listening.
    await waitFor(
      async () => {
        await stack.client.setLock('live.probe', { timeout: 60 });
        return p.stdout().includes('live.probe');
      },
      10_000,
      'the live subscription',
    );
    await stack.client.unlock('live.x').catch(() => undefined);
    await stack.client.setLock('live.x', { timeout: 60 });
    await stack.client.unlock('live.x');
    await waitFor(() => p.stdout().includes('"released"'), 5000, 'the release');
    p.child.kill('SIGINT');
    const r = await p.done;
    expect(r.code).toBe(0);
    const events = r.stdout
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l) as LockEvent);
    expect(events.filter((e) => e.lock.name === 'live.x').map((e) => e.type)).toEqual(['created', 'released']);
    expect(events.every((e) => e.lock.name.startsWith('live.'))).toBe(true);
  });

  it('a reader that stops early (lockmgr events | head -1) ends it quietly, exit 0', async () => {
    const p = startCli(['events', '--follow', '--name', 'head.>', ...conn], { timeoutMs: 20_000 });
    await waitFor(
      async () => {
        await stack.client.setLock('head.probe', { timeout: 60 });
        return p.stdout().includes('head.probe');
      },
      10_000,
      'the first line',
    );
    // The reader has its line and goes away: the pipe closes; the next events find it closed.
    p.child.stdout!.destroy();
    for (let i = 0; i < 5; i++) await stack.client.setLock(`head.${i}`, { timeout: 60 });
    const r = await p.done;
    expect({ code: r.code, signal: r.signal, stderr: r.stderr }).toEqual({ code: 0, signal: null, stderr: '' });
  });

  it('says what is wrong: bad flags (64), no such stream (69)', async () => {
    const badType = await cli(['--type', 'bogus']);
    expect(badType.code).toBe(64);
    expect(badType.stderr).toMatch(/--type bogus: not an event type/);
    const badName = await cli(['--name', 'a.>.b']);
    expect(badName.code).toBe(64);
    const both = await cli(['--since-seq', '1', '--since-time', '2026-01-01T00:00:00Z']);
    expect(both.code).toBe(64);
    const missing = await runCli(['events', '--nats-url', stack.nats.url, '--prefix', stack.prefix, '--stream', 'NO_SUCH_STREAM']);
    expect(missing.code).toBe(69);
    // It names the stream that does hold the prefix's events.
    expect(missing.stderr).toBe(
      `lockmgr: no events stream NO_SUCH_STREAM on this NATS server; stream ${stream} takes ${stack.prefix}.events.>: ` +
        `read that one (the daemons' eventsStream) (--stream NAME, or LOCKMGR_EVENTS_STREAM)\n`,
    );
    expect(missing.stdout).toBe('');
  });

  it("says so (exit 69) when the stream does not take the prefix's events, rather than print nothing", async () => {
    const other = `${stack.prefix}-other`;
    const wrong = await runCli(['events', '--nats-url', stack.nats.url, '--prefix', other, '--stream', stream]);
    expect({ code: wrong.code, stdout: wrong.stdout }).toEqual({ code: 69, stdout: '' });
    expect(wrong.stderr).toBe(
      `lockmgr: events stream ${stream} takes ${stack.prefix}.events.>, not ${other}.events.> (the events of prefix ${other}): ` +
        `it is not this prefix's stream; name the stream the daemons of prefix ${other} deliver to (their eventsStream) ` +
        `(--stream NAME, or LOCKMGR_EVENTS_STREAM)\n`,
    );
    const json = await runCli(['events', '--json', '--nats-url', stack.nats.url, '--prefix', other, '--stream', stream]);
    expect(json.code).toBe(69);
    expect(JSON.parse(json.stdout)).toMatchObject({ error: { code: 'EVENTS_UNAVAILABLE' } });
  });

  it("without --stream reads the prefix's default stream, LOCKMGR_EVENTS_<prefix>, as the daemons do", async () => {
    const prefix = `${stack.prefix}.own`;
    const db = await createTestDatabase('sqlite');
    await stack.startDaemon({ prefix, db: db.url, eventsStream: '' });
    const client = await LockClient.connect({ servers: stack.nats.url, prefix });
    try {
      await client.setLock('by-default', { timeout: 60 });
      await waitFor(async () => (await outboxCount(db)) === 0, 5000, 'the event to be relayed');
      const r = await runCli(['events', '--json', '--nats-url', stack.nats.url, '--prefix', prefix]);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect(
        r.stdout
          .trimEnd()
          .split('\n')
          .map((l) => (JSON.parse(l) as LockEvent).lock.name),
      ).toEqual(['by-default']);
      expect((await readStream(stack.nats.url, `LOCKMGR_EVENTS_${stack.prefix}_own`)).map((s) => s.subject)).toEqual([
        `${prefix}.events.created.by-default`,
      ]);
    } finally {
      await client.close();
    }
  });

  it('the auditor example rebuilds the lock table from the stream and finds no difference; it reports a lock changed behind its back', async () => {
    const env = { LOCKMGR_NATS_URL: stack.nats.url, LOCKMGR_PREFIX: stack.prefix, LOCKMGR_EVENTS_STREAM: stream };
    // Some more history, including an expiry found by the sweeper and a reset.
    await stack.client.getLock('aud.short', { expires: 0.3 });
    await stack.client.setLock('aud.1', 'aud.2', { timeout: 300 });
    await waitFor(
      async () => (await readStream(stack.nats.url, stream)).some((x) => x.event.type === 'expired' && x.event.lock.name === 'aud.short'),
      5000,
      'the sweeper to expire aud.short',
    );

    const events = (await readStream(stack.nats.url, stream)).length;
    const held = (await stack.client.listLocks()).length;
    expect(held).toBeGreaterThanOrEqual(5);
    const ok = await runAuditor(env);
    expect(ok.stderr).toBe('');
    expect(ok.stdout).toMatch(new RegExp(`^replayed ${events} events from stream ${stream} \\(up to stream sequence ${events}\\)`));
    expect(ok.stdout).toMatch(new RegExp(`the events say ${held} locks are held; the daemon lists ${held}`));
    expect(ok.stdout).toMatch(/no differences/);
    expect(ok.code).toBe(0);

    // A change no event records (made in the database directly): the auditor must see it.
    await sqlQuery(stack.db, "UPDATE lockmgr_locks SET locked_by = 'intruder' WHERE name = 'aud.1'");
    const bad = await runAuditor(env);
    expect(bad.code).toBe(1);
    expect(bad.stdout).toContain(`difference: aud.1: locked_by is "intruder" in the daemon, "${HOST}" according to the events`);
  });
});
