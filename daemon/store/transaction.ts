/**
 * Group commit: requests that arrive while a transaction is running wait, then all of them run
 * in the next transaction, one after another, and are answered only after it commits. One
 * commit then serves many requests, and a reply still means "committed".
 */
import { randomUUID } from 'node:crypto';
import type { EventCause, EventType } from '../../shared/events';
import type { LockRecord } from '../../shared/protocol';
import { type FirstStatement, runFirstPass } from './lock-ops';
import { Database, isRetryableConflict, isUnavailableError, type Row, type SqlConnection, StoreUnavailable } from './database';

/** A change to record in the outbox, in the same transaction. */
export interface PendingEvent {
  type: EventType;
  lock: LockRecord;
  cause: EventCause;
}

/** What an operation sees: the connection, the transaction's clock and its event list. */
export interface Tx {
  readonly conn: SqlConnection;
  readonly dialect: SqlConnection['dialect'];
  /** Milliseconds since the epoch; the database's clock on PostgreSQL. */
  readonly now: number;
  query(sql: string, params?: readonly unknown[]): Promise<Row[]>;
  /** SQLite: the next fencing token (PostgreSQL takes them from a sequence inside the SQL). */
  nextToken(): number;
  emit(type: EventType, lock: LockRecord, cause: EventCause): void;
  /**
   * PostgreSQL: the rows of this operation's first statement (`kind` on `name`), if the batch has
   * already run it for all its operations at once; taken once, undefined otherwise.
   */
  prefetched(kind: FirstStatement['kind'], name: string): Row[] | undefined;
  /** Run `fn` so that, if it throws, none of its writes are kept (the rest of the batch is). */
  atomically<T>(fn: () => Promise<T>): Promise<T>;
}

export type Operation<T> = (tx: Tx) => Promise<T>;

interface Queued {
  op: Operation<unknown>;
  /** The lock name the operation works on, if one: a batch runs its operations in name order. */
  key?: string;
  /** The operation's first statement, if a batch may run it together with the others'. */
  first?: FirstStatement;
  resolve(value: unknown): void;
  reject(err: unknown): void;
}

/** Outcome of one operation inside a batch. Domain errors are results, not failures. */
type Outcome = { ok: true; value: unknown } | { ok: false; error: unknown };

class BatchTx implements Tx {
  readonly events: PendingEvent[] = [];
  tokensUsed = 0;
  private savepoints = 0;
  /** The current operation's first statement, already run by the batch, and its rows. */
  firstDone?: { kind: FirstStatement['kind']; name: string; rows: Row[] };

  constructor(
    readonly conn: SqlConnection,
    readonly now: number,
    private readonly tokenBase: number,
  ) {}

  get dialect() {
    return this.conn.dialect;
  }

  query(sql: string, params?: readonly unknown[]): Promise<Row[]> {
    return this.conn.query(sql, params);
  }

  nextToken(): number {
    this.tokensUsed += 1;
    return this.tokenBase + this.tokensUsed;
  }

  emit(type: EventType, lock: LockRecord, cause: EventCause): void {
    this.events.push({ type, lock, cause });
  }

  prefetched(kind: FirstStatement['kind'], name: string): Row[] | undefined {
    const done = this.firstDone;
    if (!done || done.kind !== kind || done.name !== name) return undefined;
    this.firstDone = undefined;
    return done.rows;
  }

  async atomically<T>(fn: () => Promise<T>): Promise<T> {
    const name = `lm_sp${++this.savepoints}`;
    const eventsBefore = this.events.length;
    await this.conn.exec(`SAVEPOINT ${name}`);
    try {
      const value = await fn();
      await this.conn.exec(`RELEASE SAVEPOINT ${name}`);
      return value;
    } catch (err) {
      await this.conn.exec(`ROLLBACK TO SAVEPOINT ${name}; RELEASE SAVEPOINT ${name}`);
      this.events.length = eventsBefore;
      throw err;
    }
  }
}

export interface BatcherOptions {
  /** Most operations in one transaction. */
  maxBatch?: number;
  /**
   * Transactions in flight at once. SQLite has one writer, so 1; on PostgreSQL several batches
   * on several connections overlap their network round trips.
   */
  concurrency?: number;
  /** The daemon's instance id, written into each event. */
  daemonId: string;
  /** Called after each commit with the events it recorded (to wake waiters and the relay). */
  onCommit?: (events: CommittedEvent[]) => void;
  /**
   * Runs first in every transaction (bookkeeping that may ride along with requests, such as
   * removing delivered events from the outbox); what it returns is called once that commits.
   */
  housekeeping?: (tx: Tx) => Promise<(() => void) | undefined>;
}

