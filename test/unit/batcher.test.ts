/**
 * Batcher (daemon/batcher.ts): group commit over a store. Operations queued together share one
 * transaction and are answered only after it commits; batches run in name order; a domain error
 * answers its own operation only; a broken transaction is split so only the culprit fails;
 * conflicts are retried, an unavailable store fails the batch; `maxBatch`, concurrency and the
 * batch first pass (prefetch). Runs over the in-memory store: no database, no sleeps.
 */
import { Batcher, Recalled, type Operation } from '../../daemon/batcher';
import { LockRuleError, ops, type AcquireResult } from '../../daemon/lock-ops';
import {
  StoreUnavailable,
  TransactionConflict,
  type CommittedEvent,
  type FirstStatement,
  type RelayLease,
  type Store,
  type StoreCounts,
  type StoreTx,
  type TransactionOpening,
  type TransactionResult,
} from '../../daemon/store/store';
import { ErrorCode } from '../../shared/protocol';
import type { NormalizedGet } from '../../shared/validate';
import { flushPromises } from '../helpers/manual-clock';
import { MemoryStore, type MemoryStoreOptions } from '../helpers/memory-store';

const who = { lockedBy: 'tester', process: 7, client: null };
const getReq = (name: string): NormalizedGet => ({
  name,
  expiresMs: 60_000,
  lockedBy: 'tester',
  process: 7,
  waitMs: 0,
  progress: false,
  session: null,
  requestId: null,
  attempt: 1,
});

/** Operations that record which transaction ran them, to see how the batcher grouped them. */
class Recorder {
  private readonly log: { tx: StoreTx; label: string }[] = [];

  op(label: string, key?: string, body?: (tx: StoreTx) => Promise<void>): Operation<string> {
    return {
      key,
      run: async (tx) => {
        this.log.push({ tx, label });
        await body?.(tx);
        return label;
      },
    };
  }

  /** Wrap an operation so that its runs are recorded too. */
  wrap<T>(label: string, op: Operation<T>): Operation<T> {
    return {
      ...op,
      run: (tx) => {
        this.log.push({ tx, label });
        return op.run(tx);
      },
    };
  }

  /** Labels per transaction attempt, in order. */
  groups(): string[][] {
    const byTx = new Map<StoreTx, string[]>();
    for (const { tx, label } of this.log) {
      const group = byTx.get(tx);
      if (group) group.push(label);
      else byTx.set(tx, [label]);
    }
    return [...byTx.values()];
  }
}

/** Settle a promise into an observable outcome, without awaiting it now. */
function outcome<T>(p: Promise<T>): { value?: T; error?: unknown; settled: boolean } {
  const o: { value?: T; error?: unknown; settled: boolean } = { settled: false };
  void p.then(
    (value) => Object.assign(o, { value, settled: true }),
    (error: unknown) => Object.assign(o, { error, settled: true }),
  );
  return o;
}

