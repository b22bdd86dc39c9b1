/**
 * The PostgreSQL backend: any number of daemons on one database, one authority.
 *
 * Transactions run on connections of a `pg` pool, several at once (their round trips overlap);
 * the database's clock decides expiry, sequences draw fencing tokens and event seqs, and every
 * write is one conditional statement, so daemons never race between a read and a write. Batches
 * may run their first statements in one round trip (`prefetch`). One daemon at a time relays the
 * shared outbox: the one holding a session advisory lock on a connection of its own. Sequelize
 * only applies the migrations.
 */
import { Client, Pool, type PoolClient, type PoolConfig } from 'pg';
import { Sequelize } from 'sequelize';
import { statementTracer, type StatementTracer } from '../../diagnostics';
import { maskUrlSecrets } from '../../../shared/nats-url';
import { applyMigrations } from '../migrate';
import { OUTBOX_SQL, toOutboxEvent } from '../sql-outbox';
import { firstLockRow, SqlTx, storeCountsSql, toStoreCounts, tracedConnection, type Row, type SqlConnection } from '../sql-tx';
import {
  CommitInDoubt,
  DuplicateRequest,
  rootCause,
  RowBusy,
  StoreUnavailable,
  toCommittedEvents,
  TransactionConflict,
  type CommittedEvent,
  type FirstStatement,
  type LockRow,
  type MigrateOptions,
  type OutboxEvent,
  type PendingOutcome,
  type RelayLease,
  type Renewal,
  type StaleCandidate,
  type Requester,
  type Store,
  type StoreCounts,
  type StoreTx,
  type TransactionOpening,
  type TransactionResult,
} from '../store';
import { POSTGRES_MIGRATIONS } from './migrations';
import { MIGRATION_LOCK_KEY, PLANNED_EACH_RUN, POSTGRES_LOCK_SQL, POSTGRES_SQL, RELAY_LOCK_KEY } from './sql';

export interface PostgresStoreOptions {
  /** `postgres://user:pass@host:port/db` */
  url: string;
  /** The daemon's instance id, written into each event. */
  daemonId: string;
  /** Connections in the pool; transactions at once are one fewer. */
  poolSize?: number;
  /**
   * ms a statement may wait for a row another session holds (PostgreSQL's lock_timeout); then
   * the operation is RowBusy and its batch goes on without it. Default 250.
   */
  lockTimeoutMs?: number;
  /** ms a statement may run, and the client waits for its answer, before the database counts as unavailable. Default 2000. */
  statementTimeoutMs?: number;
  /** ms a session may sit inside a transaction without a statement before the server ends it (a paused daemon). Default 2000. */
  idleInTransactionTimeoutMs?: number;
}

/** Delivered rows wait this long (ms) for a transaction to remove them with before one of their own does. */
const REMOVAL_DELAY_MS = 20;
/** How long opening a connection may take before the database counts as unavailable (outside requests). */
const CONNECT_TIMEOUT_MS = 5000;
/** The client stops waiting for an answer (or a new connection) this long after the server's own statement timeout. */
const ANSWER_MARGIN_MS = 250;

/** Counted on the database's clock, the one that decides expiry here. */
const COUNTS_SQL = storeCountsSql('lockmgr_now_ms()');

// EAI_AGAIN: a name not resolvable yet (a database container not started).
const NET_ERRORS = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH']);

/** True when an error means "the database is away", as opposed to a bug in a statement. */
function isUnavailable(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown } | null;
  if (!e || typeof e !== 'object') return false;
  const code = String(e.code ?? '');
  // Classes 08 (connection), 53 (resources), 57 (operator intervention: shutdown; a statement
  // timeout), and 25P03 (the server ended a session idle inside its transaction).
  if (NET_ERRORS.has(code) || /^(08|53|57)/.test(code) || code === '25P03') return true;
  // pg's own words for a connection lost, never opened in time, or silent past the answer timeout.
  return /Connection terminated|connection.*(closed|ended)|not queryable|Client has encountered a connection error|timeout exceeded when trying to connect|Query read timeout/i.test(
    String(e.message ?? ''),
  );
}

