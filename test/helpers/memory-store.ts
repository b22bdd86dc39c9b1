/**
 * An in-memory Store with the contract's semantics (store/store.ts), for unit tests of the parts
 * above the store (batcher, relay) and as a third subject of the store conformance suite.
 *
 * Locks live in a Map; fencing tokens and outbox seqs come from counters that only grow (like
 * PostgreSQL's sequences, a rolled-back draw leaves a gap, never a repeat). A transaction works
 * on a copy of the map that replaces the committed one only at commit, so a throwing work leaves
 * nothing behind. Transactions run one at a time (`concurrency` 1).
 */
import { systemClock, type Clock } from '../../daemon/clock';
import {
  DuplicateRequest,
  StoreUnavailable,
  toCommittedEvents,
  type FirstStatement,
  type LockRow,
  type OutboxEvent,
  type PendingEvent,
  type PendingOutcome,
  type RelayLease,
  type StaleCandidate,
  type Renewal,
  type Requester,
  type SessionRow,
  type Store,
  type StoreCounts,
  type StoreTx,
  type TransactionResult,
} from '../../daemon/store/store';
import type { EventCause, EventType } from '../../shared/events';
import type { LockRecord } from '../../shared/protocol';

export interface MemoryStoreOptions {
  clock?: Clock;
  daemonId?: string;
  /** Default true: the lease is then always held, as on SQLite. */
  soleWriter?: boolean;
  /** Not sole writer: whether the lease starts held (default false) and can be taken (default true). */
  leaseHeld?: boolean;
  leaseAvailable?: boolean;
  /** Give transactions a `prefetch` (the contract's optional batch first pass), e.g. a spy. */
  prefetch?: (items: readonly FirstStatement[]) => Promise<boolean>;
}

/** An outcome as kept: `replayed` once a repeat of its request was answered with it. */
type RecordedOutcome = PendingOutcome & { replayed?: boolean };

const live = (row: LockRow | undefined, now: number): row is LockRow => !!row && (row.locked_until === null || row.locked_until > now);
const expired = (row: LockRow | undefined, now: number): row is LockRow => !!row && row.locked_until !== null && row.locked_until <= now;

class MemoryTx implements StoreTx {
  readonly events: PendingEvent[] = [];
  readonly outcomes: PendingOutcome[] = [];
  prefetch?: (items: readonly FirstStatement[]) => Promise<boolean>;

  constructor(
    /** This transaction's view: a copy of the committed map, replaced (never mutated in place) by atomically. */
    public locks: Map<string, LockRow>,
    /** Recorded outcomes: a copy of the committed map, written at commit. */
    public recorded: Map<string, RecordedOutcome>,
    /** Sessions: a copy of the committed map (atomically does not cover them: no operation needs it). */
    public sessions: Map<string, SessionRow>,
    readonly now: number,
    private readonly nextToken: () => number,
  ) {}

  async insertLock(name: string, expiresMs: number | null, who: Requester): Promise<LockRow | null> {
    if (this.locks.has(name)) return null; // any row, expired or not, like ON CONFLICT DO NOTHING
    const row: LockRow = {
      name,
      locked_by: who.lockedBy,
      lock_process: who.process,
      locked_until: expiresMs === null ? null : this.now + expiresMs,
      created_at: this.now,
      updated_at: this.now,
      token: this.nextToken(),
      session_id: null,
    };
    this.locks.set(name, row);
    return { ...row };
  }

  async deleteIfExpired(name: string): Promise<LockRow | null> {
    const row = this.locks.get(name);
    if (!expired(row, this.now)) return null;
    this.locks.delete(name);
    return { ...row };
  }

  async selectLive(name: string): Promise<LockRow | null> {
    const row = this.locks.get(name);
    return live(row, this.now) ? { ...row } : null;
  }

  async renew(name: string, renewal: Renewal, token: number | null): Promise<LockRow | null> {
    const row = this.locks.get(name);
    if (!live(row, this.now) || (token !== null && row.token !== token)) return null;
    const until = row.locked_until;
    let next: number | null;
    if (renewal.kind === 'forever') next = null;
    else if (renewal.kind === 'add') next = until === null ? null : until + renewal.ms;
    else next = until === null || until >= this.now + renewal.ms ? until : this.now + renewal.ms;
    const renewed: LockRow = { ...row, locked_until: next, updated_at: this.now };
    this.locks.set(name, renewed);
    return { ...renewed };
  }

