/**
 * SQLite WAL checkpoints run in a worker thread: what the daemon's connection writes reaches the
 * database file without the writer checkpointing, and the writer takes over if the worker is off.
 */
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { toLockRecord } from '../../daemon/lock-records';
import { SqliteStore } from '../../daemon/store/sqlite/sqlite-store';
import { sleep } from '../helpers/events';

/** Bytes the database file grew by after one transaction of about 2 MB of outbox rows. */
async function fileGrowth(checkpointIntervalMs: number): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'lockmgr-ckpt-'));
  const file = join(dir, 'locks.sqlite');
  const store = new SqliteStore({ file, daemonId: 'd', checkpointIntervalMs });
  try {
    await store.migrate();
    await store.transaction(async () => undefined); // opens the writer connection
    const before = statSync(file).size;
    // Fewer pages than SQLite's own checkpoint threshold (1000).
    const payload = 'x'.repeat(1000);
    await store.transaction(async (tx) => {
      for (let i = 0; i < 2000; i++) {
        const lock = toLockRecord({
          name: `n${i}`,
          locked_by: payload,
          lock_process: null,
          locked_until: null,
          created_at: i,
          updated_at: i,
          token: i,
          session_id: null,
        });
        tx.emit('created', lock, { locked_by: null, process_id: null, client: null, operation: 'test' });
      }
    });
    await sleep(500);
    return statSync(file).size - before;
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('SQLite WAL checkpoints', () => {
  it('a worker thread copies the WAL into the database file while the writer does not checkpoint', async () => {
    expect(await fileGrowth(20)).toBeGreaterThan(1_500_000);
  });

  it('with the interval at 0, SQLite checkpoints inside commits, as by default', async () => {
    // Below the threshold nothing has been checkpointed yet: the rows are still only in the WAL.
    expect(await fileGrowth(0)).toBeLessThan(500_000);
  });
});