/** The error a caller of the store sees: unavailable, a conflict to retry, or as it was. */
function classify(err: unknown, what: string): unknown {
  if (err instanceof StoreUnavailable || err instanceof TransactionConflict) return err;
  const code = String((err as { code?: unknown })?.code ?? '');
  // Deadlock broken, or a serialization failure: the transaction may simply run again.
  if (code === '40P01' || code === '40001') return new TransactionConflict((err as Error).message, { cause: err });
  // Two daemons recorded the outcome of one request id: the batch runs again and answers it from the record.
  if (code === '23505' && (err as { table?: unknown }).table === 'lockmgr_requests') {
    const id = /\(id\)=\((.*)\)/.exec(String((err as { detail?: unknown }).detail ?? ''))?.[1];
    return new DuplicateRequest(id === undefined ? [] : [id]);
  }
  // lock_timeout: a row is held by another session (stuck, or paused mid-transaction).
  if (code === '55P03') return new RowBusy(`a row is held by another database session: ${(err as Error).message}`, { cause: err });
  if (isUnavailable(err)) return new StoreUnavailable(`${what}: ${(err as Error).message}`, { cause: err });
  return err;
}

/** Why pg cannot use `url` (it does not parse), or null. Parsed as pg does, without connecting. */
export function postgresUrlProblem(url: string): string | null {
  try {
    new Client({ connectionString: url });
    return null;
  } catch (err) {
    return `is not a URL that pg can read (${(err as Error).message}): write it as postgres://user:password@host:port/database, with special characters percent-encoded`;
  }
}

interface Queryable {
  query(config: { name?: string; text: string; values?: readonly unknown[] }): Promise<{ rows: Row[] }>;
  query(text: string): Promise<unknown>;
}

/** `?` placeholders -> `$1, $2, ...` (our SQL never has `?` inside string literals). */
const prepared = new Map<string, { name: string; text: string }>();
function preparedStatement(sql: string): { name: string; text: string } {
  let s = prepared.get(sql);
  if (!s) {
    let i = 0;
    s = { name: `lockmgr_${prepared.size}`, text: sql.replace(/\?/g, () => `$${++i}`) };
    prepared.set(sql, s);
  }
  return s;
}

/** A pg client running named prepared statements (unnamed, planned at each run: PLANNED_EACH_RUN). */
class PostgresConnection implements SqlConnection {
  constructor(private readonly client: Queryable) {}

  async query(sql: string, params: readonly unknown[] = []): Promise<Row[]> {
    const statement = preparedStatement(sql);
    const config = PLANNED_EACH_RUN.has(sql) ? { text: statement.text, values: params } : { ...statement, values: params };
    return (await this.client.query(config)).rows;
  }

  async exec(sql: string): Promise<void> {
    await this.client.query(sql);
  }

  /** BEGIN, and the database's clock in the same round trip. */
  async begin(): Promise<number> {
    const results = (await this.client.query(POSTGRES_SQL.begin)) as { rows: Row[] }[];
    return Number(results[1]?.rows[0]?.now);
  }
}

/** The answers to a transaction's opening statements, sent with its BEGIN. */
interface Opened {
  opening: TransactionOpening;
  recalled?: Row[];
  firstPass?: Row[];
}

class PostgresTx extends SqlTx {
  /** Rows of first statements the batch already ran, by name (see prefetch). */
  private prefetched?: Map<string, { kind: FirstStatement['kind']; rows: Row[] }>;

  constructor(
    conn: SqlConnection,
    now: number,
    private opened?: Opened,
  ) {
    super(conn, now, POSTGRES_LOCK_SQL);
  }

  override async recall(ids: readonly string[]): Promise<Map<string, string>> {
    const sent = this.opened?.opening.recall === ids ? this.opened.recalled : undefined;
    const rows = sent ?? (await this.conn.query(POSTGRES_SQL.recall, [ids]));
    return new Map(rows.map((r) => [String(r.id), String(r.outcome)]));
  }

  protected renewParams(renewal: Renewal): unknown[] {
    if (renewal.kind === 'forever') return [];
    return renewal.kind === 'add' ? [renewal.ms] : [renewal.ms, renewal.ms];
  }

  async insertLock(name: string, expiresMs: number | null, who: Requester): Promise<LockRow | null> {
    const done = this.takePrefetched('insert', name);
    if (done) return firstLockRow(done);
    // The fencing token is drawn only after the insert succeeded. nextval() in the INSERT itself is
    // evaluated before the insert waits on a conflicting row of another transaction, and that wait
    // can outlast a whole later grant and release of the name: the late grant would then carry a
    // smaller token than the one before it.
    return firstLockRow(await this.conn.query(POSTGRES_SQL.insertLock, [name, who.lockedBy, who.process, expiresMs]));
  }

