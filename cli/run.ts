/**
 * `lockmgr run <name> -- <command…>`: hold a lock while a command runs (like `flock`,
 * `etcdctl lock`, `consul lock`). Takes the lock in the client's session (waiting up to --wait),
 * runs the command with stdio inherited while the session is kept alive, releases the lock when the
 * command exits and passes the exit code through. If the lock is lost (the session could not be
 * kept alive in time, or someone released the lock by name), the command is stopped — SIGTERM, then
 * SIGKILL — before the daemons' lock-delay is over, so before anyone else can be granted the lock.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { constants } from 'node:os';
import type { Argv, CommandModule } from 'yargs';
import { hideBin } from 'yargs/helpers';
import { Locked } from '../client/errors';
import type { HeldLock } from '../client/held-lock';
import type { Lock } from '../client/lock';
import { pythonTime } from '../client/lock';
import { LockLost } from '../client/session';
import { loadConfig } from '../daemon/config';
import { DEFAULT_SESSION_TTL, MAX_SESSION_TTL, MIN_SESSION_TTL } from '../shared/protocol';
import { CliError, EXIT, describeError, openClient, reportError, withClientOptions, type ClientArgs } from './client-common';
import { numberOption } from './number-option';
import { forTerminal } from './terminal';

interface RunArgs extends ClientArgs {
  name: string;
  wait: number;
  ttl?: number;
  timeout?: number;
  grace: number;
  'lock-delay'?: number;
  'kill-group': boolean;
  'locked-by'?: string;
  'conflict-exit-code': number;
  '--'?: (string | number)[];
}

/** The SIGKILL comes this long before the lock-delay ends (half the lock-delay if that is shorter). */
const KILL_SLACK_MS = 1000;
/** How often the command's process group is looked at once its first process has exited. */
const GROUP_POLL_MS = 50;
/** Signals sent to lockmgr that are passed on to the command. */
const FORWARDED: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

/** One line on stderr; what it quotes (a holder, a name, a reason) shown with its control characters escaped. */
function warn(text: string): void {
  process.stderr.write(`lockmgr: ${forTerminal(text)}\n`);
}

function seconds(ms: number): string {
  return `${Number((Math.max(0, ms) / 1000).toFixed(1))}s`;
}

function holderOf(lock: Lock | null | undefined): string {
  if (!lock) return 'someone else';
  const who = `${lock.locked_by ?? 'someone'}${lock.lock_process ? ` (process ${lock.lock_process})` : ''}`;
  return lock.locked_until ? `${who} until ${pythonTime(lock.locked_until)}` : `${who}, never expiring`;
}

function whyLost(reason: unknown): string {
  return reason instanceof LockLost ? reason.why : String(reason);
}

/** --ttl, else the deprecated --timeout (0, which meant "never expires", gives the default; kept within 1-3600). */
export function sessionTtl(argv: Pick<RunArgs, 'ttl' | 'timeout'>): number {
  if (argv.ttl !== undefined) return argv.ttl;
  if (argv.timeout === undefined || argv.timeout === 0) return DEFAULT_SESSION_TTL;
  return Math.min(MAX_SESSION_TTL, Math.max(MIN_SESSION_TTL, argv.timeout));
}

/** The daemons' lock-delay, in seconds: --lock-delay > LOCKMGR_LOCK_DELAY > lockDelay in --config > 15. */
function daemonsLockDelay(argv: RunArgs): number {
  return loadConfig({ file: argv.config, flags: { lockDelay: argv['lock-delay'] } }).config.lockDelay;
}

interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  error?: NodeJS.ErrnoException;
}

/** The command: its process, or with --kill-group every process of its own process group. */
class Command {
  readonly child: ChildProcess;
  readonly exited: Promise<ChildResult>;