export interface CommittedEvent extends PendingEvent {
  seq: number;
  id: string;
  at: number;
  /** `lock` and `cause` as written to the outbox, so that the relay need not serialise them again. */
  lockJson: string;
  causeJson: string;
}

/** Errors that an operation throws on purpose (Locked, NotFound...) carry this marker. */
export interface DomainError {
  readonly domain: true;
}
export function isDomainError(err: unknown): err is DomainError {
  return typeof err === 'object' && err !== null && (err as { domain?: unknown }).domain === true;
}

/**
 * SQLite: a number series (fencing tokens, event seqs) drawn in memory by the one writer. The
 * database holds how far the series is reserved, raised a block at a time inside a transaction
 * that draws past it, so most commits write no counter row and a restart goes on beyond every
 * number handed out (skipping the rest of the block: numbers grow and never repeat, with gaps).
 */
export class ReservedSeries {
  static readonly BLOCK = 10_000;
  /** Last number used by a committed transaction; undefined until read from the database. */
  private last?: number;
  private reserved = 0;

  constructor(readonly name: string) {}

  /** The last number used, reading the reservation at first use. */
  async base(conn: SqlConnection): Promise<number> {
    if (this.last === undefined) {
      const [row] = await conn.query('SELECT value FROM lockmgr_counters WHERE name = ?', [this.name]);
      this.reserved = Number(row?.value ?? 0);
      this.last = this.reserved;
    }
    return this.last;
  }

  /**
   * Within the transaction that used `used` numbers after base(): raise the reservation if they
   * pass it. Returns what to call once that transaction has committed.
   */
  async reserve(conn: SqlConnection, used: number): Promise<() => void> {
    if (used === 0) return () => undefined;
    const last = this.last! + used;
    let reserved = this.reserved;
    if (last > reserved) {
      reserved = last + ReservedSeries.BLOCK;
      await conn.query('INSERT OR REPLACE INTO lockmgr_counters (name, value) VALUES (?, ?)', [this.name, reserved]);
    }
    return () => {
      this.last = last;
      this.reserved = reserved;
    };
  }
}

function byKey(a: Queued, b: Queued): number {
  if (a.key === undefined || b.key === undefined) return a.key === b.key ? 0 : a.key === undefined ? 1 : -1;
  return a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
}

export class Batcher {
  private queue: Queued[] = [];
  /** Workers draining the queue, each running one transaction at a time. */
  private workers = 0;
  /** Workers running a transaction right now. */
  private busy = 0;
  private readonly maxBatch: number;
  private readonly concurrency: number;
  private readonly tokens = new ReservedSeries('token');
  private readonly eventSeqs = new ReservedSeries('event_seq');

  constructor(
    private readonly db: Database,
    private readonly options: BatcherOptions,
  ) {
    this.maxBatch = options.maxBatch ?? 256;
    this.concurrency = db.dialect === 'sqlite' ? 1 : Math.max(1, options.concurrency ?? 1);
  }

