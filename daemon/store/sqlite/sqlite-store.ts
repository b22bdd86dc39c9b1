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
import { mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { Sequelize } from 'sequelize';
import { systemClock, type Cancel, type Clock } from '../../clock';
import { applyMigrations } from '../migrate';
import { OUTBOX_SQL, toOutboxEvent } from '../sql-outbox';
import {
  firstLockRow,
  INSERT_CHUNK,
  SqlTx,
  storeCountsSql,
  toStoreCounts,
  tracedConnection,
  writeOutcomes,
  type Row,
  type SqlConnection,
} from '../sql-tx';
import {
  StoreInUse,
  StoreUnavailable,
  toCommittedEvents,
  type CommittedEvent,
  type LockRow,
  type MigrateOptions,
  type OutboxEvent,
  type RelayLease,
  type Renewal,
  type Requester,
  type Store,
  type StoreCounts,
  type StoreTx,
  type TransactionResult,
} from '../store';
import { Checkpointer } from './checkpointer';
import { SQLITE_MIGRATIONS } from './migrations';
import { SQLITE_LOCK_SQL, SQLITE_PRAGMAS, SQLITE_SQL } from './sql';
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
  /**
   * Bound on the `-wal` file, in MiB (default 64): past half of it the writer checkpoints what is
   * left so that the WAL restarts, and the file is cut back to half (journal_size_limit).
   */
  walLimitMb?: number;
  /** More pragmas for the writer connection (`cache_size = -65536`...), for tools that compare settings. */
  pragmas?: readonly string[];
  clock?: Clock;
}

const COUNTS_SQL = storeCountsSql('?');

/** How long a statement waits for another process's write lock on the file (ms). */
const BUSY_TIMEOUT_MS = 250;

/** Delivered outbox rows are removed by the next transaction, or by one of their own after this many ms. */
const REMOVAL_DELAY_MS = 20;

/**
 * ms between looks at the `-wal` file's size, and after a checkpoint that left frames over (a
 * reader held them back: a backup, or for a moment the checkpointing worker thread). The WAL grows
 * meanwhile, so the pause stays short: 1000 ms let it reach 10 times a 3 MB limit on a busy host.
 */
const WAL_CHECK_MS = 2;
const WAL_HELD_RETRY_MS = 50;

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
    private readonly clock: Clock,
    private readonly tokenBase: number,
  ) {
    super(conn, clock.now(), SQLITE_LOCK_SQL);
  }

  async insertLock(name: string, expiresMs: number | null, who: Requester): Promise<LockRow | null> {
    const token = this.tokenBase + this.tokensUsed + 1;
    // The grant's lifetime starts now, however long the transaction has run.
    const at = this.clock.now();
    const until = expiresMs === null ? null : at + expiresMs;
    const row = firstLockRow(await this.conn.query(SQLITE_SQL.insertLock, [name, who.lockedBy, who.process, until, at, at, token]));
    if (row) this.tokensUsed += 1;
    return row;
  }

  protected renewParams(renewal: Renewal): unknown[] {
    const at = this.clock.now();
    if (renewal.kind === 'forever') return [at];
    if (renewal.kind === 'add') return [renewal.ms, at];
    return [at + renewal.ms, at + renewal.ms, at];
  }
}

export class SqliteStore implements Store {
  readonly kind = 'sqlite';
  readonly concurrency = 1;
  readonly soleWriter = true;
  readonly file: string;
  private conn?: SqliteConnection;
  /** The daemon's claim on the file: an exclusive lock held on a file beside it (see claim()). */
  private claimed?: BetterSqlite3.Database;
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
  /** Size of the `-wal` file past which the writer checkpoints (half the limit), and to which it is cut. */
  private readonly walKeepBytes: number;
  /** When (performance.now()) the writer next looks at the `-wal` file's size. */
  private nextWalCheck = 0;

  constructor(private readonly options: SqliteStoreOptions) {
    this.file = resolve(options.file.replace(/^sqlite:(\/\/)?/, ''));
    this.clock = options.clock ?? systemClock;
    this.walKeepBytes = Math.floor(((options.walLimitMb ?? 64) * 1024 * 1024) / 2);
    this.lease = this.makeLease();
  }

  describe(): string {
    return `sqlite:${this.file}`;
  }

