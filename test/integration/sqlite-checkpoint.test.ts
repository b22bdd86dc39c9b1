/**
 * SQLite WAL checkpoints run in a worker thread: what the daemon's connection writes reaches the
 * database file without the writer checkpointing, and the writer takes over if the worker is off.
 */
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Database } from '../../daemon/store/database';
import { migrate } from '../../daemon/store/migrations';

async function writeAndMeasure(checkpointIntervalMs: number): Promise<{ dbFile: number; autocheckpoint: number }> {
  const dir = mkdtempSync(join(tmpdir(), 'lockmgr-ckpt-'));
  const file = join(dir, 'locks.sqlite');
  const db = new Database({ url: file, checkpointIntervalMs });
  try {
    await migrate({ sequelize: db.sequelize, dialect: 'sqlite' });
    const conn = await db.connect();
    const before = statSync(file).size;
    // About 2 MB of outbox rows in one transaction: fewer pages than SQLite's own checkpoint
    // threshold (1000).
    const payload = 'x'.repeat(1000);
    await conn.begin();
    for (let i = 0; i < 2000; i++) {
      await conn.query('INSERT INTO lockmgr_outbox (event_id, type, name, lock, cause, daemon, at) VALUES (?, ?, ?, ?, ?, ?, ?)', [
        `e${i}`, 'created', `n${i}`, payload, '{}', 'd', i,
      ]);
    }
    await conn.exec('COMMIT');
    const [{ wal_autocheckpoint: autocheckpoint }] = (await conn.query('PRAGMA wal_autocheckpoint')) as { wal_autocheckpoint: number }[];
    conn.release();
    await new Promise((r) => setTimeout(r, 500));
    return { dbFile: statSync(file).size - before, autocheckpoint: Number(autocheckpoint) };
  } finally {
    await db.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('SQLite WAL checkpoints', () => {
  it('a worker thread copies the WAL into the database file; the writer does not checkpoint', async () => {
    const { dbFile, autocheckpoint } = await writeAndMeasure(20);
    expect(autocheckpoint).toBe(0);
    expect(dbFile).toBeGreaterThan(1_500_000);
  });

  it('with the interval at 0, SQLite checkpoints inside commits, as by default', async () => {
    const { dbFile, autocheckpoint } = await writeAndMeasure(0);
    expect(autocheckpoint).toBe(1000);
    // Below the threshold nothing has been checkpointed yet: the rows are still only in the WAL.
    expect(dbFile).toBeLessThan(500_000);
  });
});
