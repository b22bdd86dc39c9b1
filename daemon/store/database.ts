/**
 * Opens the lock database through Sequelize and hands out raw connections for the hot path.
 *
 * Sequelize owns the connection settings, pooling and migrations; lock operations then run
 * prepared statements on the connection it gives us, because they execute thousands of times a
 * second and Sequelize's per-query machinery would cost more than the statement itself.
 */
import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { Sequelize } from 'sequelize';
import { Checkpointer } from './checkpointer';

export type Dialect = 'sqlite' | 'postgres';
export type Row = Record<string, unknown>;

/** One database connection: run a statement, get its rows. Placeholders are `?`. */
export interface SqlConnection {
  readonly dialect: Dialect;
  query(sql: string, params?: readonly unknown[]): Promise<Row[]>;
  /** Several statements without parameters, in one round trip where the driver allows. */
  exec(sql: string): Promise<void>;
  /**
   * Open a write transaction and read the clock that decides expiry in it (ms since the epoch):
   * the database's on PostgreSQL (in the same round trip), this process's on SQLite.
   */
  begin(): Promise<number>;
  release(): void;
}

export interface DatabaseOptions {
  /** A SQLite file path or a `postgres://` URL. */
  url: string;
  /** Connections in the PostgreSQL pool. */
  poolSize?: number;
  /**
   * SQLite `synchronous` pragma. NORMAL (default): a committed transaction survives the daemon
   * being killed; FULL: it also survives power loss, at one fsync per commit.
   */
  sqliteSynchronous?: 'FULL' | 'NORMAL';
  /** SQLite: ms between WAL checkpoints by a worker thread; 0 leaves them to SQLite, inside commits. */
  checkpointIntervalMs?: number;
}

export function dialectOf(url: string): Dialect {
  return /^postgres(ql)?:\/\//i.test(url) ? 'postgres' : 'sqlite';
}

/** The URL with any password replaced, for logs and `lockmgr config`. */
export function maskDatabaseUrl(url: string): string {
  return url.replace(/^(postgres(?:ql)?:\/\/[^:/@]*:)([^@]*)@/i, '$1***@');
}

/** The database is unreachable or refused the work: the request may be retried later. */
export class StoreUnavailable extends Error {
  constructor(message: string, override readonly cause?: unknown) {
    super(message);
    this.name = 'StoreUnavailable';
  }
}

const SQLITE_UNAVAILABLE = new Set(['SQLITE_BUSY', 'SQLITE_LOCKED', 'SQLITE_CANTOPEN', 'SQLITE_IOERR', 'SQLITE_FULL', 'SQLITE_READONLY']);
const NET_ERRORS = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EHOSTUNREACH']);

/** True when an error means "the database is away", as opposed to a bug in a statement. */
export function isUnavailableError(err: unknown): boolean {
  if (err instanceof StoreUnavailable) return true;
  const e = err as { code?: string; message?: string; name?: string; parent?: unknown; original?: unknown };
  if (!e || typeof e !== 'object') return false;
  if (e.parent && e.parent !== err && isUnavailableError(e.parent)) return true;
  const code = String(e.code ?? '');
  // better-sqlite3 reports extended result codes (SQLITE_IOERR_WRITE, SQLITE_BUSY_SNAPSHOT...):
  // the primary code is the part before the second underscore.
  if (SQLITE_UNAVAILABLE.has(code.replace(/^(SQLITE_[A-Z]+)_.*$/, '$1')) || NET_ERRORS.has(code)) return true;
  // PostgreSQL classes 08 (connection), 53 (resources), 57 (operator intervention: shutdown).
  if (/^(08|53|57)/.test(code)) return true;
  const name = String(e.name ?? '');
  if (name.startsWith('SequelizeConnection') || name === 'SequelizeHostNotFoundError') return true;
  return /Connection terminated|connection.*(closed|ended)|not queryable|Client has encountered a connection error|database is closed/i.test(
    String(e.message ?? ''),
  );
}

/** PostgreSQL aborted the transaction to break a deadlock or a serialization conflict: retry it. */
export function isRetryableConflict(err: unknown): boolean {
  const code = String((err as { code?: string })?.code ?? '');
  return code === '40P01' || code === '40001';
}

interface PgClient {
  query(config: { name?: string; text: string; values?: readonly unknown[] }): Promise<{ rows: Row[] }>;
  query(text: string): Promise<unknown>;
}

/**
 * SQLite through better-sqlite3: statements run synchronously in this thread, about 2 µs each,
 * where the asynchronous sqlite3 binding pays a thread-pool round trip (60-80 µs measured) per
 * statement. A whole batch transaction therefore runs without yielding to other work.
 */
class SqliteConnection implements SqlConnection {
  readonly dialect = 'sqlite' as const;
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

  async query(sql: string, params: readonly unknown[] = []): Promise<Row[]> {
    const stmt = this.statement(sql);
    if (stmt.reader) return stmt.all(...params) as Row[];
    stmt.run(...params);
    return [];
  }

  async exec(sql: string): Promise<void> {
    this.db.exec(sql);
  }

  async begin(): Promise<number> {
    this.db.exec('BEGIN IMMEDIATE');
    return Date.now();
  }