  /**
   * One daemon per file: hold an exclusive SQLite lock on `<file>.daemon-lock` for the daemon's
   * lifetime (the operating system drops it when the process ends, even by kill -9), and say who
   * holds it in `<file>.daemon`.
   */
  async claim(): Promise<void> {
    if (this.claimed) return;
    // A local file has nothing to wait for: the daemon stops at once, saying which path is wrong.
    try {
      mkdirSync(dirname(this.file), { recursive: true });
    } catch (err) {
      throw new StoreUnavailable(`cannot create the folder of SQLite database ${this.file}: ${(err as Error).message}`, { cause: err });
    }
    let lock: BetterSqlite3.Database | undefined;
    try {
      lock = new BetterSqlite3(`${this.file}.daemon-lock`, { timeout: 0 });
      lock.pragma('locking_mode = EXCLUSIVE');
      lock.exec('BEGIN EXCLUSIVE');
    } catch (err) {
      lock?.close();
      if (!/^SQLITE_(BUSY|LOCKED)/.test(String((err as { code?: unknown }).code))) {
        throw new StoreUnavailable(
          `cannot lock SQLite database ${this.file} (with ${this.file}.daemon-lock beside it; is the folder writable?): ${(err as Error).message}`,
          { cause: err },
        );
      }
      let holder = '';
      try {
        holder = ` (${readFileSync(`${this.file}.daemon`, 'utf8').trim()})`;
      } catch {
        // not written yet
      }
      throw new StoreInUse(
        `another daemon serves ${this.file}${holder}: one daemon per SQLite file; stop it first, or give this one another database (PostgreSQL for several daemons)`,
      );
    }
    this.claimed = lock;
    writeFileSync(`${this.file}.daemon`, `daemon ${this.options.daemonId}\n`);
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

  counts(): Promise<StoreCounts> {
    return this.use('cannot count the locks', (conn) => {
      this.removeDelivered(conn);
      return toStoreCounts(conn.run(COUNTS_SQL, [this.clock.now()])[0]);
    });
  }

  identity(): Promise<string> {
    return this.use('cannot read the store identity', (conn) => String(conn.run(SQLITE_SQL.identity)[0]?.value ?? ''));
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
    if (this.claimed) {
      rmSync(`${this.file}.daemon`, { force: true });
      this.claimed.close();
    }
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
      // Short busy timeout: this call blocks the event loop while another process (a backup, the
      // sqlite3 shell) writes; well under a client's attempt timeout, so the answer arrives.
      const raw = new BetterSqlite3(this.file, { timeout: BUSY_TIMEOUT_MS });
      raw.pragma(SQLITE_PRAGMAS.wal);
      raw.pragma(SQLITE_PRAGMAS.synchronous(this.options.synchronous ?? 'NORMAL'));
      raw.pragma(SQLITE_PRAGMAS.journalSizeLimit(this.walKeepBytes));
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
      const tx = new SqliteTx(conn, this.clock, await this.tokens.base(conn));
      const value = await work(tx);
      const events = toCommittedEvents(tx.events, this.options.daemonId, tx.now);
      await writeOutcomes(conn, tx.outcomes);
      const afterCommit = [await this.tokens.reserve(conn, tx.tokensUsed), await this.writeOutbox(conn, events)];
      await conn.exec(SQLITE_SQL.commit);
      open = false;
      for (const advance of afterCommit) advance();
      if (removal > this.removedUpTo) this.removedUpTo = removal;
      this.boundWal();
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
    for (let i = 0; i < events.length; i += INSERT_CHUNK) {
      const chunk = events.slice(i, i + INSERT_CHUNK);
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

  /**
   * Keeps the `-wal` file within the limit. The WAL starts again from its beginning only when a
   * transaction begins with every frame checkpointed, which the worker's passive checkpoints never
   * achieve while the writer keeps committing (it appends during each of them). So once the file
   * passes half the limit, the writer itself checkpoints what the worker has not copied yet (its
   * last interval's pages, a few ms, as an automatic checkpoint would); its next transaction then
   * restarts the WAL, and that commit cuts the file back to half the limit (journal_size_limit).
   * Called after a commit, which has succeeded whatever happens here.
   */
  private boundWal(): void {
    const now = performance.now();
    if (now < this.nextWalCheck || !this.conn) return;
    this.nextWalCheck = now + WAL_CHECK_MS;
    try {
      if ((statSync(`${this.file}-wal`, { throwIfNoEntry: false })?.size ?? 0) <= this.walKeepBytes) return;
      const [result] = this.conn.db.pragma(SQLITE_PRAGMAS.checkpoint) as { busy: number; log: number; checkpointed: number }[];
      // Busy: the worker is checkpointing, the next look tries again. Frames left over: a reader
      // (a backup) holds an older snapshot, and the WAL cannot restart before it ends.
      if (result && !result.busy && result.checkpointed < result.log) this.nextWalCheck = now + WAL_HELD_RETRY_MS;
    } catch {
      // Tried again at the next look.
    }
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
