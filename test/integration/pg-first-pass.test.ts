/**
 * PostgreSQL batches run the first statement of all their operations (lock inserts, unlocks) in
 * one round trip. Results must be exactly what the operations get one by one: when an insert
 * meets an existing row, that pass is undone and the batch runs statement by statement.
 */
import { Database, type SqlConnection } from '../../daemon/store/database';
import { acquire, type FirstStatement, type Requester, unlock } from '../../daemon/store/lock-ops';
import { migrate } from '../../daemon/store/migrations';
import { Batcher, type CommittedEvent } from '../../daemon/store/transaction';
import { createTestDatabase, type TestDatabase } from '../helpers/databases';

const who: Requester = { lockedBy: 'tester', process: 7, client: null };

describe('postgres: first statements of a batch in one round trip', () => {
  let tdb: TestDatabase;
  let db: Database;
  let statements: string[];
  let events: CommittedEvent[];
  let batcher: Batcher;

  beforeAll(async () => {
    tdb = await createTestDatabase('postgres');
    db = new Database({ url: tdb.url });
    await migrate({ sequelize: db.sequelize, dialect: db.dialect });
    // Record the statements each transaction sends (the connection itself is the real one).
    const connect = db.connect.bind(db);
    db.connect = async (): Promise<SqlConnection> => {
      const conn = await connect();
      const query = conn.query.bind(conn);
      conn.query = (sql, params) => {
        statements.push(sql);
        return query(sql, params);
      };
      return conn;
    };
  });
  beforeEach(() => {
    statements = [];
    events = [];
    batcher = new Batcher(db, { daemonId: 'T', onCommit: (committed) => events.push(...committed) });
  });
  afterAll(async () => {
    await db?.close();
    await tdb?.drop();
  });

  const insert = (name: string): FirstStatement => ({ kind: 'insert', name, expiresMs: 60_000, who });
  const set = (name: string) =>
    batcher.run(async (tx) => {
      const r = await acquire(tx, name, 60_000, who, 'set');
      return 'granted' in r ? { granted: r.granted.token } : { held: r.held.token };
    }, name, insert(name));
  const release = (name: string, token: number | null = null) =>
    batcher.run((tx) => unlock(tx, { name, token }, who), name, { kind: 'unlock', name, token });
  const count = (pattern: RegExp) => statements.filter((s) => pattern.test(s)).length;

  it('grants and releases of a batch go in one statement, with the results and events of one by one', async () => {
    const before = await set('fp.held');
    statements = [];
    events = [];
    const [a, b, gone, missing] = await Promise.all([set('fp.a'), set('fp.b'), release('fp.held'), release('fp.never')]);
    expect(count(/lockmgr_first_pass/)).toBe(1);
    expect(count(/lockmgr_insert_lock|DELETE FROM lockmgr_locks/)).toBe(0);
    expect(gone).toBe(true);
    expect(missing).toBe(false);
    const tokens = [(a as { granted: number }).granted, (b as { granted: number }).granted];
    expect(tokens[0]).toBeGreaterThan((before as { granted: number }).granted);
    expect(tokens[1]).toBeGreaterThan(tokens[0]!); // drawn in the batch's (name) order
    expect(events.map((e) => `${e.type} ${e.lock.name} ${e.lock.token}`)).toEqual([
      `created fp.a ${tokens[0]}`,
      `created fp.b ${tokens[1]}`,
      `released fp.held ${(before as { granted: number }).granted}`,
    ]);
  });

  it('an insert meeting a held lock undoes the pass: the batch runs one by one, nothing doubled', async () => {
    const held = (await set('fp.busy')) as { granted: number };
    statements = [];
    events = [];
    const [busy, fresh] = await Promise.all([set('fp.busy'), set('fp.fresh')]);
    expect(count(/lockmgr_first_pass/)).toBe(1);
    expect(count(/lockmgr_insert_lock/)).toBe(2); // each operation again, on its own
    expect(busy).toEqual({ held: held.granted });
    const created = (fresh as { granted: number }).granted;
    expect(events.map((e) => `${e.type} ${e.lock.name} ${e.lock.token}`)).toEqual([`created fp.fresh ${created}`]);
    const conn = await db.connect();
    try {
      const rows = await conn.query(`SELECT name, token FROM lockmgr_locks WHERE name IN ('fp.busy', 'fp.fresh') ORDER BY name`);
      expect(rows.map((r) => [r.name, Number(r.token)])).toEqual([
        ['fp.busy', held.granted],
        ['fp.fresh', created],
      ]);
    } finally {
      conn.release();
    }
  });

  it('an unlock with a stale token in the pass is refused as one by one: NOT_OWNER, the lock kept', async () => {
    const held = (await set('fp.owned')) as { granted: number };
    statements = [];
    const [stale, other] = await Promise.allSettled([release('fp.owned', held.granted - 1), set('fp.other')]);
    expect(count(/lockmgr_first_pass/)).toBe(1);
    expect(stale.status).toBe('rejected');
    expect((stale as PromiseRejectedResult).reason.code).toBe('NOT_OWNER');
    expect(other.status).toBe('fulfilled');
    expect(await release('fp.owned', held.granted)).toBe(true);
  });

  it('a batch naming one lock twice runs one by one, in arrival order', async () => {
    statements = [];
    const [first, second] = await Promise.all([set('fp.twice'), set('fp.twice')]);
    expect(count(/lockmgr_first_pass/)).toBe(0);
    expect(second).toEqual({ held: (first as { granted: number }).granted });
  });
});