  release(): void {
    // The SQLite connection is the database's one writer; it stays open until close().
  }

  close(): void {
    this.statements.clear();
    if (this.db.open) this.db.close();
  }
}

/** `?` placeholders -> `$1, $2, ...` (our SQL never has `?` inside string literals). */
const pgTextCache = new Map<string, { name: string; text: string }>();
function pgStatement(sql: string): { name: string; text: string } {
  let s = pgTextCache.get(sql);
  if (!s) {
    let i = 0;
    s = { name: `lockmgr_${pgTextCache.size}`, text: sql.replace(/\?/g, () => `$${++i}`) };
    pgTextCache.set(sql, s);
  }
  return s;
}

class PostgresConnection implements SqlConnection {
  readonly dialect = 'postgres' as const;
  constructor(
    private readonly client: PgClient,
    private readonly onRelease: (client: PgClient) => void,
  ) {}

  async query(sql: string, params: readonly unknown[] = []): Promise<Row[]> {
    const { name, text } = pgStatement(sql);
    const res = await this.client.query({ name, text, values: params });
    return res.rows;
  }

  async exec(sql: string): Promise<void> {
    await this.client.query(sql);
  }

  async begin(): Promise<number> {
    const results = (await this.client.query(
      'BEGIN; SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint AS now',
    )) as unknown as { rows: Row[] }[];
    return Number(results[1]!.rows[0]!.now);
  }

  release(): void {
    this.onRelease(this.client);
  }
}

/** The lock database: a Sequelize instance plus fast raw connections from it. */
export class Database {
  readonly dialect: Dialect;
  readonly sequelize: Sequelize;
  private sqlite?: SqliteConnection;
  private checkpointer?: Checkpointer;
  private closed = false;
  /** SQLite: the database file (or :memory:). */
  readonly storage: string = '';

  constructor(readonly options: DatabaseOptions) {
    this.dialect = dialectOf(options.url);
    if (this.dialect === 'postgres') {
      this.sequelize = new Sequelize(options.url, {
        dialect: 'postgres',
        logging: false,
        pool: { max: options.poolSize ?? 4, min: 0, acquire: 10_000, idle: 10_000 },
        dialectOptions: { connectionTimeoutMillis: 5000 },
      });
    } else {
      const storage = resolve(options.url.replace(/^sqlite:(\/\/)?/, ''));
      mkdirSync(dirname(storage), { recursive: true });
      this.storage = storage;
      // Sequelize (driver sqlite3) applies the migrations; lock operations use their own connection.
      this.sequelize = new Sequelize({ dialect: 'sqlite', storage, logging: false, pool: { max: 1, min: 0, idle: 1000 } });
    }
  }

  /** Where the locks live, safe to print. */
  describe(): string {
    if (this.dialect === 'postgres') return maskDatabaseUrl(this.options.url);
    return `sqlite:${this.storage}`;
  }

  /** A connection for one transaction. SQLite always hands out its one writer connection. */
  async connect(): Promise<SqlConnection> {
    if (this.closed) throw new StoreUnavailable('the database has been closed');
    const manager = this.sequelize.connectionManager as unknown as {
      getConnection(opts: object): Promise<unknown>;
      releaseConnection(conn: unknown): Promise<void>;
      pool?: { destroy(conn: unknown): void };
    };
    if (this.dialect === 'sqlite') {
      if (!this.sqlite) {
        try {
          // Short busy timeout: this call blocks the event loop while another process writes.
          const raw = new BetterSqlite3(this.storage, { timeout: 1000 });
          raw.pragma('journal_mode = WAL');
          raw.pragma(`synchronous = ${this.options.sqliteSynchronous ?? 'NORMAL'}`);
          this.sqlite = new SqliteConnection(raw);
          this.startCheckpointer(raw);
        } catch (err) {
          throw new StoreUnavailable(`cannot open SQLite database ${this.storage}: ${(err as Error).message}`, err);
        }
      }
      return this.sqlite;
    }
    let raw: PgClient;
    try {
      raw = (await manager.getConnection({ type: 'write' })) as PgClient;
    } catch (err) {
      throw new StoreUnavailable(`cannot connect to PostgreSQL: ${(err as Error).message}`, err);
    }
    return new PostgresConnection(raw, (client) => void Promise.resolve(manager.releaseConnection(client)).catch(() => undefined));
  }

  /** SQLite: WAL checkpoints in a worker thread rather than inside the daemon's commits. */
  private startCheckpointer(raw: BetterSqlite3.Database): void {
    const interval = this.options.checkpointIntervalMs ?? 100;
    if (interval <= 0) return;
    this.checkpointer = new Checkpointer(
      this.storage,
      interval,
      () => undefined, // busy or locked: the next tick tries again
      () => {
        // The worker is gone: the writer checkpoints for itself again, as SQLite does by default.
        if (!this.closed) raw.pragma('wal_autocheckpoint = 1000');
      },
    );
    raw.pragma('wal_autocheckpoint = 0');
    this.checkpointer.start();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.checkpointer?.stop();
    this.sqlite?.close();
    await this.sequelize.close();
  }
}
