/**
 * Store conformance: one suite for the contract of daemon/store/store.ts, run against the
 * in-memory fake the unit tests use, SQLite (a fresh file) and PostgreSQL (a fresh database),
 * so that the fake cannot drift from the real stores and the two backends agree.
 *
 * Expiry is decided by each transaction's `now` (the database's clock on PostgreSQL): rows that
 * must be expired are inserted with `locked_until` at or before the `now` of the transaction
 * that inserts them, and later transactions' clocks are never earlier.
 */
import { rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { ops } from '../../daemon/lock-ops';
import { toLockRecord } from '../../daemon/lock-records';
import { PostgresStore } from '../../daemon/store/postgres/postgres-store';
import { SqliteStore } from '../../daemon/store/sqlite/sqlite-store';
import { DuplicateRequest, StoreInUse, type LockRow, type Store, type StoreTx } from '../../daemon/store/store';
import type { EventCause } from '../../shared/events';
import { createTestDatabase, type TestDatabase } from '../helpers/databases';
import { MemoryStore } from '../helpers/memory-store';
import { publicSessionId } from '../../shared/sessions';

type Kind = 'memory' | 'sqlite' | 'postgres';
const KINDS: Kind[] = ['memory', 'sqlite', 'postgres'];
const DAEMON = 'contract-daemon';
const who = { lockedBy: 'alice', process: 42, client: 'client-1' };
const cause: EventCause = { locked_by: 'alice', process_id: 42, client: 'client-1', operation: 'test' };
const MINUTE = 60_000;

async function openStore(kind: Kind): Promise<{ store: Store; cleanup(): Promise<void> }> {
  if (kind === 'memory') {
    const store = new MemoryStore({ daemonId: DAEMON });
    return { store, cleanup: () => store.close() };
  }
  const db: TestDatabase = await createTestDatabase(kind);
  const store =
    kind === 'sqlite'
      ? new SqliteStore({ file: db.url, daemonId: DAEMON, checkpointIntervalMs: 0 })
      : new PostgresStore({ url: db.url, daemonId: DAEMON, poolSize: 2 });
  try {
    await store.migrate();
  } catch (err) {
    await store.close();
    await db.drop();
    throw err;
  }
  return {
    store,
    cleanup: async () => {
      await store.close();
      await db.drop();
      if (kind === 'sqlite') rmSync(dirname(db.url), { recursive: true, force: true });
    },
  };
}

const names = (rows: readonly LockRow[]) => rows.map((r) => r.name);
const sorted = (items: readonly string[]) => [...items].sort();

describe.each(KINDS)('Store contract: %s', (kind) => {
  let store: Store;
  let cleanup: () => Promise<void>;

  beforeEach(async () => {
    ({ store, cleanup } = await openStore(kind));
  });
  afterEach(async () => {
    await cleanup();
  });

  /** The value of one committed transaction. */
  const run = async <T>(work: (tx: StoreTx) => Promise<T>): Promise<T> => (await store.transaction(work)).value;
  /** Insert `name` expiring `ms` after (or, negative, before) the moment of the insert; null: never. */
  const grant = (name: string, ms: number | null) => run((tx) => tx.insertLock(name, ms, who));

  it('declares its capabilities', () => {
    expect(store.kind).toBe(kind);
    expect(store.concurrency).toBeGreaterThanOrEqual(1);
    // Only PostgreSQL is shared between daemons.
    expect(store.soleWriter).toBe(kind !== 'postgres');
    if (store.soleWriter) expect(store.relayLease().held).toBe(true);
  });

  it('insertLock returns the new row with a token, and null while a row (even an expired one) has the name', async () => {
    const { row, now } = await run(async (tx) => ({ row: await tx.insertLock('a', MINUTE, who), now: tx.now }));
    expect(row).toEqual({
      name: 'a',
      locked_by: 'alice',
      lock_process: 42,
      locked_until: row!.created_at + MINUTE,
      created_at: row!.created_at,
      updated_at: row!.created_at,
      token: expect.any(Number),
      session_id: null,
    });
    // The lifetime counts from the moment of the grant, at or after the transaction's clock.
    expect(row!.created_at).toBeGreaterThanOrEqual(now);
    expect(row!.created_at).toBeLessThan(now + 5000);
    expect(row!.token).toBeGreaterThan(0);
    expect(await grant('a', MINUTE)).toBeNull();
    // The insert does not take over an expired row: deleteIfExpired must go first.
    await grant('stale', -1);
    expect(await grant('stale', MINUTE)).toBeNull();
    const never = await grant('never', null);
    expect(never?.locked_until).toBeNull();
  });

  it('fencing tokens grow strictly across grants and releases, within and across transactions', async () => {
    const tokens: number[] = [];
    const take = (row: LockRow | null) => tokens.push(row!.token);
    take(await grant('a', MINUTE));
    await run((tx) => tx.deleteLock('a', null));
    take(await grant('a', MINUTE));
    await run(async (tx) => {
      take(await tx.insertLock('b', null, who));
      await tx.deleteLock('b', null);
      take(await tx.insertLock('b', null, who));
      take(await tx.insertLock('c', null, who));
    });
    take(await grant('d', MINUTE));
    expect(tokens).toHaveLength(6);
    for (let i = 1; i < tokens.length; i++) expect(tokens[i]).toBeGreaterThan(tokens[i - 1]!);
  });

  it('deleteIfExpired deletes only a lock expired by the transaction clock (locked_until <= now)', async () => {
    await run(async (tx) => {
      await tx.insertLock('past', -1, who);
      // Expires at the moment of its insert: expired for every later transaction's clock.
      await tx.insertLock('now', 0, who);
      await tx.insertLock('future', MINUTE, who);
      await tx.insertLock('never', null, who);
    });
    const result = await run(async (tx) => ({
      past: await tx.deleteIfExpired('past'),
      now: await tx.deleteIfExpired('now'),
      future: await tx.deleteIfExpired('future'),
      never: await tx.deleteIfExpired('never'),
      missing: await tx.deleteIfExpired('missing'),
    }));
    expect(result.past?.name).toBe('past');
    expect(result.now?.name).toBe('now');
    expect(result.future).toBeNull();
    expect(result.never).toBeNull();
    expect(result.missing).toBeNull();
    // Deleted: the name can be taken again; the live ones cannot.
    expect(await grant('past', MINUTE)).not.toBeNull();
    expect(await grant('future', MINUTE)).toBeNull();
    expect(await grant('never', MINUTE)).toBeNull();
  });

  it('selectLive returns live locks only', async () => {
    const { fresh, never } = await run(async (tx) => {
      await tx.insertLock('expired', -1, who);
      await tx.insertLock('boundary', 0, who);
      return { fresh: await tx.insertLock('fresh', MINUTE, who), never: await tx.insertLock('never', null, who) };
    });
    const live = await run(async (tx) => {
      return {
        fresh,
        never,
        seen: {
          expired: await tx.selectLive('expired'),
          boundary: await tx.selectLive('boundary'),
          fresh: await tx.selectLive('fresh'),
          never: await tx.selectLive('never'),
          missing: await tx.selectLive('missing'),
        },
      };
    });
    expect(live.seen).toEqual({ expired: null, boundary: null, fresh: live.fresh, never: live.never, missing: null });
    // Also from a later transaction (what it committed).
    expect(await run((tx) => tx.selectLive('fresh'))).toEqual(live.fresh);
    expect(await run((tx) => tx.selectLive('expired'))).toBeNull();
  });

  it('renew: forever, add and extend move the expiry, never shortening it', async () => {
    const before = await run(async (tx) => {
      const rows = new Map<string, LockRow>();
      for (const name of ['forever', 'add', 'addNever', 'extendLater', 'extendEarlier', 'extendNever'])
        rows.set(name, (await tx.insertLock(name, name.endsWith('Never') ? null : MINUTE, who))!);
      await tx.insertLock('expired', -1, who);
      return rows;
    });
    const until = (name: string) => before.get(name)!.locked_until!;
    const r = await run(async (tx) => ({
      now: tx.now,
      forever: await tx.renew('forever', { kind: 'forever' }, null),
      add: await tx.renew('add', { kind: 'add', ms: 5000 }, null),
      addNever: await tx.renew('addNever', { kind: 'add', ms: 5000 }, null),
      extendLater: await tx.renew('extendLater', { kind: 'extend', ms: 2 * MINUTE }, null),
      extendEarlier: await tx.renew('extendEarlier', { kind: 'extend', ms: 1000 }, null),
      extendNever: await tx.renew('extendNever', { kind: 'extend', ms: 2 * MINUTE }, null),
      expired: await tx.renew('expired', { kind: 'forever' }, null),
      missing: await tx.renew('missing', { kind: 'forever' }, null),
    }));
    expect(r.forever?.locked_until).toBeNull();
    expect(r.add?.locked_until).toBe(until('add') + 5000);
    expect(r.addNever?.locked_until).toBeNull();
    // Extended to 2 minutes from the moment of the renewal (its updated_at).
    expect(r.extendLater?.locked_until).toBeGreaterThanOrEqual(r.now + 2 * MINUTE);
    expect(Math.abs(r.extendLater!.locked_until! - (r.extendLater!.updated_at + 2 * MINUTE))).toBeLessThanOrEqual(1);
    expect(r.extendEarlier?.locked_until).toBe(until('extendEarlier'));
    expect(r.extendNever?.locked_until).toBeNull();
    // An expired lock is not renewed (a new grant is needed), nor a missing one.
    expect(r.expired).toBeNull();
    expect(r.missing).toBeNull();
    for (const [name, row] of Object.entries({
      forever: r.forever,
      add: r.add,
      extendLater: r.extendLater,
      extendEarlier: r.extendEarlier,
    })) {
      expect(row?.updated_at).toBeGreaterThanOrEqual(r.now);
      expect(row?.created_at).toBe(before.get(name)!.created_at);
    }
    // Committed as returned.
    expect(await run((tx) => tx.selectLive('add'))).toEqual(r.add);
  });

  it('renew and deleteLock with a token act only on that grant', async () => {
    const row = (await grant('owned', MINUTE))!;
    const other = row.token + 1000;
    const r = await run(async (tx) => ({
      renewWrong: await tx.renew('owned', { kind: 'forever' }, other),
      deleteWrong: await tx.deleteLock('owned', other),
      still: await tx.selectLive('owned'),
    }));
    expect(r.renewWrong).toBeNull();
    expect(r.deleteWrong).toBeNull();
    expect(r.still).toEqual(row);
    const renewed = await run((tx) => tx.renew('owned', { kind: 'add', ms: 1000 }, row.token));
    expect(renewed).toMatchObject({ token: row.token, locked_until: row.locked_until! + 1000 });
    const deleted = await run((tx) => tx.deleteLock('owned', row.token));
    expect(deleted).toEqual(renewed);
    expect(await run((tx) => tx.selectLive('owned'))).toBeNull();
    // Without a token, deleteLock takes the row expired or not.
    await grant('old', -1);
    expect((await run((tx) => tx.deleteLock('old', null)))?.name).toBe('old');
    expect(await run((tx) => tx.deleteLock('old', null))).toBeNull();
  });

  it('deleteExpired(limit) deletes the soonest expired first, and only expired locks', async () => {
    await run(async (tx) => {
      // Inserted out of expiry order.
      await tx.insertLock('e20', -20_000, who);
      await tx.insertLock('e40', -40_000, who);
      await tx.insertLock('e10', -10_000, who);
      await tx.insertLock('e30', -30_000, who);
      await tx.insertLock('live', MINUTE, who);
      await tx.insertLock('never', null, who);
    });
    // Which rows go is fixed (the soonest expired); the order they come back in is not promised.
    expect(sorted(names(await run((tx) => tx.deleteExpired(2))))).toEqual(['e30', 'e40']);
    expect(sorted(names(await run((tx) => tx.deleteExpired(100))))).toEqual(['e10', 'e20']);
    expect(await run((tx) => tx.deleteExpired(100))).toEqual([]);
    expect(names(await run((tx) => tx.listLive({ prefix: null, after: null, limit: 10 })))).toEqual(['live', 'never']);
  });

  it('deleteAll deletes every lock, expired or not, and returns them', async () => {
    await run(async (tx) => {
      await tx.insertLock('x', -1, who);
      await tx.insertLock('y', MINUTE, who);
      await tx.insertLock('z', null, who);
    });
    expect(sorted(names(await run((tx) => tx.deleteAll())))).toEqual(['x', 'y', 'z']);
    expect(await run((tx) => tx.deleteAll())).toEqual([]);
    // The names are free again, including the expired one.
    for (const name of ['x', 'y', 'z']) expect(await grant(name, MINUTE)).not.toBeNull();
  });

  it('listLive lists live locks in name (byte) order, by prefix, after a name, up to a limit', async () => {
    await run(async (tx) => {
      for (const name of ['a/3', 'b/1', 'a/1', 'ab', 'a_x', 'B', 'a/2']) await tx.insertLock(name, MINUTE, who);
      await tx.insertLock('a/0-expired', -1, who);
    });
    const list = (prefix: string | null, after: string | null, limit: number) =>
      run(async (tx) => names(await tx.listLive({ prefix, after, limit })));
    expect(await list(null, null, 100)).toEqual(['B', 'a/1', 'a/2', 'a/3', 'a_x', 'ab', 'b/1']);
    expect(await list('a/', null, 100)).toEqual(['a/1', 'a/2', 'a/3']);
    expect(await list('a/', 'a/1', 1)).toEqual(['a/2']);
    expect(await list('a/', 'a/3', 10)).toEqual([]);
    expect(await list(null, 'a/3', 2)).toEqual(['a_x', 'ab']);
    // A prefix is a plain string, not a LIKE pattern.
    expect(await list('a_', null, 10)).toEqual(['a_x']);
    expect(await list(null, null, 0)).toEqual([]);
  });

  it('listLive matches a prefix by characters, also outside the Basic Multilingual Plane', async () => {
    // '😀' is one character but two UTF-16 units: a prefix length counted in units misses it.
    await run(async (tx) => {
      for (const name of ['😀.a', '😀.b', 'é.c', 'x']) await tx.insertLock(name, MINUTE, who);
    });
    expect(names(await run((tx) => tx.listLive({ prefix: '😀.', after: null, limit: 10 })))).toEqual(['😀.a', '😀.b']);
    expect(names(await run((tx) => tx.listLive({ prefix: 'é', after: null, limit: 10 })))).toEqual(['é.c']);
  });

  it('emitted events are committed with growing seqs, their lock and cause as JSON, and their time', async () => {
    const first = await store.transaction(async (tx) => {
      const a = await tx.insertLock('a', MINUTE, who);
      tx.emit('created', toLockRecord(a!), cause);
      const b = await tx.insertLock('b', null, who);
      tx.emit('created', toLockRecord(b!), { ...cause, operation: 'other' });
      return { now: tx.now, a: a!, b: b! };
    });
    const second = await store.transaction(async (tx) => {
      const gone = await tx.deleteLock('a', null);
      tx.emit('released', toLockRecord(gone!), cause);
      return tx.now;
    });
    const events = [...first.events, ...second.events];
    expect(events.map((e) => [e.type, e.name])).toEqual([
      ['created', 'a'],
      ['created', 'b'],
      ['released', 'a'],
    ]);
    for (let i = 1; i < events.length; i++) expect(events[i]!.seq).toBeGreaterThan(events[i - 1]!.seq);
    expect(new Set(events.map((e) => e.id)).size).toBe(3);
    const [a, b, released] = events;
    expect(a!.lock).toEqual(toLockRecord(first.value.a));
    expect(JSON.parse(a!.lockJson)).toEqual(toLockRecord(first.value.a));
    expect(JSON.parse(b!.causeJson)).toEqual({ ...cause, operation: 'other' });
    expect(a!.cause).toEqual(cause);
    // A grant happened at the lock's own moment; other changes at their transaction's clock.
    expect(a!.at).toBe(first.value.a.updated_at);
    expect(a!.at).toBeGreaterThanOrEqual(first.value.now);
    expect(released!.at).toBe(second.value);
    expect(events.every((e) => e.daemon === DAEMON)).toBe(true);
    // The outbox holds them as committed.
    const lease = store.relayLease();
    expect(await lease.acquire()).toBe(true);
    const rows = await lease.read(0, 10);
    expect(rows).toEqual(
      events.map(({ seq, id, type, name, lockJson, causeJson, daemon, at }) => ({ seq, id, type, name, lockJson, causeJson, daemon, at })),
    );
    await lease.release();
  });

  it('a work that throws commits nothing; tokens still grow past every committed one', async () => {
    const before = (await grant('before', MINUTE))!;
    const boom = new Error('boom');
    let seen: LockRow | null = null;
    await expect(
      store.transaction(async (tx) => {
        seen = await tx.insertLock('doomed', null, who);
        tx.emit('created', toLockRecord(seen!), cause);
        await tx.deleteLock('before', null);
        throw boom;
      }),
    ).rejects.toBe(boom);
    expect(seen).not.toBeNull();
    expect(await run((tx) => tx.selectLive('doomed'))).toBeNull();
    expect(await run((tx) => tx.selectLive('before'))).toEqual(before);
    expect(await store.countOutbox()).toBe(0);
    const after = (await grant('after', MINUTE))!;
    expect(after.token).toBeGreaterThan(before.token);
    // A domain error (a result, not a failure) rolls back just the same.
    const refused = Object.assign(new Error('refused'), { domain: true });
    await expect(
      store.transaction(async (tx) => {
        await tx.insertLock('refused', null, who);
        throw refused;
      }),
    ).rejects.toBe(refused);
    expect(await run((tx) => tx.selectLive('refused'))).toBeNull();
  });

  it('atomically undoes only its own writes and events when it throws', async () => {
    const { value, events } = await store.transaction(async (tx) => {
      const keep = await tx.insertLock('keep', null, who);
      tx.emit('created', toLockRecord(keep!), cause);
      await tx.insertLock('victim', null, who);
      const undone = await tx
        .atomically(async () => {
          const lost = await tx.insertLock('lost', null, who);
          tx.emit('created', toLockRecord(lost!), cause);
          await tx.deleteLock('victim', null);
          await tx.renew('keep', { kind: 'add', ms: 1 }, null);
          throw new Error('undo');
        })
        .catch((err: Error) => err.message);
      // Inside the transaction, the undone writes are gone already.
      const inside = { lost: await tx.selectLive('lost'), victim: await tx.selectLive('victim') };
      // A nested savepoint that fails inside one that succeeds: only the inner part goes.
      await tx.atomically(async () => {
        const kept = await tx.insertLock('outer', null, who);
        tx.emit('created', toLockRecord(kept!), cause);
        await tx
          .atomically(async () => {
            await tx.insertLock('inner', null, who);
            tx.emit('created', toLockRecord((await tx.selectLive('inner'))!), cause);
            throw new Error('inner');
          })
          .catch(() => undefined);
      });
      const after = await tx.insertLock('after', null, who);
      tx.emit('created', toLockRecord(after!), cause);
      return { undone, inside };
    });
    expect(value.undone).toBe('undo');
    expect(value.inside.lost).toBeNull();
    expect(value.inside.victim?.name).toBe('victim');
    expect(events.map((e) => e.name)).toEqual(['keep', 'outer', 'after']);
    const live = await run((tx) => tx.listLive({ prefix: null, after: null, limit: 10 }));
    expect(names(live)).toEqual(['after', 'keep', 'outer', 'victim']);
    expect(live.find((r) => r.name === 'keep')?.locked_until).toBeNull();
    // A savepoint that succeeds keeps its writes and returns its value.
    expect(await run((tx) => tx.atomically(async () => (await tx.insertLock('saved', null, who))?.name))).toBe('saved');
    expect(await run((tx) => tx.selectLive('saved'))).not.toBeNull();
  });

  it('countOutbox counts waiting events up to a seq', async () => {
    expect(await store.countOutbox()).toBe(0);
    const { events } = await store.transaction(async (tx) => {
      for (const name of ['a', 'b', 'c']) tx.emit('created', toLockRecord((await tx.insertLock(name, null, who))!), cause);
    });
    const seqs = events.map((e) => e.seq);
    expect(await store.countOutbox()).toBe(3);
    expect(await store.countOutbox(seqs[1])).toBe(2);
    expect(await store.countOutbox(seqs[0]! - 1)).toBe(0);
    // A transaction without events adds none.
    await grant('quiet', null);
    expect(await store.countOutbox()).toBe(3);
  });

  it('counts live locks (not those expired and not yet swept), live sessions and the outbox with its oldest event, on its clock', async () => {
    expect(await store.counts()).toEqual({ locks: 0, sessions: 0, outbox: 0, oldestEventAt: null, now: expect.any(Number) });
    const { events } = await store.transaction(async (tx) => {
      for (const [name, ms] of [
        ['live', MINUTE],
        ['forever', null],
        ['gone', -1],
      ] as const) {
        tx.emit('created', toLockRecord((await tx.insertLock(name, ms, who))!), cause);
      }
      await tx.openSession('s-live', MINUTE, who);
      await tx.openSession('s-lapsed', -1, who);
    });
    const counts = await store.counts();
    expect(counts).toMatchObject({ locks: 2, sessions: 1, outbox: 3, oldestEventAt: events[0]!.at });
    expect(counts.now).toBeGreaterThanOrEqual(events[0]!.at);
    await store.relayLease().acquire();
    await store.relayLease().remove([events[0]!.seq]);
    expect(await store.counts()).toMatchObject({ outbox: 2, oldestEventAt: events[1]!.at });
  });

  it('relay lease: read oldest first (after, limit, before), remove and removeThrough', async () => {
    const lease = store.relayLease();
    // PostgreSQL: reading needs the lease, held on a connection of its own.
    expect(await lease.acquire()).toBe(true);
    expect(lease.held).toBe(true);
    const committed: number[] = [];
    for (let i = 0; i < 3; i++) {
      const { events } = await store.transaction(async (tx) => {
        for (const n of [`n${i}a`, `n${i}b`]) tx.emit('created', toLockRecord((await tx.insertLock(n, null, who))!), cause);
      });
      committed.push(...events.map((e) => e.seq));
    }
    const [s1, s2, s3, s4, s5, s6] = committed as [number, number, number, number, number, number];
    const seqs = async (after: number, limit: number, before?: number) => (await lease.read(after, limit, before)).map((e) => e.seq);
    expect(await seqs(0, 100)).toEqual(committed);
    expect(await seqs(0, 2)).toEqual([s1, s2]);
    expect(await seqs(s2, 2)).toEqual([s3, s4]);
    expect(await seqs(s1, 100, s4)).toEqual([s2, s3]);
    expect(await seqs(s6, 100)).toEqual([]);
    await lease.remove([s2, s4]);
    expect(await seqs(0, 100)).toEqual([s1, s3, s5, s6]);
    expect(await store.countOutbox()).toBe(4);
    // removeThrough may be deferred (SQLite: to the next transaction, or ~20 ms); countOutbox
    // sees through the deferral, and a later transaction has applied it.
    await lease.removeThrough(s3);
    expect(await store.countOutbox()).toBe(2);
    await lease.removeThrough(s5);
    await run(async () => undefined);
    expect(await seqs(0, 100)).toEqual([s6]);
    expect(await store.countOutbox()).toBe(1);
    // Seqs keep growing after removals: never reused.
    const { events } = await store.transaction(async (tx) =>
      tx.emit('created', toLockRecord((await tx.insertLock('late', null, who))!), cause),
    );
    expect(events[0]!.seq).toBeGreaterThan(s6);
    await lease.release();
    if (store.soleWriter) expect(lease.held).toBe(true);
    else expect(lease.held).toBe(false);
  });

  it('records request outcomes with their transaction: recalled by id, a second record of an id fails its transaction', async () => {
    await run(async (tx) => tx.remember('req-1', '{"result":1}', tx.now + MINUTE));
    expect(await run((tx) => tx.recall(['req-1', 'req-2']))).toEqual(new Map([['req-1', '{"result":1}']]));
    // Recording an id already recorded (a concurrent run of the same request): nothing of it kept.
    await expect(
      store.transaction(async (tx) => {
        await tx.insertLock('twice', null, who);
        tx.remember('req-1', '{"result":2}', tx.now + MINUTE);
      }),
    ).rejects.toBeInstanceOf(DuplicateRequest);
    expect(await run((tx) => tx.selectLive('twice'))).toBeNull();
    expect(await run((tx) => tx.recall(['req-1']))).toEqual(new Map([['req-1', '{"result":1}']]));
    // A record undone with atomically, or forgotten, is gone.
    await run(async (tx) => tx.remember('req-4', '{}', tx.now + MINUTE));
    const forgotten = await run(async (tx) => {
      await tx
        .atomically(async () => {
          tx.remember('req-3', '{}', tx.now + MINUTE);
          throw new Error('undone');
        })
        .catch(() => undefined);
      return tx.forget('req-4');
    });
    expect(forgotten).toBe(true);
    expect((await run((tx) => tx.recall(['req-3', 'req-4']))).size).toBe(0);
    // One a repeat was answered with stays: forget refuses it, in the transaction and after.
    expect(await run((tx) => tx.forget('req-1'))).toBe(false);
    expect(await run((tx) => tx.forget('never-recorded'))).toBe(false);
    expect(await run((tx) => tx.recall(['req-1']))).toEqual(new Map([['req-1', '{"result":1}']]));
  });

  it('a recall and a forget of the same outcome in one transaction: the recall wins', async () => {
    await run(async (tx) => tx.remember('req-6', '{"result":6}', tx.now + MINUTE));
    expect(
      await run(async (tx) => {
        const seen = await tx.recall(['req-6']);
        return { seen: seen.get('req-6'), forgotten: await tx.forget('req-6') };
      }),
    ).toEqual({ seen: '{"result":6}', forgotten: false });
  });

  it('a late grant is withdrawn unless a repeat of its request was already answered with it', async () => {
    const recordGrant = (name: string, id: string) =>
      run(async (tx) => {
        const row = (await tx.insertLock(name, MINUTE, who))!;
        tx.remember(id, JSON.stringify(toLockRecord(row)), tx.now + MINUTE);
        return row;
      });
    const alone = await recordGrant('late.alone', 'req-late-1');
    expect(await run((tx) => ops.withdraw([alone], 'req-late-1', who).run(tx))).toBe(true);
    expect(await run((tx) => tx.selectLive('late.alone'))).toBeNull();

    const repeated = await recordGrant('late.repeated', 'req-late-2');
    await run((tx) => tx.recall(['req-late-2'])); // a repeat, answered with the grant
    expect(await run((tx) => ops.withdraw([repeated], 'req-late-2', who).run(tx))).toBe(false);
    expect((await run((tx) => tx.selectLive('late.repeated')))?.token).toBe(repeated.token);
  });

  it('outcomes past their time are not recalled, and are deleted page by page', async () => {
    await run(async (tx) => {
      for (const id of ['old-1', 'old-2', 'old-3']) tx.remember(id, '{}', tx.now - 1);
      tx.remember('kept', '{}', tx.now + MINUTE);
    });
    expect([...(await run((tx) => tx.recall(['old-1', 'kept']))).keys()]).toEqual(['kept']);
    expect(await run((tx) => tx.deleteExpiredOutcomes(2))).toBe(2);
    expect(await run((tx) => tx.deleteExpiredOutcomes(2))).toBe(1);
    expect(await run((tx) => tx.deleteExpiredOutcomes(2))).toBe(0);
    expect((await run((tx) => tx.recall(['kept']))).size).toBe(1);
  });

  it('sessions: open, live until their expiry, kept alive with their locks (never shortened), closed with their locks', async () => {
    const opened = await run((tx) => tx.openSession('s-1', MINUTE, who));
    expect(opened).toMatchObject({ id: 's-1', ttl_ms: MINUTE, locked_by: 'alice' });
    expect(opened.expires_at - opened.created_at).toBe(MINUTE);
    expect(await run((tx) => tx.liveSession('s-1'))).toEqual(opened);
    expect(await run((tx) => tx.liveSession('nope'))).toBeNull();

    // Two locks bound to the session, one then made to never expire; one lock outside it.
    const [a] = await run(async (tx) => {
      const la = (await tx.insertLock('s.a', MINUTE, who))!;
      const lb = (await tx.insertLock('s.b', MINUTE, who))!;
      const bound = [
        await tx.bindLock('s.a', la.token, 's-1', opened.expires_at + 5),
        await tx.bindLock('s.b', lb.token, 's-1', opened.expires_at + 5),
      ];
      await tx.renew('s.b', { kind: 'forever' }, lb.token);
      return bound;
    });
    expect(a).toMatchObject({ name: 's.a', session_id: 's-1', locked_until: opened.expires_at + 5 });
    expect(toLockRecord(a!).session).toBe(publicSessionId('s-1'));
    expect(await run((tx) => tx.bindLock('s.a', a!.token + 1000, 's-1', 0))).toBeNull(); // another grant's token
    await grant('outside', MINUTE);
    expect((await run((tx) => tx.selectLive('outside')))?.session_id).toBeNull();

    const kept = await run((tx) => tx.keepSession('s-1', (e) => e + 5));
    expect(kept!.session.expires_at).toBeGreaterThanOrEqual(opened.expires_at);
    expect(sorted(names(kept!.locks))).toEqual(['s.a', 's.b']);
    expect(kept!.locks.find((l) => l.name === 's.a')!.locked_until).toBe(kept!.session.expires_at + 5);
    expect(kept!.locks.find((l) => l.name === 's.b')!.locked_until).toBeNull(); // never shortened

    const closed = await run((tx) => tx.closeSession('s-1'));
    expect(sorted(names(closed!))).toEqual(['s.a', 's.b']);
    expect(await run((tx) => tx.selectLive('s.a'))).toBeNull();
    expect(await run((tx) => tx.selectLive('outside'))).not.toBeNull();
    expect(await run((tx) => tx.liveSession('s-1'))).toBeNull();
    expect(await run((tx) => tx.closeSession('s-1'))).toBeNull();
  });

  it('a lapsed session is not live, cannot be kept alive or closed, and is deleted by the sweep', async () => {
    await run((tx) => tx.openSession('gone', 1, who));
    await run((tx) => tx.openSession('alive', MINUTE, who));
    await new Promise((r) => setTimeout(r, 5));
    expect(await run((tx) => tx.liveSession('gone'))).toBeNull();
    expect(await run((tx) => tx.keepSession('gone', (e) => e))).toBeNull();
    expect(await run((tx) => tx.closeSession('gone'))).toBeNull();
    expect(await run((tx) => tx.deleteExpiredSessions(10))).toBe(1);
    expect(await run((tx) => tx.deleteExpiredSessions(10))).toBe(0);
    expect(await run((tx) => tx.liveSession('alive'))).not.toBeNull();
  });

  it('restoreLock puts back a row deleted in the same transaction, as given (token and times)', async () => {
    const row = (await grant('back', MINUTE))!;
    const restored = await run(async (tx) => {
      const gone = (await tx.deleteLock('back', null))!;
      return tx.restoreLock({ ...gone, locked_until: gone.locked_until! + 7, session_id: null });
    });
    expect(restored).toEqual({ ...row, locked_until: row.locked_until! + 7 });
    expect(await run((tx) => tx.selectLive('back'))).toEqual(restored);
  });

  it('has an identity, the same every time it is asked, and can be claimed by its daemon', async () => {
    const id = await store.identity();
    expect(id).toMatch(/^[0-9a-z-]+$/);
    expect(await store.identity()).toBe(id);
    await store.claim();
    await store.claim(); // again by the same daemon: still its own
  });
});

describe('SQLite: one daemon per file', () => {
  it('a second store on the same file cannot claim it while the first holds it; once closed, it can', async () => {
    const tdb = await createTestDatabase('sqlite');
    const first = new SqliteStore({ file: tdb.url, daemonId: 'first', checkpointIntervalMs: 0 });
    const second = new SqliteStore({ file: tdb.url, daemonId: 'second', checkpointIntervalMs: 0 });
    try {
      await first.claim();
      const refused = await second.claim().catch((err: unknown) => err);
      expect(refused).toBeInstanceOf(StoreInUse);
      expect((refused as Error).message).toMatch(/another daemon serves .*locks\.sqlite \(daemon first\): one daemon per SQLite file/);
      await first.close();
      await second.claim();
    } finally {
      await first.close();
      await second.close();
      rmSync(dirname(tdb.url), { recursive: true, force: true });
    }
  });

  it('two stores on different files each have an identity of their own', async () => {
    const [a, b] = [await createTestDatabase('sqlite'), await createTestDatabase('sqlite')];
    const stores = [a, b].map((t) => new SqliteStore({ file: t.url, daemonId: 'd', checkpointIntervalMs: 0 }));
    try {
      for (const s of stores) await s.migrate();
      const ids = await Promise.all(stores.map((s) => s.identity()));
      expect(ids[0]).not.toBe(ids[1]);
    } finally {
      for (const s of stores) await s.close();
      for (const t of [a, b]) rmSync(dirname(t.url), { recursive: true, force: true });
    }
  });
});
