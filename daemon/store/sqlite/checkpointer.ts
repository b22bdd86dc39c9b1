/**
 * Moves SQLite's WAL checkpoints off the daemon's thread. With automatic checkpoints, every
 * thousandth page written makes one commit copy the WAL into the database file (and sync it)
 * while requests wait: a few milliseconds, once every couple of hundred commits. Here a worker
 * thread with a connection of its own runs passive checkpoints, which never block the writer,
 * every `intervalMs`; the writer's own automatic checkpoints are off while the worker runs and
 * come back if it stops. Passive checkpoints never let the WAL start again from its beginning
 * while the writer keeps committing: SqliteStore bounds the `-wal` file (`walLimitMb`).
 */
import { Worker } from 'node:worker_threads';

/** Runs in the worker: its own connection to the file, a passive checkpoint per tick. */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.driver);
const db = new Database(workerData.file, { fileMustExist: true, timeout: 100 });
const timer = setInterval(() => {
  try { db.pragma('wal_checkpoint(PASSIVE)'); } catch (err) { parentPort.postMessage(String(err && err.message)); }
}, workerData.intervalMs);
parentPort.on('message', () => { clearInterval(timer); db.close(); parentPort.close(); });
`;

export class Checkpointer {
  private worker?: Worker;

  /**
   * `onProblem` hears of a checkpoint that failed (it is tried again next tick); `onExit` of the
   * worker ending other than by stop(), when the writer must checkpoint for itself again.
   */
  constructor(
    private readonly file: string,
    private readonly intervalMs: number,
    private readonly onProblem: (message: string) => void,
    private readonly onExit: () => void,
  ) {}

  start(): void {
    const worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: { driver: require.resolve('better-sqlite3'), file: this.file, intervalMs: this.intervalMs },
    });
    worker.on('message', (m) => this.onProblem(String(m)));
    worker.on('error', (err) => this.onProblem(err.message));
    worker.on('exit', () => {
      if (this.worker === worker) {
        this.worker = undefined;
        this.onExit();
      }
    });
    worker.unref();
    this.worker = worker;
  }

  async stop(): Promise<void> {
    const worker = this.worker;
    this.worker = undefined;
    if (!worker) return;
    // Keep the process alive until the worker has closed its connection.
    worker.ref();
    const exited = new Promise((resolve) => worker.once('exit', resolve));
    worker.postMessage('stop');
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([exited, new Promise((r) => (timer = setTimeout(r, 1000)))]);
    clearTimeout(timer);
    await worker.terminate();
  }
}
