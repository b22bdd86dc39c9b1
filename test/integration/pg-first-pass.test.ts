/**
 * PostgreSQL batches run the first statement of all their operations (lock inserts, unlocks) in
 * one round trip. Results must be exactly what the operations get one by one: when an insert
 * meets an existing row, that pass is undone and the batch runs statement by statement. The
 * statements are observed through the daemon's diagnostic channels.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { Query } from 'pg';
import { Batcher } from '../../daemon/batcher';
import { CHANNELS } from '../../daemon/diagnostics';
import { ops } from '../../daemon/lock-ops';
import { PostgresStore } from '../../daemon/store/postgres/postgres-store';
import type { CommittedEvent, Requester } from '../../daemon/store/store';
import { createTestDatabase, type TestDatabase } from '../helpers/databases';
import { sqlQuery } from '../helpers/events';

const who: Requester = { lockedBy: 'tester', process: 7, client: null };

/** A query as pg puts it on a connection. */
type WireQuery = { text: string; name?: string; callback?: (err: unknown, res: unknown) => void };

/** Shows `see` every query the pg client sends, just before it goes; undone with the spy's mockRestore. */
function watchSubmits(see: (query: WireQuery) => void) {
  const submit = Query.prototype.submit;
  return jest.spyOn(Query.prototype, 'submit').mockImplementation(function (this: WireQuery, ...args: unknown[]) {
    see(this);
    return (submit as (...a: unknown[]) => unknown).apply(this, args);
  } as typeof Query.prototype.submit);
}

