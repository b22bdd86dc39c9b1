/**
 * SQLite: fencing tokens and event seqs are drawn in memory by the one writer and reserved in
 * the database a block at a time. They must grow and never repeat, across restarts and across
 * the migration that took the outbox off AUTOINCREMENT.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { Batcher } from '../../daemon/batcher';
import { acquire } from '../../daemon/lock-ops';
import { ReservedSeries } from '../../daemon/store/sqlite/reserved-series';
import { SqliteStore } from '../../daemon/store/sqlite/sqlite-store';
import type { CommittedEvent } from '../../daemon/store/store';

const who = { lockedBy: 'test', process: 1, client: null };

describe('SQLite token and event numbering', () => {
  let dir: string;
  let file: string;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'lockmgr-numbering-'));
    file = join(dir, 'locks.sqlite');
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const openStore = () => new SqliteStore({ file, daemonId: 'd', checkpointIntervalMs: 0 });
  /** Statements on the file through a connection of the test's own (the store closed or idle). */
  function sql<T = Record<string, unknown>>(statement: string, ...params: unknown[]): T[] {
    const raw = new BetterSqlite3(file);
    try {
      const stmt = raw.prepare(statement);
      if (stmt.reader) return stmt.all(...params) as T[];
      stmt.run(...params);
      return [];
    } finally {
      raw.close();
    }
  }
  const grantWith = (batcher: Batcher) => async (name: string) => {
    const r = await batcher.run({ run: (tx) => acquire(tx, name, null, who, 'set') });
    return 'granted' in r ? r.granted.token : -1;
  };

  /** Open the store, grant `names`, close; the tokens granted and the event seqs committed. */
  async function grant(names: string[]): Promise<{ tokens: number[]; seqs: number[]; reserved: Record<string, number> }> {
    const store = openStore();
    const seqs: number[] = [];
    const tokens: number[] = [];
    try {
      await store.migrate();
      const batcher = new Batcher(store, { onCommit: (events: CommittedEvent[]) => seqs.push(...events.map((e) => e.seq)) });
      for (const name of names) tokens.push(await grantWith(batcher)(name));
    } finally {
      await store.close();
    }
    const rows = sql<{ name: string; value: number }>('SELECT name, value FROM lockmgr_counters');
    return { tokens, seqs, reserved: Object.fromEntries(rows.map((r) => [r.name, Number(r.value)])) };
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
    const store = openStore();
    try {
      await store.migrate();
      const batcher = new Batcher(store);
      const grantOne = grantWith(batcher);
      expect(await grantOne('a')).toBe(1);
      await expect(
        batcher.run({
          run: async (tx) => {
            await acquire(tx, 'b', null, who, 'set');
            throw new Error('broken after drawing a token');
          },
        }),
      ).rejects.toThrow('broken after drawing a token');
      expect(await grantOne('c')).toBe(2);
    } finally {
      await store.close();
    }
    expect(sql('SELECT name FROM lockmgr_locks ORDER BY name')).toEqual([{ name: 'a' }, { name: 'c' }]);
  });

  it('migrating an outbox numbered by AUTOINCREMENT keeps its rows and goes on after its last number', async () => {
    const store = openStore();
    try {
      // The schema as it was before 0003: apply only the first two migrations.
      const applied = await store.migrate({ upTo: '0002-create-event-outbox' });
      expect(applied).toEqual(['0001-create-locks', '0002-create-event-outbox']);
      const insert = `INSERT INTO lockmgr_outbox (event_id, type, name, lock, cause, daemon, at) VALUES (?, 'created', ?, '{}', '{}', 'd', 0)`;
      for (let i = 1; i <= 5; i++) sql(insert, `e${i}`, `n${i}`);
      // Delivered and removed: AUTOINCREMENT still remembers 5, the table's last row is 3.
      sql('DELETE FROM lockmgr_outbox WHERE seq > 3');

      const upTo = '0003-sqlite-outbox-seq-from-counter';
      expect(await store.migrate({ upTo })).toEqual([upTo]);
      expect(sql('SELECT seq, event_id FROM lockmgr_outbox ORDER BY seq')).toEqual([
        { seq: 1, event_id: 'e1' },
        { seq: 2, event_id: 'e2' },
        { seq: 3, event_id: 'e3' },
      ]);
      await store.migrate(); // the rest, which today's lock statements need
      const seqs: number[] = [];
      const batcher = new Batcher(store, { onCommit: (events) => seqs.push(...events.map((e) => e.seq)) });
      await grantWith(batcher)('x');
      expect(seqs).toEqual([6]);
    } finally {
      await store.close();
    }
  });
});