  override async deleteLock(name: string, token: number | null): Promise<LockRow | null> {
    const done = this.takePrefetched('unlock', name);
    return done ? firstLockRow(done) : super.deleteLock(name, token);
  }

  /** Every item's statement in one call, in order; false (nothing done) if an insert met a row. */
  async prefetch(items: readonly FirstStatement[]): Promise<boolean> {
    const sent = this.opened?.opening.first === items ? this.opened.firstPass : undefined;
    const rows = sent ?? (await this.conn.query(POSTGRES_SQL.firstPass, firstPassParams(items)));
    const byItem: Row[][] = items.map(() => []);
    for (const r of rows) {
      const op = Number(r.op);
      if (op === 0) return false;
      byItem[op - 1]?.push(r);
    }
    this.prefetched = new Map(items.map((item, i) => [item.name, { kind: item.kind, rows: byItem[i]! }]));
    return true;
  }

  private takePrefetched(kind: FirstStatement['kind'], name: string): Row[] | undefined {
    const done = this.prefetched?.get(name);
    if (!done || done.kind !== kind) return undefined;
    this.prefetched!.delete(name);
    return done.rows;
  }
}

/**
 * The answers of statements sent one behind the other (pipelined) on one connection. Every one is
 * awaited, so none fails unobserved; the first failure in sending order is the cause (those behind
 * it fail because its transaction is aborted).
 */
async function allSent<T extends readonly unknown[]>(sent: T): Promise<{ -readonly [K in keyof T]: Awaited<T[K]> }> {
  const settled = await Promise.allSettled(sent);
  const failed = settled.find((r) => r.status === 'rejected');
  if (failed) throw (failed as PromiseRejectedResult).reason;
  return settled.map((r) => (r as PromiseFulfilledResult<unknown>).value) as { -readonly [K in keyof T]: Awaited<T[K]> };
}

/** The outbox insert's parameters: one array per column, an event per index. */
function outboxColumns(events: readonly CommittedEvent[]): unknown[] {
  return [
    events.map((e) => e.id),
    events.map((e) => e.type),
    events.map((e) => e.name),
    events.map((e) => e.lockJson),
    events.map((e) => e.causeJson),
    events.map((e) => e.daemon),
    events.map((e) => e.at),
  ];
}

/**
 * Give each event its seq and its lock's `prev` from the outbox insert's rows. An earlier event of
 * the same lock in this very transaction is its `prev` (the insert does not see its own rows).
 */
function numberEvents(events: CommittedEvent[], rows: readonly Row[]): void {
  const byId = new Map(rows.map((r) => [String(r.event_id), r]));
  const lastOfLock = new Map<string, number>();
  for (const e of events) {
    const row = byId.get(e.id);
    e.seq = Number(row?.seq ?? 0);
    e.prev = lastOfLock.get(e.name) ?? (row?.prev === null || row?.prev === undefined ? null : Number(row.prev));
    lastOfLock.set(e.name, e.seq);
  }
}

/** The first pass's parameters: one array per column, an item per index. */
function firstPassParams(items: readonly FirstStatement[]): unknown[] {
  const n = items.length;
  const kinds = new Array<string>(n);
  const names = new Array<string>(n);
  const lockedBy = new Array<string | null>(n).fill(null);
  const processes = new Array<number | null>(n).fill(null);
  const expires = new Array<number | null>(n).fill(null);
  const token = new Array<number | null>(n).fill(null);
  items.forEach((item, i) => {
    kinds[i] = item.kind;
    names[i] = item.name;
    if (item.kind === 'insert') {
      lockedBy[i] = item.who.lockedBy;
      processes[i] = item.who.process;
      expires[i] = item.expiresMs;
    } else {
      token[i] = item.token;
    }
  });
  return [kinds, names, lockedBy, processes, expires, token];
}

export class PostgresStore implements Store {
  readonly kind = 'postgres';
  readonly concurrency: number;
  readonly soleWriter = false;
  private readonly pool: Pool;
  private readonly lease: PostgresRelayLease;
  private closed = false;
  /** Seqs of this daemon's delivered events, removed with the next transaction (or on their own soon). */
  private removal: number[] = [];
  private removalTimer?: NodeJS.Timeout;

