/**
 * Group commit: operations that arrive while a transaction is running wait, then all of them run
 * in the next transaction, one after another, and are answered only after it commits. One commit
 * then serves many requests, and a reply still means "committed".
 */
import { operationChannel, transactionChannel } from './diagnostics';
import {
  isDomainError,
  StoreUnavailable,
  TransactionConflict,
  type CommittedEvent,
  type FirstStatement,
  type Store,
  type StoreTx,
} from './store/store';

/**
 * One unit of work for a transaction. An operation that refuses a request (throws a domain error)
 * does so before it writes, or inside `tx.atomically`: the rest of its batch commits, and with it
 * whatever the operation wrote before throwing.
 */
export interface Operation<T> {
  /** The lock name it works on first, if one: a batch runs its operations in name order. */
  key?: string;
  /** Its first statement, when a batch may run it together with the others' (StoreTx.prefetch). */
  first?: FirstStatement;
  run(tx: StoreTx): Promise<T>;
}

interface Queued {
  op: Operation<unknown>;
  /** What the caller named the operation by, for the diagnostics. */
  tag?: object;
  resolve(value: unknown): void;
  reject(err: unknown): void;
}

/** Outcome of one operation inside a batch. Domain errors are results, not failures. */
type Outcome = { ok: true; value: unknown } | { ok: false; error: unknown };

export interface BatcherOptions {
  /** Most operations in one transaction. */
  maxBatch?: number;
  /** Called after each commit with the events it recorded (to wake waiters and the relay). */
  onCommit?: (events: CommittedEvent[]) => void;
}

/** Attempts of a transaction that keeps meeting concurrent changes. */
const MAX_ATTEMPTS = 5;

function byKey(a: Queued, b: Queued): number {
  const x = a.op.key;
  const y = b.op.key;
  if (x === undefined || y === undefined) return x === y ? 0 : x === undefined ? 1 : -1;
  return x < y ? -1 : x > y ? 1 : 0;
}

/** A batch may run its first statements at once when every operation has one, each on its own name. */
function firstStatements(batch: readonly Queued[]): FirstStatement[] | null {
  if (batch.length < 2) return null;
  const firsts: FirstStatement[] = [];
  const names = new Set<string>();
  for (const q of batch) {
    const first = q.op.first;
    if (!first || names.has(first.name)) return null;
    names.add(first.name);
    firsts.push(first);
  }
  return firsts;
}

export class Batcher {
  private queue: Queued[] = [];
  /** Workers draining the queue, each running one transaction at a time. */
  private workers = 0;
  /** Workers running a transaction right now. */
  private busy = 0;
  private readonly maxBatch: number;

  constructor(
    private readonly store: Store,
    private readonly options: BatcherOptions = {},
  ) {
    this.maxBatch = options.maxBatch ?? 256;
  }

  /** Run `op` in the next transaction; resolves after that transaction commits. */
  run<T>(op: Operation<T>, tag?: object): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ op, tag, resolve: resolve as (v: unknown) => void, reject });
      if (tag && operationChannel.hasSubscribers) operationChannel.publish({ phase: 'queued', tag });
      if (this.workers < this.store.concurrency) {
        this.workers += 1;
        // Requests decoded from the same socket read are handed over synchronously, one after
        // another: a microtask starts the batch after the last of them, without waiting a turn
        // of the event loop.
        queueMicrotask(() => void this.drain());
      }
    });
  }

  private async drain(): Promise<void> {
    while (this.queue.length > 0) {
      // Batches overlap on PostgreSQL: if each took its rows in arrival order, two batches could
      // each hold a row the other needs (a deadlock, broken only after deadlock_timeout). In name
      // order they queue behind each other instead. The sort is stable, so the operations on one
      // name keep their arrival order; operations without a name go last.
      // Share what is queued among the workers not inside a transaction, so that concurrent
      // batches overlap their round trips instead of one batch taking every request.
      const share = Math.ceil(this.queue.length / (this.workers - this.busy));
      const batch = this.queue.splice(0, Math.min(this.maxBatch, share)).sort(byKey);
      this.busy += 1;
      try {
        await this.runBatch(batch);
      } finally {
        this.busy -= 1;
      }
      // SQLite statements run synchronously: yield between transactions so that NATS traffic is
      // read (and the next batch gathers) even while a long run of batches is queued.
      if (this.queue.length > 0) await new Promise<void>((resolve) => setImmediate(resolve));
    }
    this.workers -= 1;
  }

  private async runBatch(batch: Queued[]): Promise<void> {
    let outcomes: Outcome[];
    try {
      outcomes = await this.transact(batch);
    } catch (err) {
      if (batch.length > 1 && !(err instanceof StoreUnavailable)) {
        // One operation broke the transaction: run each alone so only that one fails.
        for (const q of batch) await this.runBatch([q]);
        return;
      }
      for (const q of batch) q.reject(err);
      return;
    }
    outcomes.forEach((o, i) => (o.ok ? batch[i]!.resolve(o.value) : batch[i]!.reject(o.error)));
  }

  /** One transaction over `batch`, run again when it meets a concurrent change. */
  private async transact(batch: Queued[]): Promise<Outcome[]> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.transactOnce(batch);
      } catch (err) {
        if (!(err instanceof TransactionConflict) || attempt >= MAX_ATTEMPTS) throw err;
      }
    }
  }

  private async transactOnce(batch: Queued[]): Promise<Outcome[]> {
    const trace = transactionChannel.hasSubscribers ? {} : undefined;
    if (trace) transactionChannel.publish({ phase: 'start', trace, size: batch.length });
    let ok = false;
    try {
      const firsts = firstStatements(batch);
      const { value: outcomes, events } = await this.store.transaction(async (tx) => {
        if (firsts && tx.prefetch) await tx.prefetch(firsts);
        const out: Outcome[] = [];
        for (const q of batch) {
          try {
            out.push({ ok: true, value: await this.runOperation(q, tx, trace) });
          } catch (err) {
            if (!isDomainError(err)) throw err;
            out.push({ ok: false, error: err });
          }
        }
        return out;
      }, trace);
      ok = true;
      if (events.length > 0) this.options.onCommit?.(events);
      return outcomes;
    } finally {
      if (trace) transactionChannel.publish({ phase: 'end', trace, ok });
    }
  }

  private async runOperation(q: Queued, tx: StoreTx, trace: object | undefined): Promise<unknown> {
    if (!trace || !q.tag) return q.op.run(tx);
    operationChannel.publish({ phase: 'start', tag: q.tag, trace });
    try {
      return await q.op.run(tx);
    } finally {
      operationChannel.publish({ phase: 'end', tag: q.tag, trace });
    }
  }
}
