/**
 * The store contract: everything the request path, the sweeper and the event relay need from a
 * database, with one implementation per backend (store/sqlite, store/postgres) and an in-memory
 * fake for unit tests. Nothing outside an implementation knows which database it talks to; where
 * the backends differ in what they allow (one writer or many, a batch first pass or none), the
 * contract says so as a capability.
 *
 * A store runs transactions: `transaction(work)` opens one, hands `work` a `StoreTx`, records the
 * events `work` emitted in the outbox of the same transaction, commits, and returns the result
 * with the committed events (numbered). What a transaction replies is what was committed.
 */
import { randomUUID } from 'node:crypto';
import type { EventCause, EventType } from '../../shared/events';
import type { LockRecord } from '../../shared/protocol';

/** A lock as the store holds it: times in milliseconds since the epoch. */
export interface LockRow {
  name: string;
  locked_by: string | null;
  lock_process: number | null;
  /** null: never expires. */
  locked_until: number | null;
  created_at: number;
  updated_at: number;
  /** Fencing token: drawn when the row is inserted; grows with every grant and never repeats. */
  token: number;
  /** The session the lock is bound to: its expiry follows the session's keepalives. */
  session_id: string | null;
}

/** A client's session: it lives `ttl_ms` past its last keepalive. Times in ms since the epoch. */
export interface SessionRow {
  id: string;
  ttl_ms: number;
  expires_at: number;
  locked_by: string | null;
  created_at: number;
}

/** Who asked for a change: written into new locks and into each event's cause. */
export interface Requester {
  lockedBy: string;
  process: number | null;
  client: string | null;
}

/** How a renewal moves `locked_until` (never shortening it). */
export type Renewal =
  | { kind: 'forever' }
  /** Add `ms` to the current expiry (a lock that never expires stays so). */
  | { kind: 'add'; ms: number }
  /** Set the expiry to `ms` from the moment of the renewal unless it is already later (or never). */
  | { kind: 'extend'; ms: number };

/**
 * The first statement of an operation that a batch may run for all its operations at once
 * (`StoreTx.prefetch`): the lock insert of a single-name `set` or `get`, or an `unlock`.
 */
export type FirstStatement =
  { kind: 'insert'; name: string; expiresMs: number | null; who: Requester } | { kind: 'unlock'; name: string; token: number | null };

