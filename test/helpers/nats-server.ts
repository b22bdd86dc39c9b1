/**
 * Starts a real nats-server (JetStream on) on a free port, for tests that need their own server
 * (to stop or restart it) and for isolation between test files.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface NatsServer {
  url: string;
  port: number;
  /** Stop it (SIGTERM by default; SIGKILL to simulate a crash). */
  stop(signal?: NodeJS.Signals): Promise<void>;
  /** Start it again on the same port with the same JetStream store. */
  restart(): Promise<void>;
  readonly storeDir: string;
}

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

async function waitForPort(port: number, child: ChildProcess, log: () => string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`nats-server exited with ${child.exitCode}: ${log()}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1', () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`nats-server did not listen on ${port}: ${log()}`);
}

export async function startNatsServer(opts: { jetstream?: boolean } = {}): Promise<NatsServer> {
  const dir = mkdtempSync(join(tmpdir(), 'lockmgr-nats-'));
  const port = await freePort();
  let child: ChildProcess;
  let output = '';
  const launch = async () => {
    const args = ['-a', '127.0.0.1', '-p', String(port)];
    if (opts.jetstream !== false) args.push('-js', '-sd', join(dir, 'js'));
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