  async deleteLock(name: string, token: number | null): Promise<LockRow | null> {
    const row = this.locks.get(name);
    if (!row || (token !== null && row.token !== token)) return null;
    this.locks.delete(name);
    return { ...row };
  }

  async deleteExpired(limit: number): Promise<LockRow[]> {
    const rows = [...this.locks.values()].filter((r) => expired(r, this.now));
    rows.sort((a, b) => a.locked_until! - b.locked_until!);
    const taken = rows.slice(0, Math.max(0, limit));
    for (const r of taken) this.locks.delete(r.name);
    return taken.map((r) => ({ ...r }));
  }

  async deleteAll(): Promise<LockRow[]> {
    const rows = [...this.locks.values()];
    this.locks.clear();
    return rows.map((r) => ({ ...r }));
  }

  async listLive(query: { prefix: string | null; after: string | null; limit: number }): Promise<LockRow[]> {
    const { prefix, after, limit } = query;
    return [...this.locks.values()]
      .filter((r) => live(r, this.now) && (after === null || r.name > after) && (prefix === null || r.name.startsWith(prefix)))
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
      .slice(0, Math.max(0, limit))
      .map((r) => ({ ...r }));
  }

  emit(type: EventType, lock: LockRecord, cause: EventCause): void {
    this.events.push({ type, lock, cause });
  }

  async recall(ids: readonly string[]): Promise<Map<string, string>> {
    const found = new Map<string, string>();
    for (const id of ids) {
      const o = this.recorded.get(id);
      if (o && o.expiresAt > this.now) {
        found.set(id, o.outcome);
        this.recorded.set(id, { ...o, replayed: true });
      }
    }
    return found;
  }

  remember(id: string, outcome: string, expiresAt: number): void {
    this.outcomes.push({ id, outcome, expiresAt });
  }

  async forget(id: string): Promise<boolean> {
    if (!this.recorded.has(id) || this.recorded.get(id)?.replayed) return false;
    return this.recorded.delete(id);
  }

  async deleteExpiredOutcomes(limit: number): Promise<number> {
    const gone = [...this.recorded.values()].filter((o) => o.expiresAt <= this.now).slice(0, limit);
    for (const o of gone) this.recorded.delete(o.id);
    return gone.length;
  }

  async openSession(id: string, ttlMs: number, who: Requester): Promise<SessionRow> {
    const row: SessionRow = { id, ttl_ms: ttlMs, expires_at: this.now + ttlMs, locked_by: who.lockedBy, created_at: this.now };
    this.sessions.set(id, row);
    return { ...row };
  }

  async liveSession(id: string): Promise<SessionRow | null> {
    const row = this.sessions.get(id);
    return row && row.expires_at > this.now ? { ...row } : null;
  }

  async keepSession(
    id: string,
    lockUntil: (sessionExpiresAt: number) => number,
  ): Promise<{ session: SessionRow; locks: LockRow[] } | null> {
    const row = this.sessions.get(id);
    if (!row || row.expires_at <= this.now) return null;
    const session = { ...row, expires_at: this.now + row.ttl_ms };
    this.sessions.set(id, session);
    const until = lockUntil(session.expires_at);
    const locks: LockRow[] = [];
    for (const lock of this.locks.values()) {
      if (lock.session_id !== id || !live(lock, this.now)) continue;
      const kept = { ...lock, locked_until: lock.locked_until === null || lock.locked_until >= until ? lock.locked_until : until };
      this.locks.set(lock.name, kept);
      locks.push({ ...kept });
    }
    return { session: { ...session }, locks };
  }

  async bindLock(name: string, token: number, sessionId: string, until: number): Promise<LockRow | null> {
    const row = this.locks.get(name);
    if (!row || row.token !== token) return null;
    const bound = { ...row, session_id: sessionId, locked_until: until };
    this.locks.set(name, bound);
    return { ...bound };
  }