/** The lock statements of one transaction. Each write is one conditional statement. */
export interface LockTx {
  /**
   * The clock reading that decides expiry in this transaction (ms since the epoch): read when it
   * began, so a lock live then counts as live throughout. New expiries count from the moment of
   * the statement that sets them instead (a grant's lifetime starts when it is decided).
   */
  readonly now: number;
  /**
   * Insert `name` unless a row has it, expiring `expiresMs` from now (null: never); returns the
   * new row with its fencing token (`created_at` is the moment of the grant), or null.
   */
  insertLock(name: string, expiresMs: number | null, who: Requester): Promise<LockRow | null>;
  /** Delete `name` if its lock has expired by `now`; returns the deleted row. */
  deleteIfExpired(name: string): Promise<LockRow | null>;
  /** The live (unexpired) lock of `name`. */
  selectLive(name: string): Promise<LockRow | null>;
  /** Renew the live lock of `name` (only the grant `token`, when given); returns the new row. */
  renew(name: string, renewal: Renewal, token: number | null): Promise<LockRow | null>;
  /** Delete `name`, expired or not (only the grant `token`, when given); returns the deleted row. */
  deleteLock(name: string, token: number | null): Promise<LockRow | null>;
  /** Delete up to `limit` expired locks: the soonest expired ones (the rows in any order). */
  deleteExpired(limit: number): Promise<LockRow[]>;
  /** Delete every lock. */
  deleteAll(): Promise<LockRow[]>;
  /** Live locks in name order: names after `after`, starting with `prefix`, at most `limit`. */
  listLive(query: { prefix: string | null; after: string | null; limit: number }): Promise<LockRow[]>;
  /** Record a change in this transaction's outbox. */
  emit(type: EventType, lock: LockRecord, cause: EventCause): void;
  /**
   * The outcomes (JSON) recorded under these request ids and not yet expired. Each found is
   * marked as answered to a repeat (kept if this transaction commits), so it can no longer be forgotten.
   */
  recall(ids: readonly string[]): Promise<Map<string, string>>;
  /**
   * Record the outcome of request `id` with this transaction, kept until `expiresAt`. At commit,
   * an id recorded meanwhile by another transaction fails this one with DuplicateRequest.
   */
  remember(id: string, outcome: string, expiresAt: number): void;
  /**
   * Drop the outcome recorded under `id`, to undo its change. False when a repeat of the request
   * has already been answered with it (or there is none): then the change must stay.
   */
  forget(id: string): Promise<boolean>;
  /** Delete up to `limit` outcomes kept past their time; returns how many. */
  deleteExpiredOutcomes(limit: number): Promise<number>;
  /** Open session `id`, living `ttlMs` from now. */
  openSession(id: string, ttlMs: number, who: Requester): Promise<SessionRow>;
  /**
   * The session `id` if it has not lapsed by `now`. Until this transaction ends, no keepalive of
   * another transaction moves its expiry (a lock bound to it now gets the expiry it will keep).
   */
  liveSession(id: string): Promise<SessionRow | null>;
  /**
   * Keep session `id` alive for its ttl from now, and move its locks' expiry to `lockUntil(expiry)`
   * (never shortening one). Null, and nothing changed, if the session has lapsed.
   */
  keepSession(id: string, lockUntil: (sessionExpiresAt: number) => number): Promise<{ session: SessionRow; locks: LockRow[] } | null>;
  /** Bind the grant `token` of `name` to session `sessionId`, expiring at `until`; returns the row. */
  bindLock(name: string, token: number, sessionId: string, until: number): Promise<LockRow | null>;
  /** End session `id` if it has not lapsed: delete it and every lock bound to it (returned). Null if it had lapsed. */
  closeSession(id: string): Promise<LockRow[] | null>;
  /** Insert `row` as it is (a lock deleted earlier in this transaction, put back changed). */
  restoreLock(row: LockRow): Promise<LockRow>;
  /** Delete up to `limit` sessions that lapsed by now; returns how many. */
  deleteExpiredSessions(limit: number): Promise<number>;
  /** Run `fn` so that, if it throws, none of its writes or events are kept (the rest are). */
  atomically<T>(fn: () => Promise<T>): Promise<T>;
}

export interface StoreTx extends LockTx {
  /**
   * Optional: run the first statements of a whole batch in one round trip, in order (each on a
   * name of its own). Afterwards the matching `insertLock`/`deleteLock` call of each name returns
   * the prefetched row instead of running the statement again. Resolves false, with nothing done,
   * when the batch must run statement by statement (an insert met an existing row).
   */
  prefetch?(items: readonly FirstStatement[]): Promise<boolean>;
}

/**
 * What a transaction's work will do first (Store.transaction): look up these request ids
 * (`recall`), then run these first statements (`prefetch`, null: none). A store may send them with
 * its BEGIN, in one round trip; `recall` and `prefetch` called with these very arrays then answer
 * from what came back. Work that finds a recorded outcome must not use the prefetched rows: it
 * throws StaleOpening, and the transaction runs again without an opening first pass.
 */
export interface TransactionOpening {
  recall: readonly string[];
  first: readonly FirstStatement[] | null;
}

/** The opening first pass ran for an operation whose outcome was already recorded: run again without it. */
export class StaleOpening extends Error {
  constructor() {
    super('a request of the batch was answered before: its first statement must not run');
    this.name = 'StaleOpening';
  }
}

/** An outcome to record with a transaction (`LockTx.remember`). */
export interface PendingOutcome {
  id: string;
  outcome: string;
  expiresAt: number;
}

