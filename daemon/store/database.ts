/**
 * Opens the lock database through Sequelize and hands out raw connections for the hot path.
 *
 * Sequelize owns the connection settings, pooling and migrations; lock operations then run
 * prepared statements on the connection it gives us, because they execute thousands of times a
 * second and Sequelize's per-query machinery would cost more than the statement itself.
 */
import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { Sequelize } from 'sequelize';

export type Dialect = 'sqlite' | 'postgres';
export type Row = Record<string, unknown>;

/** One database connection: run a statement, get its rows. Placeholders are `?`. */
export interface SqlConnection {
  readonly dialect: Dialect;
  query(sql: string, params?: readonly unknown[]): Promise<Row[]>;
  /** Several statements without parameters, in one round trip where the driver allows. */
  exec(sql: string): Promise<void>;
  release(): void;
}

export interface DatabaseOptions {
  /** A SQLite file path, `sqlite::memory:`, or a `postgres://` URL. */
  url: string;
  /** Connections in the PostgreSQL pool. */
  poolSize?: number;
  /** SQLite `synchronous` pragma: FULL survives power loss, NORMAL only a process crash. */
  sqliteSynchronous?: 'FULL' | 'NORMAL';
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
  if (SQLITE_UNAVAILABLE.has(code) || NET_ERRORS.has(code)) return true;
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

interface Sqlite3Statement {
  all(params: unknown[], cb: (err: Error | null, rows: Row[]) => void): void;
  finalize(cb?: () => void): void;
}
interface Sqlite3Database {
  prepare(sql: string, cb: (err: Error | null) => void): Sqlite3Statement;
  exec(sql: string, cb: (err: Error | null) => void): void;
}
interface PgClient {
  query(config: { name?: string; text: string; values?: readonly unknown[] }): Promise<{ rows: Row[] }>;
  query(text: string): Promise<unknown>;
}

class SqliteConnection implements SqlConnection {
  readonly dialect = 'sqlite' as const;
  private readonly statements = new Map<string, Sqlite3Statement>();
  constructor(private readonly db: Sqlite3Database) {}

  private statement(sql: string): Promise<Sqlite3Statement> {
    const cached = this.statements.get(sql);
    if (cached) return Promise.resolve(cached);
    return new Promise((resolveStmt, reject) => {
      const stmt = this.db.prepare(sql, (err) => {
        if (err) return reject(err);
        this.statements.set(sql, stmt);
        resolveStmt(stmt);
      });
    });
  }

  async query(sql: string, params: readonly unknown[] = []): Promise<Row[]> {
    const stmt = this.statements.get(sql) ?? (await this.statement(sql));
    return new Promise((resolveRows, reject) => {
      stmt.all(params as unknown[], (err, rows) => (err ? reject(err) : resolveRows(rows)));
    });
  }

  exec(sql: string): Promise<void> {
    return new Promise((resolveExec, reject) => this.db.exec(sql, (err) => (err ? reject(err) : resolveExec())));
  }

  release(): void {
    // The SQLite connection is the database's single writer; it stays open until close().
  }

  finalizeAll(): void {
    for (const stmt of this.statements.values()) stmt.finalize();
    this.statements.clear();
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

  release(): void {
    this.onRelease(this.client);
  }
}

/** The lock database: a Sequelize instance plus fast raw connections from it. */
export class Database {
  readonly dialect: Dialect;
  readonly sequelize: Sequelize;
  private sqlite?: SqliteConnection;
  private closed = false;

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
      const storage = options.url === 'sqlite::memory:' ? ':memory:' : resolve(options.url.replace(/^sqlite:(\/\/)?/, ''));
      if (storage !== ':memory:') mkdirSync(dirname(storage), { recursive: true });
      this.sequelize = new Sequelize({ dialect: 'sqlite', storage, logging: false, pool: { max: 1, min: 0 } });
    }
  }

  /** Where the locks live, safe to print. */
  describe(): string {
    if (this.dialect === 'postgres') return maskDatabaseUrl(this.options.url);
    return `sqlite:${(this.sequelize as unknown as { options: { storage: string } }).options.storage}`;
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
        const raw = (await manager.getConnection({ type: 'write' })) as Sqlite3Database;
        const conn = new SqliteConnection(raw);
        await conn.exec(
          `PRAGMA journal_mode=WAL; PRAGMA synchronous=${this.options.sqliteSynchronous ?? 'FULL'}; PRAGMA busy_timeout=5000;`,
        );
        this.sqlite = conn;
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

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.sqlite?.finalizeAll();
    await this.sequelize.close();
  }
}
