/**
 * `lockmgr run <name> -- <command…>`: hold a lock while a command runs (like `flock`,
 * `etcdctl lock`, `consul lock`). Takes the lock (waiting up to --wait), runs the command with
 * stdio inherited, renews the grant in the background by its token, releases it when the
 * command exits and passes the exit code through. If the lock is lost (released by someone
 * else, or not renewed before it expired), the command is stopped: SIGTERM, then SIGKILL.
 */
import { spawn } from 'node:child_process';
import { constants } from 'node:os';
import type { Argv, CommandModule } from 'yargs';
import { LockNotFound, Locked, NotOwner } from '../client/errors';
import type { Lock } from '../client/lock';
import type { LockClient } from '../client/lock-client';
import { pythonTime } from '../client/lock';
import { EXIT, describeError, openClient, reportError, withClientOptions, type ClientArgs } from './client-common';

interface RunArgs extends ClientArgs {
  name: string;
  wait: number;
  timeout: number;
  grace: number;
  'locked-by'?: string;
  'conflict-exit-code': number;
  '--'?: (string | number)[];
}

/** How often a never-expiring lock (--timeout 0) is checked for loss. */
const NEVER_EXPIRES_CHECK_MS = 5000;
/** Longest pause between renewals, and the retry delay after a failed one. */
const MAX_RETRY_MS = 1000;

function warn(text: string): void {
  process.stderr.write(`lockmgr: ${text}\n`);
}

function holderOf(lock: Lock | null | undefined): string {
  if (!lock) return 'someone else';
  const who = `${lock.locked_by ?? 'someone'}${lock.lock_process ? ` (process ${lock.lock_process})` : ''}`;
  return lock.locked_until ? `${who} until ${pythonTime(lock.locked_until)}` : `${who}, never expiring`;
}

interface Keeper {
  /** Stop renewing; resolves once no renewal is in flight. */
  stop(): Promise<void>;
}

/**
 * Renew `lock` (by its token) every third of its lifetime. Calls `onLost` once if the daemon says
 * the grant is gone, or if its expiry passes without a renewal having been answered.
 */
function keepLock(client: LockClient, lock: Lock, expires: number | null, argv: RunArgs, onLost: (reason: string) => void): Keeper {
  const period = expires ? (expires * 1000) / 3 : NEVER_EXPIRES_CHECK_MS;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let current: Promise<void> = Promise.resolve();

  const renewOnce = async (): Promise<number | null> => {
    const until = lock.locked_until?.getTime();
    let expiryTimer: NodeJS.Timeout | undefined;
    try {
      const renewal = client.renewLock(lock, { expires, locked_by: argv['locked-by'], lock_process: process.pid });
      if (until === undefined) {
        await renewal;
      } else {
        const late = new Promise<'late'>((resolve) => {
          expiryTimer = setTimeout(() => resolve('late'), Math.max(0, until - Date.now()));
        });
        if ((await Promise.race([renewal, late])) === 'late') {
          renewal.catch(() => undefined);
          if (!stopped) onLost(`it expired at ${pythonTime(new Date(until))} before a renewal was answered`);
          return null;
        }
      }
      return period;
    } catch (err) {
      if (stopped) return null;
      if (err instanceof NotOwner) {
        onLost(`it was granted to ${holderOf(err.lock)}`);
        return null;
      }
      if (err instanceof LockNotFound) {
        onLost('it was released or has expired (did someone run clear-lock or reset-locks?)');
        return null;
      }
      if (until !== undefined && Date.now() >= until) {
        onLost(`it expired while renewals failed (${describeError(err).message})`);
        return null;
      }
      warn(`renewing lock "${lock.name}" failed, retrying: ${describeError(err).message}`);
      return Math.min(MAX_RETRY_MS, period);
    } finally {
      clearTimeout(expiryTimer);
    }
  };

  const schedule = (ms: number | null) => {
    if (stopped || ms === null) return;
    timer = setTimeout(() => {
      current = renewOnce().then(schedule);
    }, ms);
  };
  schedule(period);
  return {
    stop: async () => {
      stopped = true;
      clearTimeout(timer);
      await current.catch(() => undefined);
    },
  };
}

interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  error?: NodeJS.ErrnoException;
}