  constructor(private readonly options: PostgresStoreOptions) {
    const size = options.poolSize ?? 4;
    // One connection of the pool stays free for the outbox counts of a draining daemon.
    this.concurrency = Math.max(1, size - 1);
    const statementTimeout = options.statementTimeoutMs ?? 2000;
    this.pool = new Pool({
      connectionString: options.url,
      max: size,
      idleTimeoutMillis: 10_000,
      // A request never waits longer for a connection than for a statement.
      connectionTimeoutMillis: statementTimeout + ANSWER_MARGIN_MS,
      // No session may freeze the service: a row held by another session, a statement that runs
      // on, a transaction left open by a paused daemon, a server that stops answering.
      lock_timeout: options.lockTimeoutMs ?? 250,
      statement_timeout: statementTimeout,
      idle_in_transaction_session_timeout: options.idleInTransactionTimeoutMs ?? 2000,
      query_timeout: statementTimeout + ANSWER_MARGIN_MS,
      keepAlive: true,
      // A statement is sent without waiting for the one before it to be answered: a transaction's
      // statements go out in two round trips (see transaction()).
      pipeline: true,
    } as PoolConfig);
    // A pooled connection that breaks while idle: dropped from the pool, the next use opens another.
    this.pool.on('error', () => undefined);
    // One that breaks while in use (the server ended its session): the statement in flight fails
    // with the error; without a listener of its own, the client's 'error' event would end the process.
    this.pool.on('connect', (client) => client.on('error', () => undefined));
    this.lease = new PostgresRelayLease(options.url);
  }

  describe(): string {
    return maskUrlSecrets(this.options.url);
  }

  async claim(): Promise<void> {
    // Any number of daemons serve one database together.
  }

  reachableLater(err: unknown): boolean {
    // Only the database being away: a refused login (class 28) or a missing database (3D000)
    // is an error in the URL or on the server that no wait repairs.
    return isUnavailable(rootCause(err));
  }

  async migrate(options: MigrateOptions = {}): Promise<string[]> {
    const sequelize = new Sequelize(this.options.url, {
      dialect: 'postgres',
      logging: false,
      pool: { max: 2, min: 0, acquire: 10_000 },
      dialectOptions: { connectionTimeoutMillis: CONNECT_TIMEOUT_MS },
    });
    try {
      // Daemons starting together must not apply the same migration twice.
      return await sequelize.transaction(async (transaction) => {
        await sequelize.query(POSTGRES_SQL.migrationLock, { replacements: [MIGRATION_LOCK_KEY], transaction });
        return applyMigrations(sequelize, POSTGRES_MIGRATIONS, options);
      });
    } catch (err) {
      // Sequelize wraps the driver's error: the database being away is told apart by the original.
      const failure = classify((err as { parent?: unknown }).parent ?? err, 'cannot migrate the database');
      throw failure instanceof StoreUnavailable ? failure : err;
    } finally {
      await sequelize.close();
    }
  }

  /**
   * Two round trips when the work's own statements came with the opening: BEGIN with the clock, the
   * outcome look-up and the batch's first pass, sent at once (the client pipelines them); then the
   * outcomes, the outbox rows, the removal of delivered rows and COMMIT, sent at once.
   */
  async transaction<T>(work: (tx: StoreTx) => Promise<T>, trace?: object, opening?: TransactionOpening): Promise<TransactionResult<T>> {
    const client = await this.connect();
    const pg = new PostgresConnection(client);
    const conn = tracedConnection(pg, trace);
    const tracer = statementTracer(trace);
    let open = true; // roll back on failure even if only part of BEGIN went through
    let committing = false;
    let broken: unknown;
    try {
      const opened = await this.begin(pg, conn, tracer, opening);
      const tx = new PostgresTx(conn, opened.now, opened);
      const value = await work(tx);
      const events = toCommittedEvents(tx.events, this.options.daemonId, opened.now);
      const removing = this.removal.splice(0);
      committing = true;
      try {
        await this.end(conn, tx.outcomes, events, removing);
      } catch (err) {
        this.removal.push(...removing);
        throw err;
      }
      open = false;
      return { value, events };
    } catch (err) {
      let failure = classify(err, 'the database is unavailable');
      // COMMIT was sent and no answer came: the server may have committed. Only a re-send of the
      // request (its id recorded, or not) can tell.
      if (committing && failure instanceof StoreUnavailable) {
        failure = new CommitInDoubt(`the database stopped answering while committing: ${(err as Error).message}`, { cause: err });
      } else if (open && !(failure instanceof StoreUnavailable)) {
        await conn.exec(POSTGRES_SQL.rollback).catch((e: unknown) => (broken = e));
      }
      if (failure instanceof StoreUnavailable) broken ??= failure;
      throw failure;
    } finally {
      // A connection that failed is not given back for reuse.
      client.release(broken instanceof Error ? broken : undefined);
    }
  }