  async closeSession(id: string): Promise<LockRow[] | null> {
    const row = this.sessions.get(id);
    if (!row || row.expires_at <= this.now) return null;
    this.sessions.delete(id);
    const locks = [...this.locks.values()].filter((l) => l.session_id === id);
    for (const l of locks) this.locks.delete(l.name);
    return locks.map((l) => ({ ...l }));
  }

  async restoreLock(row: LockRow): Promise<LockRow> {
    this.locks.set(row.name, { ...row });
    return { ...row };
  }

  async deleteExpiredSessions(limit: number): Promise<number> {
    const gone = [...this.sessions.values()].filter((r) => r.expires_at <= this.now).slice(0, limit);
    for (const r of gone) this.sessions.delete(r.id);
    return gone.length;
  }

  async atomically<T>(fn: () => Promise<T>): Promise<T> {
    const saved = this.locks;
    const eventsBefore = this.events.length;
    const outcomesBefore = this.outcomes.length;
    this.locks = new Map(saved);
    try {
      return await fn();
    } catch (err) {
      this.locks = saved;
      this.events.length = eventsBefore;
      this.outcomes.length = outcomesBefore;
      throw err;
    }
  }
}

/** The relay lease: always held by a sole writer; otherwise taken when `available`. */
export class MemoryLease implements RelayLease {
  private holding: boolean;
  /** Whether acquire() may take the lease (another daemon does not hold it). */
  available: boolean;
  /** When set, acquire() throws it (the lease's connection fails). */
  acquireError?: unknown;
  acquireCalls = 0;

  constructor(
    private readonly store: MemoryStore,
    private readonly sole: boolean,
    held: boolean,
    available: boolean,
  ) {
    this.holding = sole || held;
    this.available = available;
  }

  get held(): boolean {
    return this.holding;
  }

  async acquire(): Promise<boolean> {
    this.acquireCalls += 1;
    if (this.acquireError !== undefined) throw this.acquireError;
    if (!this.holding && this.available) this.holding = true;
    return this.holding;
  }

  /** The lease's connection broke: another daemon may take over. */
  lose(): void {
    if (!this.sole) this.holding = false;
  }

  async read(after: number, limit: number, before?: number): Promise<OutboxEvent[]> {
    this.check();
    return this.store.outbox
      .filter((e) => e.seq > after && (before === undefined || e.seq < before))
      .slice(0, Math.max(0, limit))
      .map((e) => ({ ...e }));
  }

  async remove(seqs: readonly number[]): Promise<void> {
    this.check();
    const gone = new Set(seqs);
    this.store.outbox = this.store.outbox.filter((e) => !gone.has(e.seq));
  }

  async readStale(limit: number, staleMs: number): Promise<StaleCandidate[]> {
    this.check();
    const before = this.store.now() - staleMs;
    return this.store.outbox.slice(0, Math.max(0, limit)).map((e) => ({ ...e, stale: e.at < before }));
  }

  async removeThrough(seq: number): Promise<void> {
    this.check();
    this.store.outbox = this.store.outbox.filter((e) => e.seq > seq);
  }

  async release(): Promise<void> {
    if (!this.sole) this.holding = false;
  }

  private check(): void {
    if (this.store.closed) throw new StoreUnavailable('the store has been closed');
    if (!this.holding) throw new StoreUnavailable('the relay lease is not held');
  }
}

export class MemoryStore implements Store {
  readonly kind = 'memory';
  readonly concurrency = 1;
  readonly soleWriter: boolean;
  locks = new Map<string, LockRow>();
  /** Recorded request outcomes, by id. */
  outcomes = new Map<string, RecordedOutcome>();
  sessions = new Map<string, SessionRow>();
  /** Committed, undelivered events in seq order. */
  outbox: OutboxEvent[] = [];
  /** Transactions committed so far. */
  commits = 0;
  closed = false;
  readonly lease: MemoryLease;
  private lastToken = 0;
  private lastSeq = 0;
  private readonly failures: unknown[] = [];
  private tail: Promise<unknown> = Promise.resolve();
  private readonly clock: Clock;
  private readonly daemonId: string;
  private readonly prefetch?: (items: readonly FirstStatement[]) => Promise<boolean>;

