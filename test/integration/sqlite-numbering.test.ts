/**
 * SQLite: fencing tokens and event seqs are drawn in memory by the one writer and reserved in
 * the database a block at a time. They must grow and never repeat, across restarts and across
 * the migration that took the outbox off AUTOINCREMENT.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Database } from '../../daemon/store/database';
import { acquire } from '../../daemon/store/lock-ops';
import { migrate } from '../../daemon/store/migrations';
import { Batcher, type CommittedEvent, ReservedSeries } from '../../daemon/store/transaction';

const who = { lockedBy: 'test', process: 1, client: null };

describe('SQLite token and event numbering', () => {
  let dir: string;
  let file: string;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'lockmgr-numbering-'));
    file = join(dir, 'locks.sqlite');
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  /** Open the database, grant `names`, close; the tokens granted and the event seqs committed. */
  async function grant(names: string[]): Promise<{ tokens: number[]; seqs: number[]; reserved: Record<string, number> }> {
    const db = new Database({ url: file, checkpointIntervalMs: 0 });
    const seqs: number[] = [];
    try {
      await migrate({ sequelize: db.sequelize, dialect: 'sqlite' });
      const batcher = new Batcher(db, { daemonId: 'd', onCommit: (events: CommittedEvent[]) => seqs.push(...events.map((e) => e.seq)) });
      const tokens: number[] = [];
      for (const name of names) {
        const r = await batcher.run((tx) => acquire(tx, name, null, who, 'set'));
        if (!('granted' in r)) throw new Error(`${name} not granted`);
        tokens.push(r.granted.token);
      }
      const conn = await db.connect();
      const rows = await conn.query('SELECT name, value FROM lockmgr_counters');
      return { tokens, seqs, reserved: Object.fromEntries(rows.map((r) => [String(r.name), Number(r.value)])) };
    } finally {
      await db.close();
    }
  }

  it('numbers grow by one within a run; the database holds a reservation a block ahead', async () => {
    const { tokens, seqs, reserved } = await grant(['a', 'b', 'c']);
    expect(tokens).toEqual([1, 2, 3]);
    expect(seqs).toEqual([1, 2, 3]);
    expect(reserved).toEqual({ token: 1 + ReservedSeries.BLOCK, event_seq: 1 + ReservedSeries.BLOCK });
  });

  it('after a restart, numbers go on beyond everything reserved: they never repeat', async () => {
    const first = await grant(['a', 'b']);
    const second = await grant(['c', 'd']);
    expect(second.tokens[0]).toBe(first.reserved.token! + 1);
    expect(second.seqs[0]).toBe(first.reserved.event_seq! + 1);
    expect(second.tokens[1]).toBe(second.tokens[0]! + 1);
  });

  it('a transaction that fails uses no numbers', async () => {
    const db = new Database({ url: file, checkpointIntervalMs: 0 });
    try {
      await migrate({ sequelize: db.sequelize, dialect: 'sqlite' });
      const batcher = new Batcher(db, { daemonId: 'd' });
      const grantOne = async (name: string) => {
        const r = await batcher.run((tx) => acquire(tx, name, null, who, 'set'));
        return 'granted' in r ? r.granted.token : -1;
      };
      expect(await grantOne('a')).toBe(1);
      await expect(
        batcher.run(async (tx) => {
          await acquire(tx, 'b', null, who, 'set');
          throw new Error('broken after drawing a token');
        }),
      ).rejects.toThrow('broken after drawing a token');
      expect(await grantOne('c')).toBe(2);
      const conn = await db.connect();
      expect(await conn.query(`SELECT name FROM lockmgr_locks ORDER BY name`)).toEqual([{ name: 'a' }, { name: 'c' }]);
    } finally {
      await db.close();
    }
  });

  it('migrating an outbox numbered by AUTOINCREMENT keeps its rows and goes on after its last number', async () => {
    const db = new Database({ url: file, checkpointIntervalMs: 0 });
    try {
      // The schema as it was before 0003: apply only the first two migrations.
      const applied = await migrate({ sequelize: db.sequelize, dialect: 'sqlite', upTo: '0002-create-event-outbox' });
      expect(applied).toEqual(['0001-create-locks', '0002-create-event-outbox']);
      const insert = `INSERT INTO lockmgr_outbox (event_id, type, name, lock, cause, daemon, at) VALUES (?, 'created', ?, '{}', '{}', 'd', 0)`;
      for (let i = 1; i <= 5; i++) await db.sequelize.query(insert, { replacements: [`e${i}`, `n${i}`] });
      // Delivered and removed: AUTOINCREMENT still remembers 5, the table's last row is 3.
      await db.sequelize.query('DELETE FROM lockmgr_outbox WHERE seq > 3');

      const upTo = '0003-sqlite-outbox-seq-from-counter';
      expect(await migrate({ sequelize: db.sequelize, dialect: 'sqlite', upTo })).toEqual([upTo]);
      const [rows] = await db.sequelize.query('SELECT seq, event_id FROM lockmgr_outbox ORDER BY seq');
      expect(rows).toEqual([
        { seq: 1, event_id: 'e1' },
        { seq: 2, event_id: 'e2' },
        { seq: 3, event_id: 'e3' },
      ]);
      const seqs: number[] = [];
      const batcher = new Batcher(db, { daemonId: 'd', onCommit: (events) => seqs.push(...events.map((e) => e.seq)) });
      await batcher.run((tx) => acquire(tx, 'x', null, who, 'set'));
      expect(seqs).toEqual([6]);
    } finally {
      await db.close();
    }
  });
});