describe('Batcher', () => {
  let store: MemoryStore;
  let rec: Recorder;
  let committed: CommittedEvent[][];
  let batcher: Batcher;

  function setup(options: MemoryStoreOptions = {}, maxBatch?: number): void {
    store = new MemoryStore(options);
    rec = new Recorder();
    committed = [];
    batcher = new Batcher(store, { maxBatch, onCommit: (events) => committed.push(events) });
  }
  beforeEach(() => setup());

  it('operations queued in the same tick share one transaction and resolve only after it commits', async () => {
    const order: string[] = [];
    batcher = new Batcher(store, { onCommit: (events) => order.push(`commit ${events.map((e) => e.name).join(',')}`) });
    const gets = ['a', 'b', 'c'].map((name) => {
      const op = ops.get(getReq(name), who);
      const traced: typeof op = {
        ...op,
        run: (tx) => {
          order.push(`run ${name}`);
          return op.run(tx);
        },
      };
      return batcher.run(traced).then((r) => {
        order.push(`resolved ${name}`);
        return r;
      });
    });
    const results = await Promise.all(gets);
    expect(store.commits).toBe(1);
    expect(results.every((r) => 'granted' in r)).toBe(true);
    expect(order).toEqual(['run a', 'run b', 'run c', 'commit a,b,c', 'resolved a', 'resolved b', 'resolved c']);
  });

  it('operations queued while a transaction runs go together into the next one', async () => {
    let later: Promise<string>[] = [];
    const first = batcher.run(
      rec.op('first', undefined, async () => {
        // Arrive while the first transaction is open.
        later = [batcher.run(rec.op('second')), batcher.run(rec.op('third'))];
      }),
    );
    await first;
    await Promise.all(later);
    expect(rec.groups()).toEqual([['first'], ['second', 'third']]);
    expect(store.commits).toBe(2);
  });

  it('runs a batch in key order, stable for equal keys, keyless operations last', async () => {
    const labels: [string, string | undefined][] = [
      ['none1', undefined],
      ['c', 'c'],
      ['a1', 'a'],
      ['none2', undefined],
      ['b', 'b'],
      ['a2', 'a'],
      ['B', 'B'],
    ];
    await Promise.all(labels.map(([label, key]) => batcher.run(rec.op(label, key))));
    // Byte order: upper case sorts before lower case.
    expect(rec.groups()).toEqual([['B', 'a1', 'a2', 'b', 'c', 'none1', 'none2']]);
  });

  it('a domain error rejects only its own operation; the others commit in the same transaction', async () => {
    const refusal = new LockRuleError(ErrorCode.LOCKED, 'held');
    const plain = { domain: true as const, why: 'any object marked domain' };
    const a = outcome(batcher.run(ops.get(getReq('a'), who)));
    const bad = outcome(batcher.run(rec.op('bad', 'b', () => Promise.reject(refusal))));
    const bad2 = outcome(batcher.run(rec.op('bad2', 'b2', () => Promise.reject(plain))));
    const c = outcome(batcher.run(ops.get(getReq('c'), who)));
    await flushPromises();
    expect(a.value).toHaveProperty('granted');
    expect(c.value).toHaveProperty('granted');
    expect(bad.error).toBe(refusal);
    expect(bad2.error).toBe(plain);
    expect(store.commits).toBe(1);
    expect(rec.groups()).toHaveLength(1); // not re-run
    expect([...store.locks.keys()].sort()).toEqual(['a', 'c']);
  });

  it('a LockRuleError from the lock rules (NOT_OWNER: unlock with a wrong token) fails only that request', async () => {
    const granted = await batcher.run(ops.get(getReq('x'), who));
    if (!('granted' in granted)) throw new Error('expected a grant');
    const wrong = outcome(batcher.run(ops.unlock({ name: 'x', token: granted.granted.token + 1, requestId: null, attempt: 1 }, who)));
    const other = outcome(batcher.run(ops.get(getReq('y'), who)));
    await flushPromises();
    expect(wrong.error).toBeInstanceOf(LockRuleError);
    expect((wrong.error as LockRuleError).code).toBe(ErrorCode.NOT_OWNER);
    expect(other.value).toHaveProperty('granted');
    expect(store.locks.has('x')).toBe(true);
  });

  it('a non-domain throw in a batch re-runs each operation alone: only the culprit fails', async () => {
    const bug = new Error('bug');
    const a = outcome(batcher.run(rec.wrap('a', ops.get(getReq('a'), who))));
    const bad = outcome(
      batcher.run(
        rec.op('bad', 'b', async (tx) => {
          await tx.insertLock('b', null, who);
          throw bug;
        }),
      ),
    );
    const c = outcome(batcher.run(rec.wrap('c', ops.get(getReq('c'), who))));
    await flushPromises();
    // The batch stops at the throw (c never ran in it), then each operation runs alone.
    expect(rec.groups()).toEqual([['a', 'bad'], ['a'], ['bad'], ['c']]);
    expect(a.value).toHaveProperty('granted');
    expect(c.value).toHaveProperty('granted');
    expect(bad.error).toBe(bug);
    // The failed batch left nothing; each survivor committed once, with one event each.
    expect([...store.locks.keys()].sort()).toEqual(['a', 'c']);
    expect(committed.flat().map((e) => `${e.type} ${e.name}`)).toEqual(['created a', 'created c']);
  });

  it('a lone operation that throws is rejected without a re-run', async () => {
    const bug = new Error('bug');
    await expect(batcher.run(rec.op('bad', 'b', () => Promise.reject(bug)))).rejects.toBe(bug);
    expect(rec.groups()).toEqual([['bad']]);
  });

  it('a TransactionConflict is retried, and the batch stays whole', async () => {
    store.failNext(new TransactionConflict('deadlock'), 2);
    const results = await Promise.all([batcher.run(rec.op('a', 'a')), batcher.run(rec.op('b', 'b'))]);
    expect(results).toEqual(['a', 'b']);
    expect(rec.groups()).toEqual([
      ['a', 'b'],
      ['a', 'b'],
      ['a', 'b'],
    ]);
    expect(store.commits).toBe(1);
  });

  it('a conflict that persists gives up after 5 attempts', async () => {
    const conflict = new TransactionConflict('deadlock');
    store.failNext(conflict, 5);
    await expect(batcher.run(rec.op('a', 'a'))).rejects.toBe(conflict);
    expect(rec.groups()).toHaveLength(5);
    expect(store.commits).toBe(0);
    // The store is fine again: the next operation goes through at once.
    await expect(batcher.run(rec.op('next'))).resolves.toBe('next');
    expect(rec.groups()).toHaveLength(6);
  });

  it('StoreUnavailable rejects the whole batch, without running it again operation by operation', async () => {
    const down = new StoreUnavailable('database away');
    store.failNext(down);
    const results = ['a', 'b', 'c'].map((name) => outcome(batcher.run(rec.wrap(name, ops.get(getReq(name), who)))));
    await flushPromises();
    expect(results.map((r) => r.error)).toEqual([down, down, down]);
    expect(rec.groups()).toEqual([['a', 'b', 'c']]);
    expect(store.locks.size).toBe(0);
    expect(committed).toEqual([]);
  });

  it('maxBatch caps the operations of one transaction', async () => {
    setup({}, 2);
    await Promise.all(['a', 'b', 'c', 'd', 'e'].map((name) => batcher.run(rec.op(name, name))));
    expect(rec.groups()).toEqual([['a', 'b'], ['c', 'd'], ['e']]);
  });

  it('with concurrency 2, two transactions share the queue and run at once', async () => {
    const gated = new GatedStore(new MemoryStore(), 2);
    batcher = new Batcher(gated);
    const results = ['a', 'b', 'c', 'd'].map((name) => outcome(batcher.run(rec.op(name, name))));
    await flushPromises();
    // Both transactions are open together, each with half of the queue.
    expect(gated.active).toBe(2);
    expect(results.some((r) => r.settled)).toBe(false);
    gated.open();
    await flushPromises();
    expect(results.map((r) => r.value)).toEqual(['a', 'b', 'c', 'd']);
    expect(rec.groups()).toEqual([
      ['a', 'b'],
      ['c', 'd'],
    ]);
    expect(gated.maxActive).toBe(2);
  });

  describe('prefetch (batch first pass)', () => {
    let calls: FirstStatement[][];
    beforeEach(() => {
      calls = [];
      setup({ prefetch: async (items) => (calls.push([...items]), true) });
    });

    it('is called with the first statements, in batch order, when every operation has one on a name of its own', async () => {
      await batcher.run(ops.get(getReq('seed'), who));
      // A batch of one too: the store may send its statement with BEGIN.
      expect(calls.map((c) => c.map((f) => `${f.kind} ${f.name}`))).toEqual([['insert seed']]);
      calls = [];
      await Promise.all([
        batcher.run(ops.get(getReq('b'), who)),
        batcher.run(ops.unlock({ name: 'seed', token: null, requestId: null, attempt: 1 }, who)),
        batcher.run(ops.get(getReq('a'), who)),
      ]);
      expect(calls).toHaveLength(1);
      expect(calls[0]!.map((f) => `${f.kind} ${f.name}`)).toEqual(['insert a', 'insert b', 'unlock seed']);
      expect(calls[0]![0]).toEqual({ kind: 'insert', name: 'a', expiresMs: 60_000, who });
    });

    it('is not called when a name repeats in the batch', async () => {
      await Promise.all([
        batcher.run(ops.get(getReq('a'), who)),
        batcher.run(ops.unlock({ name: 'a', token: null, requestId: null, attempt: 1 }, who)),
      ]);
      expect(calls).toEqual([]);
    });

    it('is not called when one operation has no first statement', async () => {
      const renew = ops.renew(
        {
          name: 'b',
          expiresMs: 1000,
          addTime: false,
          create: true,
          token: null,
          lockedBy: null,
          process: null,
          requestId: null,
          attempt: 1,
        },
        who,
      );
      expect(renew.first).toBeUndefined();
      await Promise.all([batcher.run(ops.get(getReq('a'), who)), batcher.run(renew)]);
      expect(calls).toEqual([]);
    });
  });

  describe('request ids (once)', () => {
    const grantOutcome = (v: AcquireResult) => ('granted' in v ? { token: v.granted.token } : undefined);
    const once = (op: Operation<AcquireResult>, id: string, copy: boolean) => ({
      ...op,
      once: { id, copy, keepMs: 60_000, outcome: grantOutcome },
    });

    /** The ids each transaction looked up among the recorded outcomes. */
    function watchRecalls(): string[][] {
      const looked: string[][] = [];
      const transaction = store.transaction.bind(store);
      store.transaction = <T>(work: (tx: StoreTx) => Promise<T>) =>
        transaction((tx) => {
          const recall = tx.recall.bind(tx);
          tx.recall = (ids) => {
            looked.push([...ids]);
            return recall(ids);
          };
          return work(tx);
        });
      return looked;
    }

    it('a sole writer looks up copies only: a first send cannot have been recorded; a copy gets the recorded answer', async () => {
      const looked = watchRecalls();
      const first = await batcher.runOnce(once(ops.get(getReq('a'), who), 'r-1', false));
      expect('value' in first && 'granted' in first.value).toBe(true);
      const copy = await batcher.runOnce(once(ops.get(getReq('a'), who), 'r-1', true));
      expect(copy).toBeInstanceOf(Recalled);
      expect((copy as Recalled).result).toEqual({ token: (first as { value: { granted: { token: number } } }).value.granted.token });
      expect(looked).toEqual([['r-1']]);
    });

    it('a store other daemons share is asked for first sends too (a copy may have run at another daemon first)', async () => {
      setup({ soleWriter: false });
      const looked = watchRecalls();
      await batcher.runOnce(once(ops.get(getReq('a'), who), 'r-2', true));
      const first = await batcher.runOnce(once(ops.get(getReq('a'), who), 'r-2', false));
      expect(first).toBeInstanceOf(Recalled);
      expect(looked[0]).toEqual(['r-2']);
      expect(looked[1]).toEqual(['r-2']);
    });
  });

  it('hands the store the opening statements; a request answered before runs again without the first pass sent with BEGIN', async () => {
    const calls: string[][] = [];
    const openings: (string[] | null)[] = [];
    setup({ soleWriter: false, prefetch: async (items) => (calls.push(items.map((f) => `${f.kind} ${f.name}`)), true) });
    const transaction = store.transaction.bind(store);
    // The memory store does not send an opening itself: this records what the batcher handed over.
    store.transaction = <T>(work: (tx: StoreTx) => Promise<T>, _trace?: object, opening?: TransactionOpening) => {
      openings.push(opening?.first?.map((f) => `${f.kind} ${f.name}`) ?? null);
      return transaction(work);
    };
    const grant = (v: AcquireResult) => ('granted' in v ? { token: v.granted.token } : undefined);
    const withId = (name: string, id: string) => ({
      ...ops.get(getReq(name), who),
      once: { id, copy: false, keepMs: 60_000, outcome: grant },
    });
    await batcher.runOnce(withId('a', 'r-a'));
    expect(openings).toEqual([['insert a']]);
    openings.length = 0;
    calls.length = 0;
    // r-a again, with a new name beside it: the opening first pass would have run for r-a.
    const [again, fresh] = await Promise.all([batcher.runOnce(withId('a', 'r-a')), batcher.runOnce(withId('b', 'r-b'))]);
    expect(again).toBeInstanceOf(Recalled);
    expect('value' in fresh && 'granted' in fresh.value).toBe(true);
    expect(openings).toEqual([['insert a', 'insert b'], null]);
    // The second attempt runs the first pass of the request not answered before, and only that.
    expect(calls).toEqual([['insert b']]);
  });

  it('onCommit receives the committed events, in seq order, and is not called for a commit without events', async () => {
    await Promise.all([batcher.run(ops.get(getReq('a'), who)), batcher.run(ops.get(getReq('b'), who))]);
    await batcher.run(ops.isLocked('a'));
    await batcher.run(ops.unlock({ name: 'a', token: null, requestId: null, attempt: 1 }, who));
    expect(committed.map((events) => events.map((e) => `${e.type} ${e.name}`))).toEqual([['created a', 'created b'], ['released a']]);
    const seqs = committed.flat().map((e) => e.seq);
    expect(seqs).toEqual([...seqs].sort((x, y) => x - y));
    expect(new Set(seqs).size).toBe(3);
    expect(store.commits).toBe(3);
  });
});