  constructor(options: MemoryStoreOptions = {}) {
    this.prefetch = options.prefetch;
    this.clock = options.clock ?? systemClock;
    this.daemonId = options.daemonId ?? 'memory-daemon';
    this.soleWriter = options.soleWriter ?? true;
    this.lease = new MemoryLease(this, this.soleWriter, options.leaseHeld ?? false, options.leaseAvailable ?? true);
  }

  describe(): string {
    return 'memory';
  }

  async migrate(): Promise<string[]> {
    return [];
  }

  async claim(): Promise<void> {
    if (this.closed) throw new StoreUnavailable('the store has been closed');
  }

  async identity(): Promise<string> {
    return 'memory';
  }

  /** The next `times` transactions run their work, then fail with `err` instead of committing. */
  failNext(err: unknown, times = 1): void {
    for (let i = 0; i < times; i++) this.failures.push(err);
  }

  transaction<T>(work: (tx: StoreTx) => Promise<T>): Promise<TransactionResult<T>> {
    // One at a time, like SQLite's single connection: each works on what the one before committed.
    const run = this.tail.then(() => this.transact(work));
    this.tail = run.catch(() => undefined);
    return run;
  }

  async countOutbox(upTo = Number.MAX_SAFE_INTEGER): Promise<number> {
    if (this.closed) throw new StoreUnavailable('the store has been closed');
    return this.outbox.filter((e) => e.seq <= upTo).length;
  }

  async counts(): Promise<StoreCounts> {
    if (this.closed) throw new StoreUnavailable('the store has been closed');
    const now = this.clock.now();
    const live = [...this.locks.values()].filter((l) => l.locked_until === null || l.locked_until > now);
    return {
      now,
      locks: live.length,
      sessions: [...this.sessions.values()].filter((s) => s.expires_at > now).length,
      outbox: this.outbox.length,
      oldestEventAt: this.outbox[0]?.at ?? null,
    };
  }

  relayLease(): RelayLease {
    return this.lease;
  }

  private newestRowOf(name: string): number | null {
    for (let i = this.outbox.length - 1; i >= 0; i--) if (this.outbox[i]!.name === name) return this.outbox[i]!.seq;
    return null;
  }

  /** The store's clock (what decides expiry, and the age of outbox rows). */
  now(): number {
    return this.clock.now();
  }

  delivered(seqs: readonly number[]): void {
    // At once: a real store takes them along with its next transaction.
    const gone = new Set(seqs);
    this.outbox = this.outbox.filter((e) => !gone.has(e.seq));
  }

  async outboxHas(seqs: readonly number[]): Promise<Set<number>> {
    if (this.closed) throw new StoreUnavailable('the store has been closed');
    const wanted = new Set(seqs);
    return new Set(this.outbox.filter((e) => wanted.has(e.seq)).map((e) => e.seq));
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.tail;
  }

  private async transact<T>(work: (tx: StoreTx) => Promise<T>): Promise<TransactionResult<T>> {
    if (this.closed) throw new StoreUnavailable('the store has been closed');
    const tx = new MemoryTx(new Map(this.locks), new Map(this.outcomes), new Map(this.sessions), this.clock.now(), () => ++this.lastToken);
    if (this.prefetch) tx.prefetch = this.prefetch;
    const value = await work(tx);
    // An injected failure strikes at commit: the work ran, and nothing of it is kept.
    if (this.failures.length > 0) throw this.failures.shift();
    const taken = tx.outcomes.filter((o) => this.outcomes.has(o.id)).map((o) => o.id);
    if (taken.length > 0) throw new DuplicateRequest(taken);
    for (const o of tx.outcomes) tx.recorded.set(o.id, o);
    this.outcomes = tx.recorded;
    const events = toCommittedEvents(tx.events, this.daemonId, tx.now);
    const lastOfLock = new Map<string, number>();
    for (const e of events) {
      e.seq = ++this.lastSeq;
      // Several writers: each event names the newest earlier row of its lock still in the outbox.
      if (!this.soleWriter) e.prev = lastOfLock.get(e.name) ?? this.newestRowOf(e.name);
      lastOfLock.set(e.name, e.seq);
    }
    this.locks = tx.locks;
    this.sessions = tx.sessions;
    for (const { lock: _lock, cause: _cause, prev: _prev, ...stored } of events) this.outbox.push(stored);
    this.commits += 1;
    return { value, events };
  }
}
