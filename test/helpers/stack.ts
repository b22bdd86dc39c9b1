/**
 * A running lockmgr for integration tests: a real nats-server, a real database, daemons (in this
 * process or as child processes of the built CLI) and clients.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { LockClient } from '../../client/index';
import { LockDaemon } from '../../daemon/lock-daemon';
import { createLogger } from '../../daemon/logger';
import type { DaemonConfig } from '../../daemon/config';
import { createTestDatabase, type StoreKind, type TestDatabase } from './databases';
import { startNatsServer, type NatsServer } from './nats-server';

export const ROOT = join(__dirname, '..', '..');
export const CLI = join(ROOT, 'dist', 'cli', 'main.js');

export interface StackOptions {
  store: StoreKind;
  daemons?: number;
  config?: Partial<DaemonConfig>;
  /** Reuse a server (e.g. one a test stops and restarts). */
  nats?: NatsServer;
  /** The prefix, when a test must know it before the daemons start (a unique one by default). */
  prefix?: string;
}

export interface Stack {
  nats: NatsServer;
  db: TestDatabase;
  prefix: string;
  daemons: LockDaemon[];
  client: LockClient;
  newClient(opts?: { locked_by?: string; timeout?: number; sessionTtl?: number }): Promise<LockClient>;
  startDaemon(config?: Partial<DaemonConfig>): Promise<LockDaemon>;
  stop(): Promise<void>;
}

let prefixes = 0;

/** In-process daemons log nothing unless LOCKMGR_TEST_LOG names a level (tests provoke errors on purpose). */
export function quietLogger() {
  const level = process.env.LOCKMGR_TEST_LOG as 'debug' | undefined;
  return createLogger({ level: level ?? 'error', format: 'pretty', silent: level === undefined });
}

export async function startStack(opts: StackOptions): Promise<Stack> {
  const nats = opts.nats ?? (await startNatsServer());
  const db = await createTestDatabase(opts.store);
  const prefix = opts.prefix ?? `t${process.pid}x${++prefixes}`;
  const clients: LockClient[] = [];
  const daemons: LockDaemon[] = [];
  const base: Partial<DaemonConfig> = {
    natsUrl: nats.url,
    db: db.url,
    prefix,
    eventsStream: `EV_${prefix}`,
    sweepInterval: 0.2,
    drainTimeout: 5,
    ...opts.config,
  };
  const startDaemon = async (config: Partial<DaemonConfig> = {}) => {
    const d = new LockDaemon({ config: { ...base, ...config }, logger: quietLogger() });
    daemons.push(d);
    await d.start();
    return d;
  };
  for (let i = 0; i < (opts.daemons ?? 1); i++) await startDaemon();
  const newClient = async (o: { locked_by?: string; timeout?: number; sessionTtl?: number } = {}) => {
    const c = await LockClient.connect({ servers: nats.url, prefix, ...o });
    clients.push(c);
    return c;
  };
  const client = await newClient();
  return {
    nats,
    db,
    prefix,
    daemons,
    client,
    newClient,
    startDaemon,
    stop: async () => {
      await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
      await Promise.all(daemons.map((d) => d.stop(2000).catch(() => undefined)));
      if (!opts.nats) await nats.stop();
      await db.drop().catch(() => undefined);
    },
  };
}

export interface DaemonProcess {
  child: ChildProcess;
  output(): string;
  /** Resolves with the exit code. */
  exited: Promise<number | null>;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/** Run the built `lockmgr daemon` as a child process; resolves once it logs "ready". */
export async function spawnDaemon(env: Record<string, string>, args: string[] = []): Promise<DaemonProcess> {
  const child = spawn(process.execPath, [CLI, 'daemon', '--log-format', 'json', ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const deadline = Date.now() + 20_000;
  while (!/"message":"ready"/.test(out)) {
    if (child.exitCode !== null) throw new Error(`daemon exited with ${child.exitCode}:\n${out}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`daemon not ready within 20s:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    child,
    output: () => out,
    exited,
    stop: async (signal: NodeJS.Signals = 'SIGTERM') => {
      if (child.exitCode === null) child.kill(signal);
      return exited;
    },
  };
}