/** A store whose transactions wait at a gate, with a concurrency of its own (over a MemoryStore). */
class GatedStore implements Store {
  readonly kind = 'gated';
  readonly soleWriter = true;
  active = 0;
  maxActive = 0;
  private release!: () => void;
  private readonly gate = new Promise<void>((resolve) => (this.release = resolve));

  constructor(
    private readonly inner: MemoryStore,
    readonly concurrency: number,
  ) {}

  open(): void {
    this.release();
  }

  async transaction<T>(work: (tx: StoreTx) => Promise<T>): Promise<TransactionResult<T>> {
    this.active += 1;
    this.maxActive = Math.max(this.maxActive, this.active);
    try {
      await this.gate;
      return await this.inner.transaction(work);
    } finally {
      this.active -= 1;
    }
  }

  describe(): string {
    return 'gated';
  }
  migrate(): Promise<string[]> {
    return this.inner.migrate();
  }
  claim(): Promise<void> {
    return this.inner.claim();
  }
  identity(): Promise<string> {
    return this.inner.identity();
  }
  countOutbox(upTo?: number): Promise<number> {
    return this.inner.countOutbox(upTo);
  }
  counts(): Promise<StoreCounts> {
    return this.inner.counts();
  }
  relayLease(): RelayLease {
    return this.inner.relayLease();
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