  /**
   * Run `op` in the next transaction; resolves after that transaction commits. `first` is the
   * statement `op` starts with, when it is one that a batch can run for many operations at once.
   */
  run<T>(op: Operation<T>, key?: string, first?: FirstStatement): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ op: op as Operation<unknown>, key, first, resolve: resolve as (v: unknown) => void, reject });
      if (this.workers < this.concurrency) {
        this.workers += 1;
        // Requests decoded from the same socket read are handed over synchronously, one after
        // another: a microtask starts the batch after the last of them, without waiting a turn
        // of the event loop.
        queueMicrotask(() => void this.drain());
      }
    });
  }

  /** The daemon instance id written into each event. */
  get daemonId(): string {
    return this.options.daemonId;
  }

  /** Requests waiting or running. */
  get pending(): number {
    return this.queue.length + this.workers;
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
      if (batch.length > 1 && !isUnavailableError(err)) {
        // One operation broke the transaction: run each alone so only that one fails.
        for (const q of batch) await this.runBatch([q]);
        return;
      }
      for (const q of batch) q.reject(err);
      return;
    }
    outcomes.forEach((o, i) => (o.ok ? batch[i]!.resolve(o.value) : batch[i]!.reject(o.error)));
  }

  /** One transaction over `ops`, retried when PostgreSQL breaks a deadlock. */
  private async transact(ops: Queued[]): Promise<Outcome[]> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.transactOnce(ops);
      } catch (err) {
        if (!isRetryableConflict(err) || attempt >= 5) throw err;
      }
    }
  }

  private async transactOnce(ops: Queued[]): Promise<Outcome[]> {
    const conn = await this.db.connect();
    let open = true; // roll back on failure even if only part of begin() went through
    try {
      const now = await conn.begin();
      const sqlite = conn.dialect === 'sqlite';
      const tx = new BatchTx(conn, now, sqlite ? await this.tokens.base(conn) : 0);
      const afterHousekeeping = await this.options.housekeeping?.(tx);
      const firstRows = await this.firstPass(tx, ops);
      const outcomes: Outcome[] = [];
      for (const [i, q] of ops.entries()) {
        tx.firstDone = firstRows ? { kind: q.first!.kind, name: q.first!.name, rows: firstRows[i]! } : undefined;
        try {
          outcomes.push({ ok: true, value: await q.op(tx) });
        } catch (err) {
          if (!isDomainError(err)) throw err;
          outcomes.push({ ok: false, error: err });
        }
      }
      tx.firstDone = undefined;
      const committed = await this.writeOutbox(tx);
      const afterCommit = sqlite
        ? [await this.tokens.reserve(conn, tx.tokensUsed), await this.eventSeqs.reserve(conn, committed.length)]
        : [];
      await conn.exec('COMMIT');
      open = false;
      for (const advance of afterCommit) advance();
      afterHousekeeping?.();
      if (committed.length > 0) this.options.onCommit?.(committed);
      return outcomes;
    } catch (err) {
      if (open) await conn.exec('ROLLBACK').catch(() => undefined);
      if (isUnavailableError(err)) throw new StoreUnavailable(`the database is unavailable: ${(err as Error).message}`, err);
      throw err;
    } finally {
      conn.release();
    }
  }

  /**
   * PostgreSQL: when every operation of the batch starts with a statement the batch can run for
   * all of them (lock inserts and unlocks, each on a name of its own), run those in one round trip
   * instead of one each. The rows are then taken in the batch's name order, as one by one.
   */
  private async firstPass(tx: BatchTx, ops: Queued[]): Promise<Row[][] | null> {
    if (tx.dialect !== 'postgres' || ops.length < 2 || !ops.every((q) => q.first)) return null;
    const names = new Set(ops.map((q) => q.first!.name));
    if (names.size < ops.length) return null;
    return runFirstPass(tx, ops.map((q) => q.first!));
  }

  /** Insert the batch's events into the outbox; returns them with their sequence numbers. */
  private async writeOutbox(tx: BatchTx): Promise<CommittedEvent[]> {
    const out: CommittedEvent[] = [];
    const daemon = this.options.daemonId;
    // SQLite numbers the events here; PostgreSQL's sequence numbers them in the INSERT.
    let seq = tx.dialect === 'sqlite' && tx.events.length > 0 ? await this.eventSeqs.base(tx.conn) : 0;
    const CHUNK = 500;
    for (let i = 0; i < tx.events.length; i += CHUNK) {
      const chunk = tx.events.slice(i, i + CHUNK);
      const params: unknown[] = [];
      const first = out.length;
      for (const e of chunk) {
        const event: CommittedEvent = {
          type: e.type,
          lock: e.lock,
          cause: e.cause,
          seq: tx.dialect === 'sqlite' ? ++seq : 0,
          id: randomUUID(),
          at: tx.now,
          lockJson: JSON.stringify(e.lock),
          causeJson: JSON.stringify(e.cause),
        };
        out.push(event);
        if (tx.dialect === 'sqlite') params.push(event.seq);
        params.push(event.id, e.type, e.lock.name, event.lockJson, event.causeJson, daemon, tx.now);
      }
      if (tx.dialect === 'sqlite') {
        const values = chunk.map(() => '(?, ?, ?, ?, ?, ?, ?, ?)').join(', ');
        await tx.query(`INSERT INTO lockmgr_outbox (seq, event_id, type, name, lock, cause, daemon, at) VALUES ${values}`, params);
        continue;
      }
      const values = chunk.map(() => '(?, ?, ?, ?, ?, ?, ?)').join(', ');
      const rows = await tx.query(
        `INSERT INTO lockmgr_outbox (event_id, type, name, lock, cause, daemon, at) VALUES ${values} RETURNING seq, event_id`,
        params,
      );
      const seqById = new Map(rows.map((r) => [String(r.event_id), Number(r.seq)]));
      for (let j = first; j < out.length; j++) out[j]!.seq = seqById.get(out[j]!.id) ?? 0;
    }
    return out;
  }
}