/** An event as the outbox holds it: lock and cause already serialised. */
export interface OutboxEvent {
  /** Orders the events of one database; grows, never repeats. */
  seq: number;
  id: string;
  type: EventType;
  name: string;
  lockJson: string;
  causeJson: string;
  daemon: string;
  at: number;
}

/** An event just committed by this daemon. */
export interface CommittedEvent extends OutboxEvent {
  lock: LockRecord;
  cause: EventCause;
  /**
   * Where several daemons write (PostgreSQL): the seq of the newest earlier event of the same lock
   * still in the outbox when this one was written, or null if none was. This event may be published
   * once that one is in the stream. Undefined where one writer publishes everything in seq order.
   */
  prev?: number | null;
}

/** A change a transaction recorded (`LockTx.emit`), for the store to write into its outbox. */
export interface PendingEvent {
  type: EventType;
  lock: LockRecord;
  cause: EventCause;
}

/**
 * A transaction's events as it commits them: ids drawn, JSON built; `seq` is the store's to fill
 * in. A grant or renewal happened at the lock's own `updated_at` (the moment of its statement);
 * any other change at the transaction's clock, `now`.
 */
export function toCommittedEvents(pending: readonly PendingEvent[], daemon: string, now: number): CommittedEvent[] {
  return pending.map((e) => ({
    seq: 0,
    id: randomUUID(),
    type: e.type,
    name: e.lock.name,
    lock: e.lock,
    cause: e.cause,
    lockJson: JSON.stringify(e.lock),
    causeJson: JSON.stringify(e.cause),
    daemon,
    at: e.type === 'created' || e.type === 'renewed' ? Date.parse(e.lock.updated_at) : now,
  }));
}

export interface TransactionResult<T> {
  value: T;
  /** The events `work` emitted, as committed, in seq order. */
  events: CommittedEvent[];
}

/**
 * The right to relay the database's outbox to NATS: one daemon at a time reads and removes its
 * rows. Where this daemon is the only writer, it always holds it.
 */
export interface RelayLease {
  /** True if this daemon holds the lease, trying to take it if not. */
  acquire(): Promise<boolean>;
  readonly held: boolean;
  /** Up to `limit` undelivered events with seq > `after` (and < `before`), oldest first. */
  read(after: number, limit: number, before?: number): Promise<OutboxEvent[]>;
  /** Remove delivered events. */
  remove(seqs: readonly number[]): Promise<void>;
  /**
   * Remove every event with seq <= `seq` (delivered in order). The store may do it along with
   * its next transaction, or in one of its own soon after.
   */
  removeThrough(seq: number): Promise<void>;
  /** Give the lease up (another daemon may take it). */
  release(): Promise<void>;
  /**
   * Where several daemons write: the `limit` oldest rows in seq order, each `stale` when it has
   * waited longer than `staleMs` on the store's clock (its writer has not delivered it).
   */
  readStale?(limit: number, staleMs: number): Promise<StaleCandidate[]>;
}

/** An outbox row as the relaying daemon sees it when looking for events their writer left behind. */
export interface StaleCandidate extends OutboxEvent {
  stale: boolean;
}

/** What the metrics report of a store, counted at one moment. */
export interface StoreCounts {
  /** Live (unexpired) locks. */
  locks: number;
  /** Sessions that have not lapsed. */
  sessions: number;
  /** Events waiting in the outbox. */
  outbox: number;
  /** `at` of the oldest event waiting in the outbox (ms since the epoch); null when none waits. */
  oldestEventAt: number | null;
  /** The store's clock when it counted (ms since the epoch): what `oldestEventAt` compares with. */
  now: number;
}

export interface MigrateOptions {
  onApplied?: (name: string) => void;
  /** Stop after this migration (default: apply all). */
  upTo?: string;
}

