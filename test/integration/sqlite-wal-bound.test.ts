/**
 * The SQLite `-wal` file stays within `sqliteWalLimit` under sustained writes. Passive checkpoints
 * alone (the worker thread's) never let the WAL start again from its beginning while the writer
 * keeps committing: it grew by hundreds of MB in seconds. Here requests go through the Batcher
 * without pause for a few seconds, with a small limit, while another thread samples the file's
 * size every millisecond; the WAL must restart again and again, and the file never pass the limit.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { validateRequest } from '../../shared/validate';
import { Batcher } from '../../daemon/batcher';
import { ops } from '../../daemon/lock-ops';
import { SqliteStore } from '../../daemon/store/sqlite/sqlite-store';
import type { Requester } from '../../daemon/store/store';

const LIMIT_MB = 3;
const LIMIT_BYTES = LIMIT_MB * 1024 * 1024;
const LOAD_MS = 5000;
const CLIENTS = 32;
const who: Requester = { lockedBy: 'load', process: 1, client: null };

/**
 * Samples the `-wal` file every ms in a thread of its own (the writer's thread is busy): its
 * largest size, and how many times the WAL restarted (the header's checkpoint sequence changed).
 */
const SAMPLER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const fs = require('node:fs');
const header = Buffer.alloc(16);
let max = 0, restarts = 0, seq = -1;
const sample = () => {
  let fd;
  try {
    fd = fs.openSync(workerData.wal, 'r');
    max = Math.max(max, fs.fstatSync(fd).size);
    if (fs.readSync(fd, header, 0, 16, 0) === 16) {
      const s = header.readUInt32BE(12);
      if (seq >= 0 && s !== seq) restarts += 1;
      seq = s;
    }
  } catch {
    // not created yet
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
};
const timer = setInterval(sample, 1);
parentPort.on('message', () => { clearInterval(timer); sample(); parentPort.postMessage({ max, restarts }); });
`;

interface WalFigures {
  maxBytes: number;
  restarts: number;
  requests: number;
}

async function sustainedLoad(checkpointIntervalMs: number): Promise<WalFigures> {
  const dir = mkdtempSync(join(tmpdir(), 'lockmgr-wal-'));
  const file = join(dir, 'locks.sqlite');
  const store = new SqliteStore({ file, daemonId: 'd', checkpointIntervalMs, walLimitMb: LIMIT_MB });
  const sampler = new Worker(SAMPLER_SOURCE, { eval: true, workerData: { wal: `${file}-wal` } });
  let relay: NodeJS.Timeout | undefined;
  try {
    await store.migrate();
    // The relay's part: delivered outbox rows are removed, so the database stays small.
    let lastSeq = 0;
    const batcher = new Batcher(store, { onCommit: (events) => (lastSeq = events.at(-1)?.seq ?? lastSeq) });
    relay = setInterval(() => void store.relayLease().removeThrough(lastSeq), 10);
    let requests = 0;
    const end = Date.now() + LOAD_MS;
    const client = async (i: number) => {
      for (let k = 0; Date.now() < end; k++) {
        const name = `wal.${i}.${k % 50}`;
        const r = await batcher.run(ops.get(validateRequest('get', { name, expires: 60 }), who));
        if ('granted' in r) await batcher.run(ops.unlock(validateRequest('unlock', { name, token: r.granted.token }), who));
        requests += 2;
      }
    };
    await Promise.all(Array.from({ length: CLIENTS }, (_, i) => client(i)));
    const figures = new Promise<{ max: number; restarts: number }>((resolve) => sampler.once('message', resolve));
    sampler.postMessage('stop');
    const { max, restarts } = await figures;
    return { maxBytes: max, restarts, requests };
  } finally {
    clearInterval(relay);
    await sampler.terminate();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('SQLite WAL bound (sqliteWalLimit)', () => {
  it('with checkpoints in a worker thread, the -wal file stays within the limit under sustained writes', async () => {
    const figures = await sustainedLoad(100);
    console.log(`worker checkpoints: ${JSON.stringify(figures)}`);
    expect(figures.maxBytes).toBeLessThanOrEqual(LIMIT_BYTES);
    expect(figures.restarts).toBeGreaterThanOrEqual(5); // the load wrote many times the limit
  });

  it("with SQLite's own checkpoints (interval 0), the -wal file stays within the limit too", async () => {
    const figures = await sustainedLoad(0);
    console.log(`SQLite's checkpoints: ${JSON.stringify(figures)}`);
    expect(figures.maxBytes).toBeLessThanOrEqual(LIMIT_BYTES);
    expect(figures.restarts).toBeGreaterThanOrEqual(5);
  });
});