async function supervise(client: LockClient, lock: Lock, command: string[], expires: number | null, argv: RunArgs): Promise<number> {
  const child = spawn(command[0]!, command.slice(1), {
    stdio: 'inherit',
    env: { ...process.env, LOCKMGR_LOCK_NAME: lock.name, LOCKMGR_LOCK_TOKEN: String(lock.token) },
  });
  const result = new Promise<ChildResult>((resolve) => {
    child.once('error', (error) => resolve({ code: null, signal: null, error }));
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });

  let exited = false;
  let lost: string | undefined;
  let killTimer: NodeJS.Timeout | undefined;
  const onLost = (reason: string) => {
    if (lost !== undefined || exited) return;
    lost = reason;
    warn(`lost lock "${lock.name}": ${reason}; stopping the command (SIGTERM, then SIGKILL after ${argv.grace}s)`);
    child.kill('SIGTERM');
    killTimer = setTimeout(() => child.kill('SIGKILL'), argv.grace * 1000);
  };
  // Signals sent to lockmgr go to the command; lockmgr releases the lock once it has exited.
  const forward = (signal: NodeJS.Signals) => {
    if (!exited) child.kill(signal);
  };
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  for (const s of signals) process.on(s, forward);

  const keeper = keepLock(client, lock, expires, argv, onLost);
  const r = await result;
  exited = true;
  clearTimeout(killTimer);
  await keeper.stop();
  for (const s of signals) process.off(s, forward);

  if (lost === undefined) {
    try {
      if (!(await client.unlock(lock))) lost = 'it had expired before the command finished';
    } catch (err) {
      if (err instanceof NotOwner) lost = `it was granted to ${holderOf(err.lock)} before the command finished`;
      else
        warn(
          `could not release lock "${lock.name}" (${describeError(err).message}); it expires on its own at ${pythonTime(lock.locked_until)}`,
        );
    }
    if (lost !== undefined) warn(`lost lock "${lock.name}": ${lost}`);
  }

  if (r.error) {
    warn(`cannot run ${command[0]}: ${r.error.message}`);
    return r.error.code === 'ENOENT' ? 127 : 126;
  }
  if (lost !== undefined) {
    const how = r.signal ? `was stopped by ${r.signal}` : `exited with ${r.code}`;
    warn(`the command ${how}; exiting with ${EXIT.LOCK_LOST} because the lock was lost while it ran`);
    return EXIT.LOCK_LOST;
  }
  if (r.signal) return 128 + (constants.signals[r.signal] ?? 0);
  return r.code ?? EXIT.ERROR;
}

export async function runLocked(argv: RunArgs): Promise<number> {
  const command = (argv['--'] ?? []).map(String);
  if (command.length === 0) {
    warn('name the command to run after "--", e.g. lockmgr run nightly-report -- ./report.sh\nRun "lockmgr run --help" for usage.');
    return EXIT.USAGE;
  }
  const expires = argv.timeout === 0 ? null : argv.timeout;
  let client: LockClient | undefined;
  try {
    // Reconnect forever: the lock is renewed for as long as the command runs, across NATS outages.
    client = await openClient(argv, 'run', { reconnectForever: true });
    let lock: Lock;
    try {
      lock = await client.getLock(argv.name, {
        expires,
        wait: argv.wait,
        locked_by: argv['locked-by'],
        lock_process: process.pid,
      });
    } catch (err) {
      if (!(err instanceof Locked)) throw err;
      const waited = argv.wait > 0 ? ` and was not released within ${argv.wait}s` : '';
      warn(`lock "${argv.name}" is held by ${holderOf(err.lock)}${waited}; not running the command`);
      return argv['conflict-exit-code'];
    }
    return await supervise(client, lock, command, expires, argv);
  } catch (err) {
    return reportError(err, false);
  } finally {
    await client?.close().catch(() => undefined);
  }
}

export const runCommand: CommandModule<object, RunArgs> = {
  command: 'run <name>',
  describe: 'Hold a lock while a command runs: take it, renew it, release it when the command exits',
  builder: (y: Argv) =>
    withClientOptions(y.parserConfiguration({ 'populate--': true }), { json: false })
      .usage('$0 run <name> [options] -- <command> [args...]')
      .positional('name', { type: 'string', describe: 'Lock name' })
      .option('wait', {
        alias: 'w',
        type: 'number',
        default: 0,
        describe: 'Seconds to wait for the lock if it is held (0: give up at once)',
      })
      .option('timeout', {
        alias: 't',
        type: 'number',
        default: 60,
        describe: 'Lock lifetime in seconds, renewed every third of it while the command runs (0: never expires)',
      })
      .option('grace', { type: 'number', default: 10, describe: 'Seconds between SIGTERM and SIGKILL when the lock is lost' })
      .option('locked-by', { type: 'string', describe: 'Custom "locked_by" (default: this machine\'s hostname)' })
      .option('conflict-exit-code', { type: 'number', default: EXIT.LOCKED, describe: 'Exit code when the lock is held by someone else' })
      .check((argv) => {
        for (const key of ['wait', 'timeout', 'grace'] as const) {
          const v = argv[key];
          if (!(typeof v === 'number' && Number.isFinite(v) && v >= 0))
            throw new Error(`--${key} must be a non-negative number of seconds, got ${String(v)}`);
        }
        const c = argv['conflict-exit-code'];
        if (!(Number.isInteger(c) && c >= 0 && c <= 255))
          throw new Error(`--conflict-exit-code must be an integer 0-255, got ${String(c)}`);
        return true;
      })
      .example('$0 run nightly-report -- ./report.sh --full', 'skip (exit 2) if another run holds the lock')
      .example('$0 run -w 300 -t 30 db-migrate -- npm run migrate', 'wait up to 5 min for the lock; 30 s lifetime, renewed')
      .epilogue(
        "Exit status: the command's own (128+n if killed by signal n); 2 (or --conflict-exit-code) if the lock is held; " +
          '3 if the lock was lost while the command ran; 127/126 if the command cannot be run; 69 if NATS or the daemon is unreachable. ' +
          'The command sees LOCKMGR_LOCK_NAME and LOCKMGR_LOCK_TOKEN (the fencing token) in its environment.',
      ) as unknown as Argv<RunArgs>,
  handler: async (argv) => {
    const code = await runLocked(argv);
    process.exit(code);
  },
};
