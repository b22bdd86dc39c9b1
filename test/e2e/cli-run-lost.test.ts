/**
 * `lockmgr run` losing its lock: the command must be gone before anyone else is granted the lock.
 * The daemons' lock-delay is 3 s and run is told so (--lock-delay 3, or LOCKMGR_LOCK_DELAY=3);
 * sessions last 2 s.
 *
 * The commands write the time (epoch ms) every 20 ms; the next holder's grant time is the lock's
 * created_at (set by the daemon, in this process, from the same clock).
 */
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LockClient } from '../../client/index';
import { runCli, startCli, until } from '../helpers/cli';
import { startStack, type Stack } from '../helpers/stack';

jest.setTimeout(60_000);

const NODE = process.execPath;
const LOCK_DELAY = '3';
const TTL = '2';

/** A process that exists and is not a zombie (an orphan's zombie may wait for a reaper). */
function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/** A command that ignores SIGTERM, writes its pid to `pidFile`, then the time to `out` every 20 ms. */
function stubborn(out: string, pidFile: string): string[] {
  const fs = "require('node:fs')";
  return [
    NODE,
    '-e',
    `process.on('SIGTERM', () => {}); ${fs}.writeFileSync(${JSON.stringify(pidFile)}, String(process.pid));` +
      ` setInterval(() => ${fs}.appendFileSync(${JSON.stringify(out)}, Date.now() + '\\n'), 20);`,
  ];
}

function lastWrite(out: string): number {
  return Math.max(...readFileSync(out, 'utf8').split('\n').filter(Boolean).map(Number));
}

function readPid(file: string): number {
  return Number(readFileSync(file, 'utf8'));
}