describe('postgres: first statements of a batch in one round trip', () => {
  let tdb: TestDatabase;
  let store: PostgresStore;
  let statements: string[];
  let events: CommittedEvent[];
  let batcher: Batcher;
  const onStatement = (m: unknown) => statements.push((m as { sql: string }).sql);
  const onTransaction = () => undefined;

  beforeAll(async () => {
    tdb = await createTestDatabase('postgres');
    // One transaction at a time, so that requests sent together share one batch.
    store = new PostgresStore({ url: tdb.url, daemonId: 'T', poolSize: 2 });
    await store.migrate();
    // Statements are reported only while someone follows the transactions too.
    subscribe(CHANNELS.transaction, onTransaction);
    subscribe(CHANNELS.statement, onStatement);
  });
  beforeEach(() => {
    statements = [];
    events = [];
    batcher = new Batcher(store, { onCommit: (committed) => events.push(...committed) });
  });
  afterAll(async () => {
    unsubscribe(CHANNELS.statement, onStatement);
    unsubscribe(CHANNELS.transaction, onTransaction);
    await store?.close();
    await tdb?.drop();
  });

  /** A `get` of `name` that does not wait. */
  const getReq = (name: string, requestId: string | null = null) => ({
    name,
    expiresMs: 60_000,
    lockedBy: who.lockedBy,
    process: who.process,
    waitMs: 0,
    progress: false,
    session: null,
    requestId,
    attempt: 1,
  });
  const set = async (name: string) => {
    const r = await batcher.run(ops.get(getReq(name), who));
    return 'granted' in r ? { granted: r.granted.token } : { held: r.held.token };
  };
  const release = (name: string, token: number | null = null) => batcher.run(ops.unlock({ name, token, requestId: null, attempt: 1 }, who));
  const count = (pattern: RegExp) => statements.filter((s) => pattern.test(s)).length;

  it('grants and releases of a batch go in one statement, with the results and events of one by one', async () => {
    const before = await set('fp.held');
    statements = [];
    events = [];
    const [a, b, gone, missing] = await Promise.all([set('fp.a'), set('fp.b'), release('fp.held'), release('fp.never')]);
    expect(count(/lockmgr_first_pass/)).toBe(1);
    expect(count(/lockmgr_grant|DELETE FROM lockmgr_locks/)).toBe(0);
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
    expect(count(/lockmgr_grant/)).toBe(2); // each operation again, on its own
    expect(busy).toEqual({ held: held.granted });
    const created = (fresh as { granted: number }).granted;
    expect(events.map((e) => `${e.type} ${e.lock.name} ${e.lock.token}`)).toEqual([`created fp.fresh ${created}`]);
    const rows = await sqlQuery(tdb, `SELECT name, token FROM lockmgr_locks WHERE name IN ('fp.busy', 'fp.fresh') ORDER BY name`);
    expect(rows.map((r) => [r.name, Number(r.token)])).toEqual([
      ['fp.busy', held.granted],
      ['fp.fresh', created],
    ]);
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

  it('a lone grant or release, with a request id, takes two round trips: what opens the transaction is sent together, and so is what ends it', async () => {
    // Every statement the store's connections put on the wire, and how many were unanswered at
    // that moment: a statement sent while none is in flight starts a round trip.
    const sent: { sql: string; waiting: number }[] = [];
    let inFlight = 0;
    const spy = watchSubmits((query) => {
      sent.push({ sql: query.text, waiting: inFlight });
      inFlight += 1;
      const answered = query.callback;
      query.callback = (err, res) => {
        inFlight -= 1;
        answered?.(err, res);
      };
    });
    try {
      const once = (id: string) => ({ id, copy: false, keepMs: 60_000, outcome: () => ({ done: true }) });
      await batcher.run({ ...ops.get(getReq('fp.rt', 'rt-1'), who), once: once('rt-1') });
      const grant = sent.splice(0);
      await batcher.run({ ...ops.unlock({ name: 'fp.rt', token: null, requestId: 'rt-2', attempt: 1 }, who), once: once('rt-2') });
      const release = sent.splice(0);
      for (const statements of [grant, release]) {
        expect(statements.filter((s) => s.waiting === 0)).toHaveLength(2);
        expect(statements.map((s) => /BEGIN|lockmgr_requests|lockmgr_first_pass|lockmgr_outbox|COMMIT/.exec(s.sql)?.[0])).toEqual([
          'BEGIN',
          'lockmgr_requests', // the request id looked up
          'lockmgr_first_pass',
          'lockmgr_requests', // its outcome recorded
          'lockmgr_outbox',
          'COMMIT',
        ]);
      }
    } finally {
      spy.mockRestore();
    }
    expect(events.map((e) => `${e.type} ${e.lock.name}`)).toEqual(['created fp.rt', 'released fp.rt']);
  });

  it('statements on tables whose size swings are planned at each run; the others are prepared once per connection', async () => {
    // A plan a connection prepared while lockmgr_requests or lockmgr_outbox was nearly empty reads
    // the whole table once it has grown: those statements go unnamed (planned at each run).
    const named = new Map<string, boolean>();
    const spy = watchSubmits((query) => named.set(query.text.split(' ').slice(0, 3).join(' '), Boolean(query.name)));
    try {
      const once = (id: string) => ({ id, copy: false, keepMs: 60_000, outcome: () => ({ done: true }) });
      await batcher.run({ ...ops.get(getReq('fp.plan', 'plan-1'), who), once: once('plan-1') });
      store.delivered(events.map((e) => e.seq)); // removed by the next transaction
      await batcher.run({ ...ops.unlock({ name: 'fp.plan', token: null, requestId: 'plan-2', attempt: 1 }, who), once: once('plan-2') });
      expect(await store.outboxHas([events[0]!.seq])).toEqual(new Set());
    } finally {
      spy.mockRestore();
    }
    expect(named.get('UPDATE lockmgr_requests SET')).toBe(false); // the request-id look-up
    expect(named.get('DELETE FROM lockmgr_outbox')).toBe(false); // delivered rows removed
    expect(named.get('SELECT seq FROM')).toBe(false); // outboxHas
    expect(named.get('SELECT op, l_name')).toBe(true); // the first pass
    expect(named.get('INSERT INTO lockmgr_requests')).toBe(true);
  });

  it('a batch naming one lock twice runs one by one, in arrival order', async () => {
    statements = [];
    const [first, second] = await Promise.all([set('fp.twice'), set('fp.twice')]);
    expect(count(/lockmgr_first_pass/)).toBe(0);
    expect(second).toEqual({ held: (first as { granted: number }).granted });
  });
});
