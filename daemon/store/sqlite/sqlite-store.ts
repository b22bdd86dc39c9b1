/**
 * The SQLite backend: one daemon, one file, one writer connection.
 *
 * Statements run through better-sqlite3, synchronously in this thread (about 2 µs each, where the
 * asynchronous sqlite3 binding pays a thread-pool round trip of 60-80 µs per statement), so a
 * whole batch transaction runs without yielding to other work. Sequelize (sqlite3 driver) only
 * applies the migrations.
 *
 * Being the only writer, the daemon numbers fencing tokens and event seqs itself (ReservedSeries)
 * and publishes its commits from memory (`soleWriter`). Every use of the connection — requests'
 * transactions, the relay's outbox reads and removals — runs one at a time.
 */
import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { Sequelize } from 'sequelize';
import { systemClock, type Cancel, type Clock } from '../../clock';
import { applyMigrations } from '../migrate';
import { OUTBOX_INSERT_CHUNK, OUTBOX_SQL, toOutboxEvent } from '../sql-outbox';
import { firstLockRow, SqlTx, tracedConnection, type Row, type SqlConnection } from '../sql-tx';
import {
  StoreUnavailable,
  toCommittedEvents,
  type CommittedEvent,
  type LockRow,
  type MigrateOptions,
  type OutboxEvent,
  type RelayLease,
  type Requester,
  type Store,
  type StoreTx,
  type TransactionResult,
} from '../store';
import { Checkpointer } from './checkpointer';
import { SQLITE_MIGRATIONS } from './migrations';
import { SQLITE_PRAGMAS, SQLITE_SQL } from './sql';
import { ReservedSeries } from './reserved-series';

export interface SqliteStoreOptions {
  /** The database file (`sqlite:` prefix allowed). */
  file: string;
  /** The daemon's instance id, written into each event. */
  daemonId: string;
  /**
   * `synchronous` pragma. NORMAL (default): a committed transaction survives the daemon being
   * killed; FULL: it also survives power loss, at one fsync per commit.
   */
  synchronous?: 'FULL' | 'NORMAL';
  /** ms between WAL checkpoints by a worker thread; 0 leaves them to SQLite, inside commits. */
  checkpointIntervalMs?: number;
  /** More pragmas for the writer connection (`cache_size = -65536`...), for tools that compare settings. */
  pragmas?: readonly string[];
  clock?: Clock;
}

/** Delivered outbox rows are removed by the next transaction, or by one of their own after this many ms. */
const REMOVAL_DELAY_MS = 20;

const UNAVAILABLE = new Set(['SQLITE_BUSY', 'SQLITE_LOCKED', 'SQLITE_CANTOPEN', 'SQLITE_IOERR', 'SQLITE_FULL', 'SQLITE_READONLY']);

/** True when an error means "the file cannot be used now", as opposed to a bug in a statement. */
function isUnavailable(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown } | null;
  // better-sqlite3 reports extended result codes (SQLITE_IOERR_WRITE, SQLITE_BUSY_SNAPSHOT...):
  // the primary code is the part before the second underscore.
  const code = String(e?.code ?? '').replace(/^(SQLITE_[A-Z]+)_.*$/, '$1');
  return UNAVAILABLE.has(code) || /database is closed|not open/i.test(String(e?.message ?? ''));
}

function unavailable(err: unknown, what: string): unknown {
  if (err instanceof StoreUnavailable || !isUnavailable(err)) return err;
  return new StoreUnavailable(`${what}: ${(err as Error).message}`, { cause: err });
}

/** better-sqlite3 with a cache of prepared statements. */
class SqliteConnection implements SqlConnection {
  private readonly statements = new Map<string, BetterSqlite3.Statement>();
  constructor(readonly db: BetterSqlite3.Database) {}

  private statement(sql: string): BetterSqlite3.Statement {
    let stmt = this.statements.get(sql);
    if (!stmt) {
      stmt = this.db.prepare(sql);
      this.statements.set(sql, stmt);
    }
    return stmt;
  }

  /** Synchronous; the async `query` of SqlConnection wraps it. */
  run(sql: string, params: readonly unknown[] = []): Row[] {
    const stmt = this.statement(sql);
    if (stmt.reader) return stmt.all(...params) as Row[];
    stmt.run(...params);
    return [];
  }

  async query(sql: string, params?: readonly unknown[]): Promise<Row[]> {
    return this.run(sql, params);
  }

  async exec(sql: string): Promise<void> {
    this.db.exec(sql);
  }