describe('lockmgr run losing its lock (built binary, real daemon, 3 s lock-delay)', () => {
  let stack: Stack;
  let other: LockClient;
  let conn: string[];
  let dir: string;
  let n = 0;
  /** Processes the tests started that may outlive a failed test. */
  const leftovers: number[] = [];

  const files = () => {
    n += 1;
    return { out: join(dir, `out-${n}`), pidFile: join(dir, `pid-${n}`), childPidFile: join(dir, `child-${n}`) };
  };
  const started = (pidFile: string, out?: string) =>
    until(
      () => existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim() !== '' && (out === undefined || existsSync(out)),
      10_000,
      'the command to start',
    );

  beforeAll(async () => {
    stack = await startStack({ store: 'sqlite', config: { lockDelay: Number(LOCK_DELAY), sweepInterval: 0.1 } });
    other = await stack.newClient({ locked_by: 'next-holder' });
    conn = ['--nats-url', stack.nats.url, '--prefix', stack.prefix];
    dir = mkdtempSync(join(tmpdir(), 'lockmgr-run-lost-'));
  });
  afterAll(async () => {
    for (const pid of leftovers) {
      if (!running(pid)) continue;
      try {
        process.kill(pid, 'SIGCONT');
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    await stack?.stop();
  });

  /** lockmgr run, told the daemons' lock-delay by --lock-delay, or with `viaEnv` by LOCKMGR_LOCK_DELAY. */
  const run = (name: string, opts: string[], command: string[], viaEnv = false) =>
    startCli(['run', name, '--ttl', TTL, ...(viaEnv ? [] : ['--lock-delay', LOCK_DELAY]), ...opts, ...conn, '--', ...command], {
      timeoutMs: 40_000,
      env: viaEnv ? { LOCKMGR_LOCK_DELAY: LOCK_DELAY } : {},
    });

  it('released by name: a command ignoring SIGTERM is SIGKILLed before the next holder is granted the lock, --grace or not', async () => {
    const { out, pidFile } = files();
    const p = run('forced', ['--grace', '30'], stubborn(out, pidFile), true);
    await started(pidFile, out);
    const pid = readPid(pidFile);
    leftovers.push(pid);
    expect((await runCli(['clear-lock', 'forced', ...conn])).code).toBe(0);
    const next = await other.getLock('forced', { wait: 30 });
    const r = await p.done;
    expect(r.code).toBe(3);
    expect(r.stderr).toContain('lockmgr: lost lock "forced": it was released by someone else (by name) or reset;');
    expect(r.stderr).toContain('the command was stopped by SIGKILL; exiting with 3');
    expect(running(pid)).toBe(false);
    expect(lastWrite(out)).toBeLessThan(next.created_at.getTime());
    // The next holder's lock is untouched by lockmgr run on its way out.
    expect((await other.lockInfo('forced'))!.token).toBe(next.token);
    await other.unlock(next);
  });

  it('paused with its command (a stopped machine): on resuming, run SIGKILLs the command at once, before it runs again', async () => {
    const { out, pidFile } = files();
    const p = run('paused', ['--grace', '60', '--kill-group'], stubborn(out, pidFile));
    await started(pidFile, out);
    const pid = readPid(pidFile);
    leftovers.push(pid);
    // --kill-group: the command leads a process group of its own.
    process.kill(-pid, 'SIGSTOP');
    p.child.kill('SIGSTOP');
    leftovers.push(p.child.pid!);
    // The session lapses, then the lock-delay passes: someone else gets the lock.
    const next = await other.getLock('paused', { wait: 30 });
    p.child.kill('SIGCONT');
    // The command is still stopped: only a SIGKILL (not a SIGTERM and a 60 s grace) ends it.
    await until(() => !running(pid), 10_000, 'the stopped command to be killed');
    try {
      process.kill(-pid, 'SIGCONT');
    } catch {
      // the group is gone
    }
    const r = await p.done;
    expect(r.code).toBe(3);
    expect(r.stderr).toContain('lockmgr: lost lock "paused": ');
    expect(r.stderr).toContain(
      'it may be granted to someone else already (was lockmgr run paused or starved?): killing the command (SIGKILL)',
    );
    expect(r.stderr).toContain('the command was stopped by SIGKILL; exiting with 3');
    expect(lastWrite(out)).toBeLessThan(next.created_at.getTime());
    await other.unlock(next);
  });

  // A shell that ignores SIGTERM, with a child (sleep, inheriting that) it waits for.
  const family = (childPidFile: string) => ['sh', '-c', `trap "" TERM; sleep 300 >/dev/null 2>&1 & echo $! > ${childPidFile}; wait`];

  it('--kill-group: the command and its children are killed when the lock is lost', async () => {
    const { childPidFile } = files();
    const p = run('family', ['--kill-group', '--grace', '0.5'], family(childPidFile));
    await started(childPidFile);
    const child = readPid(childPidFile);
    leftovers.push(child);
    expect(running(child)).toBe(true);
    await other.unlock('family');
    const r = await p.done;
    expect(r.code).toBe(3);
    expect(r.stderr).toContain('the command was stopped by SIGKILL; exiting with 3');
    await until(() => !running(child), 5_000, 'the child to be gone');
  });

  it('without --kill-group only the command is signalled: its child lives on', async () => {
    const { childPidFile } = files();
    const p = run('family2', ['--grace', '0.5'], family(childPidFile));
    await started(childPidFile);
    const child = readPid(childPidFile);
    leftovers.push(child);
    await other.unlock('family2');
    const r = await p.done;
    expect(r.code).toBe(3);
    expect(r.stderr).toContain('the command was stopped by SIGKILL; exiting with 3');
    expect(running(child)).toBe(true);
    process.kill(child, 'SIGKILL');
  });

  it('--kill-group: processes the command leaves behind are stopped before the lock is released', async () => {
    const { childPidFile } = files();
    const p = run('left', ['--kill-group'], ['sh', '-c', `sleep 300 >/dev/null 2>&1 & echo $! > ${childPidFile}; exit 6`]);
    const r = await p.done;
    const child = readPid(childPidFile);
    leftovers.push(child);
    expect(r.code).toBe(6);
    expect(r.stderr).toContain('the command exited, leaving processes in its group: stopping them (SIGTERM, then SIGKILL after 10s)');
    expect(running(child)).toBe(false);
    expect(await other.isLocked('left')).toBe(false);
  });

  it('cut off from the daemons: the session cannot be kept alive, the command is stopped and run exits 3', async () => {
    const { out, pidFile } = files();
    const p = run('cutoff', ['--grace', '0.5'], stubborn(out, pidFile));
    await started(pidFile, out);
    const pid = readPid(pidFile);
    leftovers.push(pid);
    const daemon = stack.daemons[stack.daemons.length - 1]!;
    await daemon.stop(2000);
    const r = await p.done;
    const stoppedAt = lastWrite(out);
    expect(r.code).toBe(3);
    expect(r.stderr).toContain('lockmgr: lost lock "cutoff": no keepalive was answered in time (the session may have lapsed);');
    expect(r.stderr).toContain('the command was stopped by SIGKILL; exiting with 3');
    expect(running(pid)).toBe(false);
    await stack.startDaemon();
    const next = await other.getLock('cutoff', { wait: 30 });
    expect(stoppedAt).toBeLessThan(next.created_at.getTime());
    await other.unlock(next);
  });
});