  /** BEGIN and the clock, with the opening statements behind them in the same round trip. */
  private async begin(
    pg: PostgresConnection,
    conn: SqlConnection,
    tracer: StatementTracer | undefined,
    opening?: TransactionOpening,
  ): Promise<Opened & { now: number }> {
    const recall = opening && opening.recall.length > 0 ? opening.recall : null;
    const first = opening?.first && opening.first.length > 0 ? opening.first : null;
    const [now, recalled, firstPass] = await allSent([
      tracer ? tracer(POSTGRES_SQL.begin, () => pg.begin()) : pg.begin(),
      recall ? conn.query(POSTGRES_SQL.recall, [recall]) : undefined,
      first ? conn.query(POSTGRES_SQL.firstPass, firstPassParams(first)) : undefined,
    ]);
    return { now, opening: opening ?? { recall: [], first: null }, recalled, firstPass };
  }

  /** Outcomes, outbox rows (numbered; each with its lock's `prev`), removals and COMMIT, sent together. */
  private async end(conn: SqlConnection, outcomes: readonly PendingOutcome[], events: CommittedEvent[], removing: number[]): Promise<void> {
    const [, outbox] = await allSent([
      outcomes.length > 0
        ? conn.query(POSTGRES_SQL.insertOutcomes, [
            outcomes.map((o) => o.id),
            outcomes.map((o) => o.outcome),
            outcomes.map((o) => o.expiresAt),
          ])
        : undefined,
      events.length > 0 ? conn.query(POSTGRES_SQL.insertOutbox, outboxColumns(events)) : undefined,
      removing.length > 0 ? conn.query(POSTGRES_SQL.removeOutboxRows, [removing]) : undefined,
      conn.exec(POSTGRES_SQL.commit),
    ]);
    if (outbox) numberEvents(events, outbox);
  }

  async identity(): Promise<string> {
    const rows = await this.statement('cannot read the store identity', POSTGRES_SQL.identity);
    return String(rows[0]?.value ?? '');
  }

  async countOutbox(upTo = Number.MAX_SAFE_INTEGER): Promise<number> {
    const rows = await this.statement('cannot read the outbox', OUTBOX_SQL.count, [upTo]);
    return Number(rows[0]?.n ?? 0);
  }

  async counts(): Promise<StoreCounts> {
    return toStoreCounts((await this.statement('cannot count the locks', COUNTS_SQL))[0]);
  }

  relayLease(): RelayLease {
    return this.lease;
  }

  delivered(seqs: readonly number[]): void {
    for (const seq of seqs) this.removal.push(seq);
    // With the next transaction; on its own if none comes soon.
    this.removalTimer ??= setTimeout(() => {
      this.removalTimer = undefined;
      void this.removeNow();
    }, REMOVAL_DELAY_MS);
  }

  async outboxHas(seqs: readonly number[]): Promise<Set<number>> {
    if (seqs.length === 0) return new Set();
    const rows = await this.statement('cannot read the outbox', POSTGRES_SQL.outboxHas, [seqs]);
    return new Set(rows.map((r) => Number(r.seq)));
  }