export interface Store {
  /** `sqlite`, `postgres`, `memory`: for logs and the service's metadata. */
  readonly kind: string;
  /** Transactions that may run at once. */
  readonly concurrency: number;
  /**
   * True when this daemon is the database's only writer: every event in the outbox was
   * committed by it, numbered in commit order, so it may publish its commits from memory.
   */
  readonly soleWriter: boolean;
  /** Where the locks live, safe to print (no password). */
  describe(): string;
  /**
   * Take what this daemon needs to serve from the store, for its lifetime: on SQLite an exclusive
   * lock beside the file, so that no second daemon serves it. Throws StoreInUse if another has it.
   */
  claim(): Promise<void>;
  /** Apply pending schema migrations; returns the names applied. Safe to run from several daemons. */
  migrate(options?: MigrateOptions): Promise<string[]>;
  /**
   * True when a failure of `migrate()` or `identity()` at start means the database cannot be
   * reached yet (a server not up, starting, or full), so that the daemon waits for it; false for
   * what waiting cannot cure (authentication, a missing database). Absent: never worth waiting.
   */
  reachableLater?(err: unknown): boolean;
  /**
   * Run `work` in one transaction and commit it with the events it emitted. `trace`, when given,
   * names the transaction in the statement diagnostics (see diagnostics.ts). `opening`: the
   * statements `work` will start with, which a store may send together with its BEGIN.
   */
  transaction<T>(work: (tx: StoreTx) => Promise<T>, trace?: object, opening?: TransactionOpening): Promise<TransactionResult<T>>;
  /** Events waiting in the outbox with seq <= `upTo`. */
  countOutbox(upTo?: number): Promise<number>;
  /** Locks, sessions and the outbox, counted in one query: for a metrics scrape, not for requests. */
  counts(): Promise<StoreCounts>;
  /** The store's identity: a random id written when its schema was first applied (after migrate). */
  identity(): Promise<string>;
  /** The relay lease of this store (one per store). */
  relayLease(): RelayLease;
  /**
   * Where several daemons write (soleWriter false): these events of this daemon are in the stream;
   * their rows leave the outbox with the next transaction, or in one of their own soon after.
   */
  delivered?(seqs: readonly number[]): void;
  /** Where several daemons write: which of these seqs are still in the outbox (not yet delivered). */
  outboxHas?(seqs: readonly number[]): Promise<Set<number>>;
  close(): Promise<void>;
}

/** The driver's own error under the wrappers of the store (`cause`) and of Sequelize (`parent`). */
export function rootCause(err: unknown): unknown {
  let e = err;
  for (let depth = 0; depth < 10; depth++) {
    const next = (e as { cause?: unknown; parent?: unknown } | null)?.cause ?? (e as { parent?: unknown } | null)?.parent;
    if (!next || typeof next !== 'object') break;
    e = next;
  }
  return e;
}

/** The database is unreachable or refused the work: the request may be retried later. */
export class StoreUnavailable extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StoreUnavailable';
  }
}

/**
 * The transaction met a concurrent change (a deadlock, a serialization failure, a row changed by
 * another daemon between two statements) and was rolled back: running it again is safe.
 */
export class TransactionConflict extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'TransactionConflict';
  }
}

/** Another daemon serves this store, which allows one (a SQLite file). */
export class StoreInUse extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StoreInUse';
  }
}

/**
 * The database lost the connection while committing: the transaction may or may not have been
 * committed. Its outcome is learnt by sending the request again with the same request id.
 */
export class CommitInDoubt extends StoreUnavailable {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'CommitInDoubt';
  }
}

/** A request id was recorded by another transaction meanwhile: run again, answering it from the record. */
export class DuplicateRequest extends TransactionConflict {
  constructor(readonly ids: readonly string[]) {
    super(`request ${ids.join(', ')} was recorded meanwhile`);
    this.name = 'DuplicateRequest';
  }
}

/**
 * A row the statement needs is locked by another session for longer than the lock timeout (a
 * transaction stuck or paused mid-way): the transaction was rolled back.
 */
export class RowBusy extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'RowBusy';
  }
}

/** Errors that an operation throws on purpose (Locked, NotFound...): results, not failures. */
export interface DomainError {
  readonly domain: true;
}
export function isDomainError(err: unknown): err is DomainError {
  return typeof err === 'object' && err !== null && (err as { domain?: unknown }).domain === true;
}
