/**
 * Group commit: operations that arrive while a transaction is running wait, then all of them run
 * in the next transaction, one after another, and are answered only after it commits. One commit
 * then serves many requests, and a reply still means "committed".
 *
 * Two things keep one operation from holding up its batch-mates:
 * - an operation that meets a row another database session holds (RowBusy, after the store's lock
 *   timeout) is taken out: the batch runs again without it, and it is tried again alone a few times
 *   after short pauses before it fails;
 * - an operation that breaks its transaction otherwise makes the batch run again one by one.
 *
 * An operation may be idempotent (`once`): its request id is looked up among the outcomes the store
 * recorded (one statement for the whole batch) and, if found, answered from there without running;
 * an outcome that changed something is recorded with the transaction that made it, and a
 * concurrent run of the same id that recorded first makes the batch run again (and answer it).
 */
import { systemClock, type Clock } from './clock';
import { operationChannel, transactionChannel } from './diagnostics';
import {
  isDomainError,
  RowBusy,
  StaleOpening,
  StoreUnavailable,
  TransactionConflict,
  type CommittedEvent,
  type FirstStatement,
  type Store,
  type StoreTx,
  type TransactionOpening,
} from './store/store';

/** What makes an operation idempotent: its request id, and what to record once it changed something. */
export interface Once<T> {
  id: string;
  /**
   * A copy of the request (not its first attempt). Where this daemon is the store's only writer,
   * a first attempt cannot have been recorded before: its copies reach the daemon after it, and
   * no other daemon serves the store. Only copies are looked up there.
   */
  copy: boolean;
  /** How long the outcome is kept, from the transaction's clock (ms). */
  keepMs: number;
  /** The reply's result to record, when the operation changed something; undefined: nothing to record. */
  outcome(value: T): unknown;
}

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
  once?: Once<T>;
}

/** A refusal recorded as the outcome of a request id (the lock rules' code, message and lock). */
export interface RecordedRefusal {
  code: string;
  message: string;
  lock?: unknown;
}

/** The outcome recorded by an earlier run of the same request id: its result, or its refusal. */
export class Recalled {
  constructor(
    readonly result: unknown,
    readonly refusal?: RecordedRefusal,
  ) {}

  /** From the outcome as recorded (StoreTx.remember): `{"result": …}` or `{"refusal": …}`. */
  static from(recorded: string): Recalled {
    const o = JSON.parse(recorded) as { result?: unknown; refusal?: RecordedRefusal };
    return new Recalled(o.result, o.refusal);
  }
}

interface Queued {
  op: Operation<unknown>;
  /** What the caller named the operation by, for the diagnostics. */
  tag?: object;
  /** Tries left after meeting a busy row. */
  busyTries: number;
  resolve(value: unknown): void;
  reject(err: unknown): void;
}

/** Outcome of one operation inside a batch. Domain errors are results, not failures. */
type Outcome = { ok: true; value: unknown } | { ok: false; error: unknown };

/** The operation `queued` met a busy row; its transaction was rolled back. */
class OperationBusy extends Error {
  constructor(
    readonly queued: Queued,
    readonly busy: RowBusy,
  ) {
    super(busy.message);
  }
}

/** Told how each transaction ended (the metrics). */
export interface BatchObserver {
  /** A transaction of `size` operations committed. */
  committed(size: number): void;
  /** A transaction failed with `err` (it may be run again). */
  failed(err: unknown): void;
}

export interface BatcherOptions {
  /** Most operations in one transaction. */
  maxBatch?: number;
  /** Called after each commit with the events it recorded (to wake waiters and the relay). */
  onCommit?: (events: CommittedEvent[]) => void;
  observer?: BatchObserver;
  clock?: Clock;
}

/** Attempts of a transaction that keeps meeting concurrent changes. */
const MAX_ATTEMPTS = 5;
/** An operation meeting a busy row is tried again alone this many times, after these pauses (ms). */
const BUSY_PAUSES_MS = [50, 150, 400];

