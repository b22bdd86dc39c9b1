/**
 * The processes a bench run needs: its own nats-server, lockmgr daemons started from the built
 * CLI, the bare echo responder, a private redis-server for the peers scenario; and what /proc
 * says about them (CPU time, resident memory).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect as netConnect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { connect, type NatsConnection } from 'nats';

/** The compiled tree this bench runs from (dist/, or the run's snapshot of it). */
export const DIST = join(__dirname, '..', '..');
/** The package root (the compiled tree always sits directly in it, so node_modules resolve). */
export const ROOT = join(DIST, '..');
export const CLI = join(DIST, 'cli', 'main.js');

/** Every child process the bench started and that still runs, to end them if the bench is interrupted. */
const live = new Set<ChildProcess>();
export function register<T extends ChildProcess>(child: T): T {
  live.add(child);
  child.once('exit', () => live.delete(child));
  return child;
}
/** Temporary directories to remove if the bench is interrupted. */
const temps = new Set<string>();
export function registerTemp(dir: string): string {
  temps.add(dir);
  return dir;
}
export function killAll(): void {
  for (const child of live) child.kill('SIGKILL');
  for (const dir of temps) rmSync(dir, { recursive: true, force: true });
}

/** True while a process with this pid exists (EPERM: it exists but is not ours). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

/** True when an executable `command` is in one of the PATH directories. */
export function onPath(command: string): boolean {
  return (process.env.PATH ?? '').split(delimiter).some((dir) => {
    if (!dir) return false;
    try {
      accessSync(join(dir, command), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/** Wait until `child` (a server, `what`) accepts TCP connections on `port`. */
export async function waitForPort(port: number, child: ChildProcess, log: () => string, what = 'nats-server'): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`${what} exited with ${child.exitCode}: ${log()}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = netConnect(port, '127.0.0.1', () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    await sleep(50);
  }
  throw new Error(`${what} did not listen on ${port}: ${log()}`);
}

export interface NatsServerProc {
  url: string;
  pid: number;
  stop(): Promise<void>;
}

/** A private nats-server with JetStream, on a free loopback port, its store in a temp dir. */
export async function startNatsServer(): Promise<NatsServerProc> {
  const dir = registerTemp(mkdtempSync(join(tmpdir(), 'lockmgr-bench-nats-')));
  const port = await freePort();
  let output = '';
  const child = register(
    spawn('nats-server', ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', join(dir, 'js')], {
      stdio: ['ignore', 'pipe', 'pipe'],
    }),
  );
  child.stdout!.on('data', (d) => (output += d));
  child.stderr!.on('data', (d) => (output += d));
  child.on('error', (err) => (output += `\n${err.message} (is nats-server on PATH?)`));
  await waitForPort(port, child, () => output);
  return {
    url: `nats://127.0.0.1:${port}`,
    pid: child.pid!,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await Promise.race([exited, sleep(5000)]);
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface RedisServerProc {
  port: number;
  pid: number;
  /** The options it was started with (after the port). */
  args: string[];
  stop(): Promise<void>;
}

/**
 * A private redis-server on a free loopback port, persistence off (no RDB snapshots, no
 * append-only file), its working directory a temp dir. `stop` ends it by its pid.
 */
export async function startRedisServer(): Promise<RedisServerProc> {
  const dir = registerTemp(mkdtempSync(join(tmpdir(), 'lockmgr-bench-redis-')));
  const port = await freePort();
  const args = ['--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir];
  const child = register(spawn('redis-server', ['--port', String(port), ...args], { stdio: ['ignore', 'pipe', 'pipe'] }));
  const t = track(child);
  child.on('error', () => undefined); // reported by waitForPort as an exit
  const stop = async () => {
    await stopChild(child, t.exited, 5000);
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await waitForPort(port, child, t.output, 'redis-server');
  } catch (err) {
    await stop();
    throw err;
  }
  return { port, pid: child.pid!, args, stop };
}

export interface ChildProc {
  pid: number;
  child: ChildProcess;
  output(): string;
  stop(): Promise<void>;
}

function track(child: ChildProcess): { output: () => string; exited: Promise<void> } {
  let out = '';
  child.stdout?.on('data', (d) => (out = (out + d).slice(-20_000)));
  child.stderr?.on('data', (d) => (out = (out + d).slice(-20_000)));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  return { output: () => out, exited };
}

async function stopChild(child: ChildProcess, exited: Promise<void>, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  await Promise.race([exited, sleep(graceMs)]);
  if (child.exitCode === null && child.signalCode === null) {
    child.kill('SIGKILL');
    await exited;
  }
}

/** Resolves once `subject` answers a request (the responder behind it is subscribed). */
export async function waitForResponder(
  nc: NatsConnection,
  subject: string,
  payload: string,
  child: ChildProc,
  timeoutMs = 30_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.child.exitCode !== null) throw new Error(`process exited with ${child.child.exitCode}:\n${child.output()}`);
    try {
      await nc.request(subject, new TextEncoder().encode(payload), { timeout: 1000 });
      return;
    } catch {
      if (Date.now() > deadline) throw new Error(`no answer on ${subject} within ${timeoutMs / 1000}s:\n${child.output()}`);
      await sleep(100);
    }
  }
}

export interface DaemonSpec {
  natsUrl: string;
  db: string;
  prefix: string;
  /** More `lockmgr daemon` flags, e.g. ['--events-jetstream', 'off']. */
  args?: string[];
}

/**
 * `node dist/cli/main.js daemon ...` as its own process; resolves once it answers requests.
 * The events stream is named after the prefix so runs never share one.
 */
export async function startDaemon(spec: DaemonSpec, probe: NatsConnection): Promise<ChildProc> {
  const args = [
    CLI,
    'daemon',
    '--nats-url',
    spec.natsUrl,
    '--db',
    spec.db,
    '--prefix',
    spec.prefix,
    '--events-stream',
    `EV_${spec.prefix}`,
    '--log-level',
    'warn',
    '--log-format',
    'json',
    ...(spec.args ?? []),
  ];
  const child = register(spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd: ROOT }));
  const t = track(child);
  const proc: ChildProc = { pid: child.pid!, child, output: t.output, stop: () => stopChild(child, t.exited, 20_000) };
  try {
    await waitForResponder(probe, `${spec.prefix}.is_locked`, '{"name":"bench.ready"}', proc);
  } catch (err) {
    await proc.stop();
    throw err;
  }
  return proc;
}

/** The bare NATS responder (bench/echo-responder.ts) in its own process. */
export async function startEcho(
  natsUrl: string,
  prefix: string,
  replySizes: Record<string, number>,
  probe: NatsConnection,
): Promise<ChildProc> {
  const child = register(
    spawn(process.execPath, [join(__dirname, '..', 'echo-responder.js'), natsUrl, prefix, JSON.stringify(replySizes)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    }),
  );
  const t = track(child);
  const proc: ChildProc = { pid: child.pid!, child, output: t.output, stop: () => stopChild(child, t.exited, 5000) };
  await waitForResponder(probe, `${prefix}.ping`, '', proc);
  return proc;
}

export async function natsConnect(url: string, name: string): Promise<NatsConnection> {
  return connect({ servers: url, name, maxReconnectAttempts: -1 });
}

// ---- /proc ----

const CLK_TCK = 100;

/** CPU seconds (user + system) a process has used, or NaN when it is gone. */
export function processCpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
  } catch {
    return NaN;
  }
}

/**
 * CPU seconds of the whole machine, summed over cores: `procs` is user+nice+system (what processes
 * are charged), `irq` is hard and soft interrupts (loopback networking lands much of its work
 * there, charged to no process), `steal` is time the hypervisor gave to other guests.
 */
export function machineCpuSeconds(): { busy: number; procs: number; irq: number; steal: number; total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!;
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = v;
  const total = user + nice + system + idle + iowait + irq + softirq + steal;
  return {
    busy: (total - idle - iowait) / CLK_TCK,
    procs: (user + nice + system) / CLK_TCK,
    irq: (irq + softirq) / CLK_TCK,
    steal: steal / CLK_TCK,
    total: total / CLK_TCK,
  };
}

/** VmRSS and VmHWM of a process, in MB. */
export function processMemoryMb(pid: number): { rssMb: number; peakMb: number } {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
    return { rssMb: kb('VmRSS') / 1024, peakMb: kb('VmHWM') / 1024 };
  } catch {
    return { rssMb: NaN, peakMb: NaN };
  }
}

export function loadAverage(): number[] {
  try {
    return readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).map(Number);
  } catch {
    return [];
  }
}