  constructor(
    argv: string[],
    env: NodeJS.ProcessEnv,
    private readonly group: boolean,
  ) {
    // detached: a new session and process group, led by the command (setsid).
    this.child = spawn(argv[0]!, argv.slice(1), { stdio: 'inherit', env, detached: group });
    this.exited = new Promise<ChildResult>((resolve) => {
      this.child.once('error', (error) => resolve({ code: null, signal: null, error }));
      this.child.once('exit', (code, signal) => resolve({ code, signal }));
    });
  }

  signal(signal: NodeJS.Signals): void {
    const pid = this.child.pid;
    if (pid === undefined) return;
    try {
      if (this.group) process.kill(-pid, signal);
      else this.child.kill(signal);
    } catch {
      // Nothing left to signal.
    }
  }

  /** With --kill-group: is a process of the group left? */
  groupAlive(): boolean {
    const pid = this.child.pid;
    if (!this.group || pid === undefined) return false;
    try {
      process.kill(-pid, 0);
      return true;
    } catch (err) {
      return (err as NodeJS.ErrnoException).code === 'EPERM';
    }
  }
}

/** Stops the command: SIGTERM at once, SIGKILL at the earliest deadline asked for. */
class Stopper {
  killed = false;
  private termSent = false;
  private killAt = Infinity;
  private timer?: NodeJS.Timeout;

  constructor(private readonly command: Command) {}

  /** SIGTERM now (once), SIGKILL at `at` (performance.now() ms) at the latest: at once if it has passed. */
  stopBy(at: number): void {
    if (this.killed || at >= this.killAt) return;
    const left = at - performance.now();
    if (left <= 0) return this.kill();
    if (!this.termSent) {
      this.termSent = true;
      this.command.signal('SIGTERM');
    }
    this.killAt = at;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.kill(), left);
  }

  cancel(): void {
    clearTimeout(this.timer);
  }

  private kill(): void {
    clearTimeout(this.timer);
    this.killed = true;
    this.command.signal('SIGKILL');
  }
}