function byKey(a: Queued, b: Queued): number {
  const x = a.op.key;
  const y = b.op.key;
  if (x === undefined || y === undefined) return x === y ? 0 : x === undefined ? 1 : -1;
  return x < y ? -1 : x > y ? 1 : 0;
}

/**
 * A batch may run its first statements at once when every operation has one, each on its own name
 * (a batch of one too: the store may send its statement with BEGIN).
 */
function firstStatements(batch: readonly Queued[]): FirstStatement[] | null {
  if (batch.length === 0) return null;
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
  private readonly clock: Clock;

  constructor(
    private readonly store: Store,
    private readonly options: BatcherOptions = {},
  ) {
    this.maxBatch = options.maxBatch ?? 256;
    this.clock = options.clock ?? systemClock;
  }

  /** Run `op` in the next transaction; resolves after that transaction commits. */
  run<T>(op: Operation<T>, tag?: object): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.enqueue({ op, tag, busyTries: BUSY_PAUSES_MS.length, resolve: resolve as (v: unknown) => void, reject });
      if (tag && operationChannel.hasSubscribers) operationChannel.publish({ phase: 'queued', tag });
    });
  }

  /** Run an idempotent operation: its value, or the result recorded by an earlier run of its request id. */
  async runOnce<T>(op: Operation<T> & { once: Once<T> }, tag?: object): Promise<{ value: T } | Recalled> {
    const value = await this.run<T | Recalled>(op as Operation<T | Recalled>, tag);
    return value instanceof Recalled ? value : { value: value as T };
  }

  private enqueue(q: Queued): void {
    this.queue.push(q);
    if (this.workers < this.store.concurrency) {
      this.workers += 1;
      // Requests decoded from the same socket read are handed over synchronously, one after
      // another: a microtask starts the batch after the last of them, without waiting a turn
      // of the event loop.
      queueMicrotask(() => void this.drain());
    }
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
        await this.runBatch(batch, true);
      } finally {
        this.busy -= 1;
      }
      // SQLite statements run synchronously: yield between transactions so that NATS traffic is
      // read (and the next batch gathers) even while a long run of batches is queued.
      if (this.queue.length > 0) await new Promise<void>((resolve) => setImmediate(resolve));
    }
    this.workers -= 1;
  }

  private async runBatch(batch: Queued[], prefetch: boolean): Promise<void> {
    let outcomes: Outcome[];
    try {
      outcomes = await this.transact(batch, prefetch);
    } catch (err) {
      if (err instanceof OperationBusy) {
        // Only that operation waits for the row; the others go on without it.
        const rest = batch.filter((q) => q !== err.queued);
        if (rest.length > 0) await this.runBatch(rest, prefetch);
        this.retryBusy(err.queued, err.busy);
        return;
      }
      if (err instanceof RowBusy && prefetch) {
        // Met during the batch's first pass: run statement by statement to find whose row it is.
        return this.runBatch(batch, false);
      }
      if (batch.length > 1 && !(err instanceof StoreUnavailable)) {
        // One operation broke the transaction: run each alone so only that one fails.
        for (const q of batch) await this.runBatch([q], prefetch);
        return;
      }
      for (const q of batch) q.reject(err);
      return;
    }
    outcomes.forEach((o, i) => (o.ok ? batch[i]!.resolve(o.value) : batch[i]!.reject(o.error)));
  }

  /** Queue `q` again after a pause, or fail it once its tries are spent. */
  private retryBusy(q: Queued, busy: RowBusy): void {
    const pause = BUSY_PAUSES_MS[BUSY_PAUSES_MS.length - q.busyTries];
    if (pause === undefined) return q.reject(busy);
    q.busyTries -= 1;
    this.clock.schedule(() => this.enqueue(q), pause);
  }

  /** One transaction over `batch`, run again when it meets a concurrent change. */
  private async transact(batch: Queued[], prefetch: boolean): Promise<Outcome[]> {
    let openWithFirsts = prefetch;
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.transactOnce(batch, prefetch, openWithFirsts);
      } catch (err) {
        if (err instanceof StaleOpening) {
          openWithFirsts = false; // rare: a copy of a request already answered
          continue;
        }
        if (!(err instanceof TransactionConflict) || attempt >= MAX_ATTEMPTS) throw err;
      }
    }
  }

  /**
   * `openWithFirsts`: hand the store the batch's first statements before knowing which requests
   * were answered before (so it can send them with BEGIN); otherwise they run after the look-up.
   */
  private async transactOnce(batch: Queued[], prefetch: boolean, openWithFirsts: boolean): Promise<Outcome[]> {
    const trace = transactionChannel.hasSubscribers ? {} : undefined;
    if (trace) transactionChannel.publish({ phase: 'start', trace, size: batch.length });
    let ok = false;
    const opening: TransactionOpening = { recall: this.recallIds(batch), first: openWithFirsts ? firstStatements(batch) : null };
    try {
      const { value: outcomes, events } = await this.store.transaction(
        async (tx) => {
          const recalled = opening.recall.length > 0 ? await tx.recall(opening.recall) : new Map<string, string>();
          if (recalled.size > 0 && opening.first && tx.prefetch) throw new StaleOpening();
          const running = recalled.size > 0 ? batch.filter((q) => !recalled.has(q.op.once!.id)) : batch;
          const firsts = opening.first ?? (prefetch ? firstStatements(running) : null);
          if (firsts && tx.prefetch) await tx.prefetch(firsts);
          const out: Outcome[] = [];
          for (const q of batch) {
            const done = q.op.once ? recalled.get(q.op.once.id) : undefined;
            if (done !== undefined) {
              out.push({ ok: true, value: Recalled.from(done) });
              continue;
            }
            try {
              const value = await this.runOperation(q, tx, trace);
              this.remember(tx, q, value);
              out.push({ ok: true, value });
            } catch (err) {
              if (err instanceof RowBusy) throw new OperationBusy(q, err);
              if (!isDomainError(err)) throw err;
              out.push({ ok: false, error: err });
            }
          }
          if (!this.store.soleWriter) await this.recallLate(tx, batch, out);
          return out;
        },
        trace,
        opening,
      );
      ok = true;
      this.options.observer?.committed(batch.length);
      if (events.length > 0) this.options.onCommit?.(events);
      return outcomes;
    } catch (err) {
      if (!(err instanceof StaleOpening)) this.options.observer?.failed(err instanceof OperationBusy ? err.busy : err);
      throw err;
    } finally {
      if (trace) transactionChannel.publish({ phase: 'end', trace, ok });
    }
  }

  /** The request ids of the batch's idempotent operations that may have a recorded outcome. */
  private recallIds(batch: readonly Queued[]): string[] {
    const soleWriter = this.store.soleWriter;
    return batch.filter((q) => q.op.once && (q.op.once.copy || !soleWriter)).map((q) => q.op.once!.id);
  }

  /**
   * Another daemon may have run a copy of the same request meanwhile: an operation that waited for
   * a row the copy held then found the copy's change (the lock taken, the lock gone) and changed
   * nothing. Its answer is the copy's, committed by now: look again for those that changed nothing.
   */
  private async recallLate(tx: StoreTx, batch: readonly Queued[], out: Outcome[]): Promise<void> {
    const unchanged = batch.flatMap((q, i) => {
      const o = out[i]!;
      const once = q.op.once;
      if (!once || (o.ok && (o.value instanceof Recalled || once.outcome(o.value) !== undefined))) return [];
      return [i];
    });
    if (unchanged.length === 0) return;
    const found = await tx.recall(unchanged.map((i) => batch[i]!.op.once!.id));
    for (const i of unchanged) {
      const done = found.get(batch[i]!.op.once!.id);
      if (done !== undefined) out[i] = { ok: true, value: Recalled.from(done) };
    }
  }

  /** Record what an idempotent operation answered, if it changed something. */
  private remember(tx: StoreTx, q: Queued, value: unknown): void {
    const once = q.op.once;
    if (!once) return;
    const result = once.outcome(value);
    if (result !== undefined) tx.remember(once.id, JSON.stringify({ result }), tx.now + once.keepMs);
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