  close(): void {
    this.statements.clear();
    if (this.db.open) this.db.close();
  }
}

class SqliteTx extends SqlTx {
  tokensUsed = 0;

  constructor(
    conn: SqlConnection,
    now: number,
    private readonly tokenBase: number,
  ) {
    super(conn, now);
  }

  async insertLock(name: string, lockedUntil: number | null, who: Requester): Promise<LockRow | null> {
    const token = this.tokenBase + this.tokensUsed + 1;
    const row = firstLockRow(
      await this.conn.query(SQLITE_SQL.insertLock, [name, who.lockedBy, who.process, lockedUntil, this.now, this.now, token]),
    );
    if (row) this.tokensUsed += 1;
    return row;
  }
}

export class SqliteStore implements Store {
  readonly kind = 'sqlite';
  readonly concurrency = 1;
  readonly soleWriter = true;
  readonly file: string;
  private conn?: SqliteConnection;
  private checkpointer?: Checkpointer;
  private closed = false;
  private readonly clock: Clock;
  private readonly tokens = new ReservedSeries('token');
  private readonly eventSeqs = new ReservedSeries('event_seq');
  /** Every use of the connection waits for the one before. */
  private tail: Promise<unknown> = Promise.resolve();
  /** Delivered outbox rows: removal asked up to `removeUpTo`, done up to `removedUpTo`. */
  private removeUpTo = 0;
  private removedUpTo = 0;
  private cancelRemoval?: Cancel;
  private readonly lease: RelayLease;

  constructor(private readonly options: SqliteStoreOptions) {
    this.file = resolve(options.file.replace(/^sqlite:(\/\/)?/, ''));
    this.clock = options.clock ?? systemClock;
    this.lease = this.makeLease();
  }

  describe(): string {
    return `sqlite:${this.file}`;
  }

  async migrate(options: MigrateOptions = {}): Promise<string[]> {
    mkdirSync(dirname(this.file), { recursive: true });
    const sequelize = new Sequelize({ dialect: 'sqlite', storage: this.file, logging: false, pool: { max: 1, min: 0, idle: 1000 } });
    try {
      return await applyMigrations(sequelize, SQLITE_MIGRATIONS, options);
    } finally {
      await sequelize.close();
    }
  }

  transaction<T>(work: (tx: StoreTx) => Promise<T>, trace?: object): Promise<TransactionResult<T>> {
    return this.exclusive(() => this.transact(work, trace));
  }

  countOutbox(upTo = Number.MAX_SAFE_INTEGER): Promise<number> {
    return this.use('cannot read the outbox', (conn) => {
      this.removeDelivered(conn); // what was delivered is not waiting
      return Number(conn.run(OUTBOX_SQL.count, [upTo])[0]?.n ?? 0);
    });
  }

  relayLease(): RelayLease {
    return this.lease;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.cancelRemoval?.();
    await this.tail.catch(() => undefined);
    await this.checkpointer?.stop();
    this.conn?.close();
  }

  /** One statement (or a few) on the connection, outside a transaction, in its turn. */
  private use<T>(what: string, fn: (conn: SqliteConnection) => T): Promise<T> {
    return this.exclusive(async () => fn(this.connection())).catch((err: unknown) => Promise.reject(unavailable(err, what)));
  }

