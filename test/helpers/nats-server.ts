/**
 * Starts a real nats-server (JetStream on) on a free port, for tests that need their own server
 * (to stop or restart it) and for isolation between test files.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, waitForPort } from '../../bench/lib/procs';

export { freePort };

export interface NatsServer {
  url: string;
  port: number;
  /** Stop it (SIGTERM by default; SIGKILL to simulate a crash). */
  stop(signal?: NodeJS.Signals): Promise<void>;
  /** Start it again on the same port with the same JetStream store. */
  restart(): Promise<void>;
  readonly storeDir: string;
  /** What the server wrote so far (its log: permission violations, say), across restarts. */
  log(): string;
}

export interface NatsServerOptions {
  jetstream?: boolean;
  /**
   * A configuration file's text (users and permissions, say), written to the server's directory
   * and passed with -c; the address, port and JetStream flags still come from the command line.
   */
  config?: string;
  /** A configuration file passed with -c as it is (a shipped example), instead of `config`. */
  configFile?: string;
  /** More command-line arguments (`--tlsverify`, `--user`...). */
  args?: string[];
}

export async function startNatsServer(opts: NatsServerOptions = {}): Promise<NatsServer> {
  const dir = mkdtempSync(join(tmpdir(), 'lockmgr-nats-'));
  const port = await freePort();
  let child: ChildProcess;
  let output = '';
  let configFile = opts.configFile;
  if (opts.config !== undefined) {
    configFile = join(dir, 'nats.conf');
    writeFileSync(configFile, opts.config);
  }
  const launch = async () => {
    const args = ['-a', '127.0.0.1', '-p', String(port)];
    if (configFile !== undefined) args.push('-c', configFile);
    if (opts.jetstream !== false) args.push('-js', '-sd', join(dir, 'js'));
    args.push(...(opts.args ?? []));
    child = spawn('nats-server', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout!.on('data', (d) => (output += d));
    child.stderr!.on('data', (d) => (output += d));
    child.on('error', (err) => (output += `\n${err.message} (is nats-server installed? apt-get install nats-server)`));
    await waitForPort(port, child, () => output);
  };
  await launch();
  const stop = async (signal: NodeJS.Signals = 'SIGTERM') => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill(signal);
    await exited;
  };
  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    storeDir: dir,
    log: () => output,
    stop,
    restart: async () => {
      await stop();
      await launch();
    },
  };
}

export function cleanupDir(dir: string): void {
  try {
    rmSync(dir, { recursive: true, force: true });
  } catch {
    // best effort
  }
}