  /** Remove the delivered rows no transaction took along (one statement of its own). */
  private async removeNow(): Promise<void> {
    if (this.closed || this.removal.length === 0) return;
    const removing = this.removal.splice(0);
    let client: PoolClient | undefined;
    try {
      client = await this.connect();
      await new PostgresConnection(client).query(POSTGRES_SQL.removeOutboxRows, [removing]);
      client.release();
    } catch (err) {
      client?.release(err instanceof Error ? err : undefined);
      // Tried again with the next transaction; until then a row left is delivered again (and dropped by the stream).
      this.removal.push(...removing);
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    clearTimeout(this.removalTimer);
    this.removalTimer = undefined;
    await this.removeNow();
    this.closed = true;
    await this.lease.release();
    await this.pool.end().catch(() => undefined);
  }

  /** One statement outside a transaction, on a pooled connection; `what` names a failure. */
  private async statement(what: string, sql: string, params?: readonly unknown[]): Promise<Row[]> {
    const client = await this.connect();
    try {
      return await new PostgresConnection(client).query(sql, params);
    } catch (err) {
      throw classify(err, what);
    } finally {
      client.release();
    }
  }

  private async connect(): Promise<PoolClient> {
    if (this.closed) throw new StoreUnavailable('the database has been closed');
    try {
      return await this.pool.connect();
    } catch (err) {
      throw new StoreUnavailable(`cannot connect to PostgreSQL: ${(err as Error).message}`, { cause: err });
    }
  }
}

/**
 * The relay lease: a session advisory lock held on a connection of its own (not one of the
 * pool's), which also reads and removes the outbox rows while it is held. If that connection
 * breaks, the lock is gone with it and another daemon may take over.
 */
class PostgresRelayLease implements RelayLease {
  private client?: Client;
  private conn?: PostgresConnection;
  private holding = false;

  constructor(private readonly url: string) {}

  get held(): boolean {
    return this.holding;
  }

  async acquire(): Promise<boolean> {
    if (this.holding) return true;
    try {
      if (!this.conn) await this.open();
      const rows = await this.conn!.query(POSTGRES_SQL.tryLease, [RELAY_LOCK_KEY]);
      this.holding = rows[0]?.got === true;
      return this.holding;
    } catch (err) {
      throw this.failed(err, 'cannot take the relay lease');
    }
  }

  async read(after: number, limit: number, before?: number): Promise<OutboxEvent[]> {
    const rows =
      before === undefined
        ? await this.run('cannot read the outbox', (c) => c.query(OUTBOX_SQL.read, [after, limit]))
        : await this.run('cannot read the outbox', (c) => c.query(OUTBOX_SQL.readBefore, [after, before, limit]));
    return rows.map(toOutboxEvent);
  }

  async remove(seqs: readonly number[]): Promise<void> {
    await this.run('cannot remove from the outbox', (c) => c.query(POSTGRES_SQL.removeOutboxRows, [seqs]));
  }

  async readStale(limit: number, staleMs: number): Promise<StaleCandidate[]> {
    const rows = await this.run('cannot read the outbox', (c) => c.query(POSTGRES_SQL.readStale, [staleMs, limit]));
    return rows.map((r) => ({ ...toOutboxEvent(r), stale: r.stale === true }));
  }

  async removeThrough(seq: number): Promise<void> {
    await this.run('cannot remove from the outbox', (c) => c.query(OUTBOX_SQL.removeThrough, [seq]));
  }

  async release(): Promise<void> {
    const client = this.client;
    this.drop();
    // Ending the session releases the advisory lock; a standing-by daemon takes over.
    await client?.end().catch(() => undefined);
  }

  private async open(): Promise<void> {
    const client = new Client({ connectionString: this.url, connectionTimeoutMillis: CONNECT_TIMEOUT_MS, keepAlive: true });
    const lost = () => {
      if (this.client === client) this.drop();
    };
    client.on('error', lost);
    client.on('end', lost);
    this.client = client;
    this.conn = new PostgresConnection(client);
    await client.connect();
  }

  private async run<T>(what: string, fn: (conn: PostgresConnection) => Promise<T>): Promise<T> {
    if (!this.holding || !this.conn) throw new StoreUnavailable('lost the relay connection to PostgreSQL');
    try {
      return await fn(this.conn);
    } catch (err) {
      throw this.failed(err, what);
    }
  }

  /** A failure on the lease's connection: if the database is away, the lease is gone. */
  private failed(err: unknown, what: string): unknown {
    const failure = classify(err, what);
    if (failure instanceof StoreUnavailable) void this.release();
    return failure;
  }

  private drop(): void {
    this.client = undefined;
    this.conn = undefined;
    this.holding = false;
  }
}
