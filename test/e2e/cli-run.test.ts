/**
 * `lockmgr run`: the real binary holding a real lock around a real child process.
 */
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCli, startCli, until } from '../helpers/cli';
import { startStack, type Stack } from '../helpers/stack';

const NODE = process.execPath;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('lockmgr run (built binary, real daemon)', () => {
  let stack: Stack;
  let conn: string[];
  let dir: string;
  const run = (name: string, opts: string[], command: string[]) => runCli(['run', name, ...opts, ...conn, '--', ...command]);

  beforeAll(async () => {
    stack = await startStack({ store: 'sqlite' });
    conn = ['--nats-url', stack.nats.url, '--prefix', stack.prefix];
    dir = mkdtempSync(join(tmpdir(), 'lockmgr-run-'));
  });
  afterAll(async () => {
    await stack?.stop();
  });

  it('runs the command holding the lock, passes its exit code through and releases the lock', async () => {
    const out = join(dir, 'seen.json');
    // While the command runs, it records what the daemon says about its lock.
    const script = `
      const { execFileSync } = require('node:child_process');
      const info = execFileSync(${JSON.stringify(NODE)}, [${JSON.stringify(join(__dirname, '..', '..', 'dist', 'cli', 'main.js'))}, 'list-locks', '--json', ${conn.map((c) => JSON.stringify(c)).join(', ')}]);
      require('node:fs').writeFileSync(${JSON.stringify(out)}, JSON.stringify({ token: process.env.LOCKMGR_LOCK_TOKEN, name: process.env.LOCKMGR_LOCK_NAME, list: JSON.parse(info) }));
      process.exit(7);`;
    const r = await run('job', [], [NODE, '-e', script]);
    expect(r.code).toBe(7);
    expect(r.stderr).toBe('');
    const seen = JSON.parse(readFileSync(out, 'utf8'));
    expect(seen.name).toBe('job');
    expect(seen.list.count).toBe(1);
    expect(seen.list.locks[0].name).toBe('job');
    expect(String(seen.list.locks[0].token)).toBe(seen.token);
    expect(await stack.client.isLocked('job')).toBe(false);

    expect((await run('job', [], [NODE, '-e', 'process.exit(0)'])).code).toBe(0);
  });

  it('a command killed by signal n exits 128+n; a missing command exits 127; no command is a usage error', async () => {
    const killed = await run('sig', [], [NODE, '-e', "process.kill(process.pid, 'SIGTERM'); setTimeout(() => {}, 5000)"]);
    expect(killed.code).toBe(128 + 15);
    expect(await stack.client.isLocked('sig')).toBe(false);

    const missing = await run('sig', [], [join(dir, 'no-such-program')]);
    expect(missing.code).toBe(127);
    expect(missing.stderr).toMatch(/lockmgr: cannot run .*no-such-program.*ENOENT/);
    expect(await stack.client.isLocked('sig')).toBe(false);

    const none = await runCli(['run', 'sig', ...conn]);
    expect(none.code).toBe(64);
    expect(none.stderr).toContain('name the command to run after "--"');
  });

  it('a command given without "--" is a usage error pointing at "--"; nothing runs and the lock is not taken', async () => {
    const marker = join(dir, 'no-dashes-ran');
    const script = `require('node:fs').writeFileSync(${JSON.stringify(marker)}, 'x')`;
    const r = await runCli(['run', 'nodash', ...conn, NODE, '-e', script]);
    expect(r.code).toBe(64);
    // The command line as typed, "--" put before the command (its -e would be taken as lockmgr's).
    expect(r.stderr.split('\n')[0]).toBe(
      `lockmgr: the command to run goes after "--": lockmgr run nodash ${conn.join(' ')} -- ${NODE} -e '${script.replace(/'/g, `'\\''`)}'`,
    );
    expect(r.stderr).not.toContain('Unknown argument');
    expect(existsSync(marker)).toBe(false);
    expect(await stack.client.isLocked('nodash')).toBe(false);

    // The hint comes before any connection: no NATS needed.
    const plain = await runCli(['run', 'job', 'echo', 'hi']);
    expect(plain.code).toBe(64);
    expect(plain.stderr).toBe(
      'lockmgr: the command to run goes after "--": lockmgr run job -- echo hi\nRun "lockmgr run --help" for usage.\n',
    );
  });

  it('does not run the command when the lock is held: exit 2, or --conflict-exit-code', async () => {
    const held = await stack.client.getLock('busy', { locked_by: 'other-host', lock_process: 99 });
    const marker = join(dir, 'busy-ran');
    const r = await run('busy', [], [NODE, '-e', `require('node:fs').writeFileSync(${JSON.stringify(marker)}, 'x')`]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^lockmgr: lock "busy" is held by other-host \(process 99\) until .*; not running the command\n$/);
    expect(existsSync(marker)).toBe(false);
    const custom = await run('busy', ['--conflict-exit-code', '75'], [NODE, '-e', '0']);
    expect(custom.code).toBe(75);
    expect((await stack.client.lockInfo('busy'))!.token).toBe(held.token);
    await stack.client.unlock(held);
  });

  it('--wait waits for the holder to release, then runs', async () => {
    const held = await stack.client.getLock('queue');
    setTimeout(() => void stack.client.unlock(held), 700);
    const started = Date.now();
    const r = await run('queue', ['--wait', '10'], [NODE, '-e', 'process.exit(5)']);
    expect(r.code).toBe(5);
    expect(Date.now() - started).toBeGreaterThanOrEqual(600);
    expect(Date.now() - started).toBeLessThan(8000);
  });

  it('keeps the lock alive in its session, so a command may outlive --ttl', async () => {
    const p = startCli(['run', 'long', '--ttl', '1', ...conn, '--', NODE, '-e', 'setTimeout(() => process.exit(0), 2600)']);
    await until(async () => (await stack.client.lockInfo('long')) !== null, 5000, 'the lock');
    const first = (await stack.client.lockInfo('long'))!;
    await new Promise((r) => setTimeout(r, 1800)); // well past the 1 s ttl
    const later = (await stack.client.lockInfo('long'))!;
    expect(later).not.toBeNull();
    expect(later.token).toBe(first.token);
    expect(later.locked_until!.getTime()).toBeGreaterThan(first.locked_until!.getTime());
    const r = await p.done;
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    expect(await stack.client.isLocked('long')).toBe(false);
  });

  it('takes the deprecated --timeout as --ttl; --ttl must be 1-3600', async () => {
    expect((await run('old', ['--timeout', '0'], [NODE, '-e', 'process.exit(4)'])).code).toBe(4);
    expect((await run('old', ['-t', '30'], [NODE, '-e', 'process.exit(0)'])).code).toBe(0);
    const bad = await run('old', ['--ttl', '0.5'], [NODE, '-e', '0']);
    expect(bad.code).toBe(64);
    expect(bad.stderr).toContain('--ttl must be a number of seconds from 1 to 3600');
  });

  it('forwards SIGTERM to the command and releases the lock once it has exited', async () => {
    const marker = join(dir, 'term-trapped');
    const p = startCli([
      'run',
      'fwd',
      ...conn,
      '--',
      NODE,
      '-e',
      `process.on('SIGTERM', () => { require('node:fs').writeFileSync(${JSON.stringify(marker)}, 'x'); process.exit(0); }); console.log('up'); setInterval(() => {}, 1000);`,
    ]);
    await until(() => p.stdout().includes('up'), 5000, 'the command to start');
    p.child.kill('SIGTERM');
    const r = await p.done;
    expect(existsSync(marker)).toBe(true);
    expect(r.code).toBe(0);
    expect(await stack.client.isLocked('fwd')).toBe(false);
  });

  it('stops the command with SIGTERM when clear-lock releases its lock from another process, and exits 3', async () => {
    const pidFile = join(dir, 'victim.pid');
    const p = startCli([
      'run',
      'victim',
      '--ttl',
      '1.5',
      ...conn,
      '--',
      NODE,
      '-e',
      `require('node:fs').writeFileSync(${JSON.stringify(pidFile)}, String(process.pid)); setInterval(() => {}, 1000);`,
    ]);
    await until(() => existsSync(pidFile) && readFileSync(pidFile, 'utf8') !== '', 5000, 'the command to start');
    const pid = Number(readFileSync(pidFile, 'utf8'));
    expect(alive(pid)).toBe(true);
    const cleared = await runCli(['clear-lock', 'victim', ...conn]);
    expect(cleared.code).toBe(0);
    const r = await p.done;
    expect(r.code).toBe(3);
    // The daemons' lock-delay (15 s) leaves the whole --grace (10 s) before the SIGKILL.
    expect(r.stderr).toContain(
      'lockmgr: lost lock "victim": it was released by someone else (by name) or reset; stopping the command (SIGTERM, then SIGKILL after 10s)',
    );
    expect(r.stderr).toContain('the command was stopped by SIGTERM; exiting with 3');
    expect(alive(pid)).toBe(false);
  });
});
