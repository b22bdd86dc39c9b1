/**
 * Runs the built `lockmgr` binary (dist/cli/main.js) as a child process, the way an operator or a
 * script would, with an environment free of the caller's LOCKMGR_* variables.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { Readable } from 'node:stream';
import { shellWords } from '../../cli/run';
import { CLI } from './stack';

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface CliOptions {
  env?: Record<string, string | undefined>;
  /** Written to stdin, which is then closed. Without it stdin is closed at once. */
  input?: string;
  /**
   * Stdin on a terminal, as someone typing at it: a pseudo-terminal from util-linux's `script`,
   * `input` typed into it (then end of input). Stdout and stderr stay pipes of their own.
   */
  terminal?: boolean;
  cwd?: string;
  timeoutMs?: number;
}

/** process.env without LOCKMGR_* (so a developer's settings cannot leak into a test). */
export function cleanEnv(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('LOCKMGR_')) env[k] = v;
  for (const [k, v] of Object.entries(extra)) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  return env;
}

export interface CliProcess {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  done: Promise<CliResult>;
}

export function startCli(args: string[], opts: CliOptions = {}): CliProcess {
  const options = { env: cleanEnv(opts.env), cwd: opts.cwd };
  let child: ChildProcess;
  let out: [Readable, Readable];
  if (opts.terminal) {
    // `script` runs the command on a new terminal and copies its own stdin there (echoed on its
    // stdout, which is left out); fds 3 and 4 carry the command's stdout and stderr.
    const command = `exec ${shellWords([process.execPath, CLI, ...args])} 1>&3 2>&4`;
    child = spawn('script', ['-q', '-e', '-c', command, '/dev/null'], { ...options, stdio: ['pipe', 'ignore', 'inherit', 'pipe', 'pipe'] });
    out = [child.stdio[3] as Readable, child.stdio[4] as Readable];
  } else {
    child = spawn(process.execPath, [CLI, ...args], { ...options, stdio: ['pipe', 'pipe', 'pipe'] });
    out = [child.stdout!, child.stderr!];
  }
  let stdout = '';
  let stderr = '';
  out[0].on('data', (d) => (stdout += d));
  out[1].on('data', (d) => (stderr += d));
  child.stdin!.on('error', () => undefined);
  if (opts.input !== undefined) child.stdin!.end(opts.input);
  else child.stdin!.end();
  const timeoutMs = opts.timeoutMs ?? 20_000;
  const done = new Promise<CliResult>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`lockmgr ${args.join(' ')} did not finish within ${timeoutMs} ms\nstdout: ${stdout}\nstderr: ${stderr}`));
    }, timeoutMs);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
  return { child, stdout: () => stdout, stderr: () => stderr, done };
}

/** Run `lockmgr <args>` to completion. */
export function runCli(args: string[], opts: CliOptions = {}): Promise<CliResult> {
  return startCli(args, opts).done;
}

/** Poll until `fn` returns true (or throw after `timeoutMs`). */
export async function until(fn: () => boolean | Promise<boolean>, timeoutMs = 10_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Retry `fn` until it succeeds or `timeoutMs` pass (a server or database coming back). */
export async function eventually<T>(fn: () => Promise<T>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}