async function supervise(held: HeldLock, command: string[], argv: RunArgs, lockDelayMs: number): Promise<number> {
  const name = held.name;
  if (held.signal.aborted) {
    warn(`lost lock "${name}" before the command started: ${whyLost(held.signal.reason)}; not running the command`);
    return EXIT.LOCK_LOST;
  }
  const cmd = new Command(command, { ...process.env, LOCKMGR_LOCK_NAME: name, LOCKMGR_LOCK_TOKEN: String(held.token) }, argv['kill-group']);
  const stopper = new Stopper(cmd);
  const graceMs = argv.grace * 1000;
  const slackMs = Math.min(KILL_SLACK_MS, lockDelayMs / 2);
  let lost: string | undefined;
  let done = false;

  // The lock is being lost: nobody else can be granted it before lostAfter + the lock-delay, so
  // the SIGKILL comes before that, whatever --grace says.
  const onLost = () => {
    const reason: unknown = held.signal.reason;
    lost = whyLost(reason);
    if (done) return;
    const lostAfter = reason instanceof LockLost ? reason.lostAfter : performance.now();
    const killBy = lostAfter + lockDelayMs - slackMs;
    const left = killBy - performance.now();
    if (left <= 0) {
      warn(
        `lost lock "${name}": ${lost}; it may be granted to someone else already (was lockmgr run paused or starved?): killing the command (SIGKILL)`,
      );
    } else {
      warn(`lost lock "${name}": ${lost}; stopping the command (SIGTERM, then SIGKILL after ${seconds(Math.min(graceMs, left))})`);
    }
    stopper.stopBy(Math.min(performance.now() + graceMs, killBy));
  };
  held.signal.addEventListener('abort', onLost, { once: true });
  // Signals sent to lockmgr go to the command; lockmgr releases the lock once it has exited.
  const forward = (signal: NodeJS.Signals) => {
    if (!done) cmd.signal(signal);
  };
  for (const s of FORWARDED) process.on(s, forward);

  const r = await cmd.exited;
  if (cmd.groupAlive()) {
    // With --kill-group, nothing of the command may run once the lock is released.
    if (lost === undefined) {
      warn(
        `the command exited, leaving processes in its group: stopping them (SIGTERM, then SIGKILL after ${seconds(graceMs)}) before releasing lock "${name}"`,
      );
      stopper.stopBy(performance.now() + graceMs);
    }
    while (cmd.groupAlive() && !stopper.killed) await new Promise((resolve) => setTimeout(resolve, GROUP_POLL_MS));
  }
  done = true;
  stopper.cancel();
  held.signal.removeEventListener('abort', onLost);
  for (const s of FORWARDED) process.off(s, forward);

  if (lost === undefined && held.signal.aborted) lost = whyLost(held.signal.reason);
  if (lost === undefined) {
    try {
      if (!(await held.release())) lost = 'it was released by someone else, or its session lapsed, before the command finished';
    } catch (err) {
      warn(
        `could not release lock "${name}" (${describeError(err).message}); closing the session releases it, or it is free once the session has lapsed`,
      );
    }
    if (lost !== undefined) warn(`lost lock "${name}": ${lost}`);
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

/** Words as a POSIX shell reads them back: quoted when they hold anything but plain characters. */
export function shellWords(words: string[]): string {
  return words.map((w) => (/^[\w@%+=:,./-]+$/.test(w) ? w : `'${w.replace(/'/g, `'\\''`)}'`)).join(' ');
}

/**
 * `lockmgr run job echo hi`: words after the lock name that do not follow "--" would be taken as
 * lockmgr's own (strict mode calls them unknown arguments, and `-l` of `ls -l` an unknown option),
 * so say where the command goes: the command line as typed, with "--" before the first such word.
 * Runs before validation, so that this comes first; async, so that the error reaches the command
 * line's catch (exit 64) instead of escaping the parser.
 */
async function commandBeforeDashes(argv: { _: (string | number)[]; name?: unknown }): Promise<void> {
  const words = argv._.slice(1).map(String);
  if (words.length === 0) return;
  const typed = hideBin(process.argv);
  const nameAt = typed.indexOf(String(argv.name), typed.indexOf('run') + 1);
  const firstAt = nameAt < 0 ? -1 : typed.indexOf(words[0]!, nameAt + 1);
  const fixed = firstAt < 0 ? ['run', String(argv.name), '--', ...words] : [...typed.slice(0, firstAt), '--', ...typed.slice(firstAt)];
  throw new CliError(
    EXIT.USAGE,
    `the command to run goes after "--": lockmgr ${shellWords(fixed)}\nRun "lockmgr run --help" for usage.`,
    'USAGE',
  );
}

export async function runLocked(argv: RunArgs): Promise<number> {
  const command = (argv['--'] ?? []).map(String);
  if (command.length === 0) {
    warn('name the command to run after "--", e.g. lockmgr run nightly-report -- ./report.sh');
    process.stderr.write('Run "lockmgr run --help" for usage.\n');
    return EXIT.USAGE;
  }
  let client: Awaited<ReturnType<typeof openClient>> | undefined;
  try {
    const lockDelayMs = daemonsLockDelay(argv) * 1000;
    // Reconnect forever: the session is kept alive for as long as the command runs, across NATS outages.
    client = await openClient(argv, 'run', { reconnectForever: true, sessionTtl: sessionTtl(argv), locked_by: argv['locked-by'] });
    let held: HeldLock;
    try {
      held = await client.hold(argv.name, { wait: argv.wait, locked_by: argv['locked-by'], lock_process: process.pid });
    } catch (err) {
      if (!(err instanceof Locked)) throw err;
      const waited = argv.wait > 0 ? ` and was not released within ${argv.wait}s` : '';
      warn(`lock "${argv.name}" is held by ${holderOf(err.lock)}${waited}; not running the command`);
      return argv['conflict-exit-code'];
    }
    return await supervise(held, command, argv, lockDelayMs);
  } catch (err) {
    return reportError(err, false);
  } finally {
    // Closes the session too, releasing whatever it still holds.
    await client?.close().catch(() => undefined);
  }
}

export const runCommand: CommandModule<object, RunArgs> = {
  command: 'run <name>',
  describe: 'Hold a lock while a command runs: take it, keep it alive, release it when the command exits',
  builder: (y: Argv) =>
    withClientOptions(y.parserConfiguration({ 'populate--': true }), { json: false })
      .usage('$0 run <name> [options] -- <command> [args...]')
      .positional('name', { type: 'string', describe: 'Lock name' })
      .option(
        ...numberOption('wait', {
          alias: 'w',
          default: 0,
          min: 0,
          unit: 'seconds',
          describe: 'Seconds to wait for the lock if it is held (0: give up at once)',
        }),
      )
      .option(
        ...numberOption('ttl', {
          min: MIN_SESSION_TTL,
          max: MAX_SESSION_TTL,
          unit: 'seconds',
          describe: `Seconds of the session the lock is held in (${MIN_SESSION_TTL}-${MAX_SESSION_TTL}, a keepalive every third): if lockmgr run dies or is cut off, the lock is free after the ttl plus the daemons' lock-delay [default ${DEFAULT_SESSION_TTL}]`,
        }),
      )
      .option(
        ...numberOption('timeout', {
          alias: 't',
          min: 0,
          unit: 'seconds',
          describe: 'Deprecated: taken as --ttl (0 gives the default ttl)',
        }),
      )
      .option(
        ...numberOption('grace', {
          default: 10,
          min: 0,
          unit: 'seconds',
          describe:
            'Seconds between SIGTERM and SIGKILL when the lock is lost, cut short so that the SIGKILL comes before the lock-delay ends',
        }),
      )
      .option(
        ...numberOption('lock-delay', {
          min: 0,
          unit: 'seconds',
          describe:
            "The daemons' lockDelay: seconds a lost lock stays blocked; the SIGKILL comes 1 s before it ends [env LOCKMGR_LOCK_DELAY, or lockDelay from --config, default 15]",
        }),
      )
      .option('kill-group', {
        type: 'boolean',
        default: false,
        describe: 'Run the command in a process group of its own and signal the whole group (its children too)',
      })
      .option('locked-by', { type: 'string', describe: 'Custom "locked_by" (default: this machine\'s hostname)' })
      .option(
        ...numberOption('conflict-exit-code', {
          default: EXIT.LOCKED,
          integer: true,
          min: 0,
          max: 255,
          describe: 'Exit code when the lock is held by someone else',
        }),
      )
      .middleware(commandBeforeDashes, true)
      .example('$0 run nightly-report -- ./report.sh --full', 'skip (exit 2) if another run holds the lock')
      .example(
        '$0 run -w 300 --kill-group db-migrate -- npm run migrate',
        'wait up to 5 min for the lock; stop npm and its children if it is lost',
      )
      .epilogue(
        'If the lock is lost (its session could not be kept alive in time, or someone released it by name), the command gets SIGTERM, ' +
          "then SIGKILL before the daemons' lock-delay ends: it never runs once the lock can be granted to anyone else, as long as " +
          "--lock-delay is at most the daemons' lockDelay and lockmgr run itself is not paused or killed (reset-locks frees names at once). " +
          "Exit status: the command's own (128+n if killed by signal n); 2 (or --conflict-exit-code) if the lock is held; " +
          '3 if the lock was lost while the command ran; 127/126 if the command cannot be run; 69 if NATS or the daemon is unreachable. ' +
          'The command sees LOCKMGR_LOCK_NAME and LOCKMGR_LOCK_TOKEN (the fencing token) in its environment.',
      ) as unknown as Argv<RunArgs>,
  handler: async (argv) => {
    const code = await runLocked(argv);
    process.exit(code);
  },
};