  /** Run `fn` once every earlier use of the connection has finished. */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.tail.then(fn, fn);
    this.tail = run.catch(() => undefined);
    return run;
  }

  /** The writer connection, opened on first use (and again after a failed open). */
  private connection(): SqliteConnection {
    if (this.closed) throw new StoreUnavailable('the database has been closed');
    if (this.conn) return this.conn;
    try {
      mkdirSync(dirname(this.file), { recursive: true });
      // Short busy timeout: this call blocks the event loop while another process writes.
      const raw = new BetterSqlite3(this.file, { timeout: 1000 });
      raw.pragma(SQLITE_PRAGMAS.wal);
      raw.pragma(SQLITE_PRAGMAS.synchronous(this.options.synchronous ?? 'NORMAL'));
      for (const pragma of this.options.pragmas ?? []) raw.pragma(pragma);
      this.conn = new SqliteConnection(raw);
      this.startCheckpointer(raw);
      return this.conn;
    } catch (err) {
      throw new StoreUnavailable(`cannot open SQLite database ${this.file}: ${(err as Error).message}`, { cause: err });
    }
  }

  private async transact<T>(work: (tx: StoreTx) => Promise<T>, trace?: object): Promise<TransactionResult<T>> {
    let open = false; // roll back on failure once BEGIN went through
    try {
      const conn = tracedConnection(this.connection(), trace);
      await conn.exec(SQLITE_SQL.begin);
      open = true;
      const removal = this.removeUpTo > this.removedUpTo ? this.removeUpTo : 0;
      if (removal) await conn.query(OUTBOX_SQL.removeThrough, [removal]);
      const tx = new SqliteTx(conn, this.clock.now(), await this.tokens.base(conn));
      const value = await work(tx);
      const events = toCommittedEvents(tx.events, this.options.daemonId, tx.now);
      const afterCommit = [await this.tokens.reserve(conn, tx.tokensUsed), await this.writeOutbox(conn, events)];
      await conn.exec(SQLITE_SQL.commit);
      open = false;
      for (const advance of afterCommit) advance();
      if (removal > this.removedUpTo) this.removedUpTo = removal;
      return { value, events };
    } catch (err) {
      if (open) {
        try {
          this.conn?.run(SQLITE_SQL.rollback);
        } catch {
          // SQLite may have rolled back already (an I/O error ends the transaction).
        }
      }
      throw unavailable(err, 'the database is unavailable');
    }
  }

  /** Number the events and insert them; returns what to call once the transaction committed. */
  private async writeOutbox(conn: SqlConnection, events: CommittedEvent[]): Promise<() => void> {
    if (events.length === 0) return () => undefined;
    let seq = await this.eventSeqs.base(conn);
    for (let i = 0; i < events.length; i += OUTBOX_INSERT_CHUNK) {
      const chunk = events.slice(i, i + OUTBOX_INSERT_CHUNK);
      const params: unknown[] = [];
      for (const e of chunk) {
        e.seq = ++seq;
        params.push(e.seq, e.id, e.type, e.name, e.lockJson, e.causeJson, e.daemon, e.at);
      }
      await conn.query(SQLITE_SQL.insertOutbox(chunk.length), params);
    }
    return this.eventSeqs.reserve(conn, events.length);
  }

  /** Remove the delivered rows not removed yet (one statement, outside a transaction). */
  private removeDelivered(conn: SqliteConnection): void {
    const upTo = this.removeUpTo;
    if (upTo <= this.removedUpTo) return;
    conn.run(OUTBOX_SQL.removeThrough, [upTo]);
    this.removedUpTo = upTo;
  }

  /** The relay's access to the outbox: always this daemon's, the only writer. */
  private makeLease(): RelayLease {
    const outbox = <T>(what: string, fn: (conn: SqliteConnection) => T): Promise<T> => this.use(what, fn);
    return {
      held: true,
      acquire: async () => true,
      read: (after: number, limit: number, before?: number): Promise<OutboxEvent[]> =>
        outbox('cannot read the outbox', (conn) =>
          (before === undefined ? conn.run(OUTBOX_SQL.read, [after, limit]) : conn.run(OUTBOX_SQL.readBefore, [after, before, limit])).map(
            toOutboxEvent,
          ),
        ),
      remove: (seqs: readonly number[]) =>
        outbox('cannot remove from the outbox', (conn) => {
          conn.run(SQLITE_SQL.removeOutboxRows(seqs.length), seqs);
        }),
      removeThrough: async (seq: number) => {
        if (seq <= this.removeUpTo) return;
        this.removeUpTo = seq;
        // Along with the next transaction, or on its own if none comes soon.
        this.cancelRemoval ??= this.clock.schedule(() => {
          this.cancelRemoval = undefined;
          if (!this.closed) void outbox('cannot remove from the outbox', (conn) => this.removeDelivered(conn)).catch(() => undefined);
        }, REMOVAL_DELAY_MS);
      },
      release: async () => undefined,
    };
  }

  /** WAL checkpoints in a worker thread rather than inside the daemon's commits. */
  private startCheckpointer(raw: BetterSqlite3.Database): void {
    const interval = this.options.checkpointIntervalMs ?? 100;
    if (interval <= 0) return;
    this.checkpointer = new Checkpointer(
      this.file,
      interval,
      () => undefined, // busy or locked: the next tick tries again
      () => {
        // The worker is gone: the writer checkpoints for itself again, as SQLite does by default.
        if (!this.closed) raw.pragma(SQLITE_PRAGMAS.autocheckpoint(1000));
      },
    );
    raw.pragma(SQLITE_PRAGMAS.autocheckpoint(0));
    this.checkpointer.start();
  }
}
