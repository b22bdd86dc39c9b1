/**
 * A `lockmgr daemon` child process (the built CLI) that fault tests can kill -9, SIGSTOP/SIGCONT
 * and start again with the same settings; and a start that may be refused (a daemon that must not
 * serve), reported as its exit code and one-line message instead of an exception.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { cleanEnv } from './cli';
import { CLI } from './stack';

export interface DaemonSettings {
  natsUrl: string;
  db: string;
  prefix: string;
  /** Anything else, as LOCKMGR_* variables. */
  env?: Record<string, string>;
}

export interface RunningDaemon {
  readonly pid: number;
  readonly child: ChildProcess;
  output(): string;
  /** Resolves with the exit code (null when ended by a signal). */
  readonly exited: Promise<number | null>;
  signal(sig: NodeJS.Signals): void;
  /** SIGCONT (in case it is stopped), SIGTERM, then SIGKILL after `graceMs`. Resolves once it is gone. */
  stop(graceMs?: number): Promise<void>;
  readonly alive: boolean;
}

export type DaemonStart = { ready: true; daemon: RunningDaemon } | { ready: false; code: number | null; message: string; output: string };

const READY = /"message":"ready"/;

/**
 * The CLI the daemons run: the built dist/ by default; LOCKMGR_FAULT_CLI names another build (to
 * measure a fixed snapshot while the tree changes under it).
 */
export const DAEMON_CLI = process.env.LOCKMGR_FAULT_CLI ?? CLI;

function envOf(s: DaemonSettings): NodeJS.ProcessEnv {
  return cleanEnv({
    LOCKMGR_NATS_URL: s.natsUrl,
    LOCKMGR_DB: s.db,
    LOCKMGR_PREFIX: s.prefix,
    LOCKMGR_EVENTS_STREAM: `EV_${s.prefix}`,
    LOCKMGR_SWEEP_INTERVAL: '0.2',
    LOCKMGR_DRAIN_TIMEOUT: '2',
    LOCKMGR_LOG_FORMAT: 'json',
    ...s.env,
  });
}

/**
 * Why a daemon did not start, in one line: what it wrote to stderr last (the CLI's "lockmgr: ..."),
 * else the message of its last error-level JSON log line, else its last line.
 */
export function refusalMessage(out: string, err: string): string {
  const lines = (text: string) => text.split('\n').filter((l) => l.trim() !== '');
  const stderr = lines(err);
  if (stderr.length) return stderr[stderr.length - 1]!;
  const stdout = lines(out);
  for (let i = stdout.length - 1; i >= 0; i--) {
    try {
      const entry = JSON.parse(stdout[i]!) as { level?: unknown; message?: unknown };
      if (entry.level === 'error' && typeof entry.message === 'string') return entry.message;
    } catch {
      // not a JSON line
    }
  }
  return stdout[stdout.length - 1] ?? '';
}

/** Start a daemon process and return at once (it may still be connecting, or about to fail). */
export function launchDaemon(settings: DaemonSettings): RunningDaemon & { stdout(): string; stderr(): string } {
  const child = spawn(process.execPath, [DAEMON_CLI, 'daemon'], { env: envOf(settings), stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out = (out + d).slice(-200_000)));
  child.stderr!.on('data', (d: Buffer) => (err = (err + d).slice(-200_000)));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let gone = false;
  void exited.then(() => (gone = true));
  const daemon: RunningDaemon = {
    pid: child.pid!,
    child,
    output: () => out + err,
    exited,
    signal: (sig) => {
      if (!gone) child.kill(sig);
    },
    stop: async (graceMs = 5000) => {
      if (gone) return;
      child.kill('SIGCONT');
      child.kill('SIGTERM');
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<void>((r) => (timer = setTimeout(r, graceMs)));
      await Promise.race([exited, late]);
      clearTimeout(timer);
      if (!gone) {
        child.kill('SIGKILL');
        await exited;
      }
    },
    get alive() {
      return !gone;
    },
  };
  return Object.assign(daemon, { stdout: () => out, stderr: () => err });
}

/** Start a daemon; resolves when it logs "ready", or when it exits or fails to get ready in `readyMs`. */
export async function tryStartDaemon(settings: DaemonSettings, readyMs = 20_000): Promise<DaemonStart> {
  const daemon = launchDaemon(settings);
  const deadline = Date.now() + readyMs;
  while (!READY.test(daemon.stdout())) {
    if (!daemon.alive) {
      const code = await daemon.exited;
      return { ready: false, code, message: refusalMessage(daemon.stdout(), daemon.stderr()), output: daemon.output() };
    }
    if (Date.now() > deadline) {
      await daemon.stop(1000);
      const why = refusalMessage(daemon.stdout(), daemon.stderr());
      return { ready: false, code: null, message: `not ready within ${readyMs} ms: ${why}`, output: daemon.output() };
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  return { ready: true, daemon };
}

/** Start a daemon that must serve; throws with its output if it does not. */
export async function startDaemon(settings: DaemonSettings): Promise<RunningDaemon> {
  const r = await tryStartDaemon(settings);
  if (!r.ready) throw new Error(`daemon did not start (exit ${r.code}): ${r.message}\n${r.output.slice(-4000)}`);
  return r.daemon;
}
