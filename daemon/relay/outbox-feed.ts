/**
 * Outbox feeds: what the relay publishes next, in seq order, and what it does with the events the
 * stream acknowledged. Reads and removals go through the relay lease, held by one daemon at a time.
 *
 * - MemoryFeed, where this daemon is the database's only writer: it keeps the events it saw
 *   committed in memory and publishes them from there, reading the outbox only for what memory
 *   does not hold (events from before the start, or committed while delivery was failing). Events
 *   are delivered in seq order, so delivered rows are removed by seq: everything up to the last
 *   delivered one, along with the next transaction.
 * - SharedFeed, where several daemons share the outbox (PostgreSQL): each daemon publishes the
 *   events it committed from memory, each once the event before it of the same lock is in the
 *   stream, and the relaying daemon (the lease holder) also delivers the rows their writers left
 *   behind (a daemon that died or lost NATS, a commit whose answer was lost).
 */
import type { Clock } from '../clock';
import type { CommittedEvent, OutboxEvent, RelayLease, Store } from '../store/store';

export interface OutboxFeed {
  /** Events this daemon committed. `delivering`: delivery works now (else memory keeps none). */
  committed(events: readonly CommittedEvent[], delivering: boolean): void;
  /** The next events to publish, oldest first. */
  next(limit: number): Promise<OutboxEvent[]>;
  /** `round` was published; `delivered` are the ones the stream acknowledged, in order. */
  delivered(round: readonly OutboxEvent[], delivered: readonly OutboxEvent[]): Promise<void>;
  /** Delivery failed: what follows is read from the outbox, after what the stream may already hold. */
  forget(): void;
  /** The oldest undelivered rows (to compare with the stream after a failure). */
  oldest(limit: number): Promise<OutboxEvent[]>;
  /** Remove rows the stream already holds. */
  remove(seqs: readonly number[]): Promise<void>;
  /** Events held back, waiting for an earlier event of their lock: look again soon. */
  waiting(): boolean;
  /** Events this daemon committed that are not delivered yet (null: count the outbox instead). */
  undelivered(): number | null;
}

/** SQLite: most undelivered events kept in memory; beyond that they are read from the outbox. */
const MEMORY_LIMIT = 20_000;
/** Rows the relaying daemon reads at a time when looking for events left behind. */
const PAGE_FOR_RECOVERY = 500;
/** Memory is compacted once this many delivered events sit at its head. */
const COMPACT_AFTER = 4096;

export class MemoryFeed implements OutboxFeed {
  /** Every event committed with seq >= memoryFrom, in seq order (none kept: memoryFrom undefined). */
  private memory: CommittedEvent[] = [];
  private head = 0;
  private memoryFrom?: number;
  /** Every event with seq <= deliveredUpTo is in the stream (or gone from the outbox). */
  private deliveredUpTo = 0;

  constructor(private readonly lease: RelayLease) {}

  committed(events: readonly CommittedEvent[], delivering: boolean): void {
    if (events.length === 0) return;
    if (!delivering) {
      // Memory must hold every event from memoryFrom on: once one is left out, keep none.
      this.forget();
      return;
    }
    // A commit's events come numbered in order, after those of the commit before (one writer).
    this.memoryFrom ??= events[0]!.seq;
    for (const e of events) this.memory.push(e);
    if (this.memory.length - this.head > MEMORY_LIMIT) this.forget();
  }

  async next(limit: number): Promise<OutboxEvent[]> {
    for (;;) {
      if (this.memoryFrom !== undefined && this.deliveredUpTo >= this.memoryFrom - 1) return this.fromMemory(limit);
      // Memory holds every event from `below` on: read only what lies before it.
      const below = this.memoryFrom;
      const rows = await this.lease.read(this.deliveredUpTo, limit, below);
      if (rows.length > 0) return rows;
      if (below === undefined) return [];
      // Nothing older than memory is left in the outbox: go on from memory.
      this.deliveredUpTo = Math.max(this.deliveredUpTo, below - 1);
    }
  }

  async delivered(round: readonly OutboxEvent[], delivered: readonly OutboxEvent[]): Promise<void> {
    // In seq order: what counts is the acknowledged prefix of the round.
    let prefix = 0;
    while (prefix < round.length && round[prefix] === delivered[prefix]) prefix++;
    if (prefix === 0) return;
    this.deliveredUpTo = Math.max(this.deliveredUpTo, round[prefix - 1]!.seq);
    await this.lease.removeThrough(this.deliveredUpTo);
  }

  forget(): void {
    this.memory = [];
    this.head = 0;
    this.memoryFrom = undefined;
  }

  oldest(limit: number): Promise<OutboxEvent[]> {
    return this.lease.read(this.deliveredUpTo, limit);
  }

  remove(seqs: readonly number[]): Promise<void> {
    return this.lease.remove(seqs);
  }

  waiting(): boolean {
    return false;
  }

  undelivered(): null {
    return null;
  }

  private fromMemory(limit: number): OutboxEvent[] {
    while (this.head < this.memory.length && this.memory[this.head]!.seq <= this.deliveredUpTo) this.head++;
    if (this.head > COMPACT_AFTER && this.head * 2 > this.memory.length) {
      this.memory = this.memory.slice(this.head);
      this.head = 0;
    }
    return this.memory.slice(this.head, this.head + limit);
  }
}

/** Most seqs remembered as delivered (to release the events waiting for them without asking the database). */
const DONE_LIMIT = 50_000;

export interface SharedFeedOptions {
  /** This daemon's id, as its events carry it. */
  daemonId: string;
  /** ms a row may wait in the outbox before the relaying daemon delivers it in its writer's place. */
  staleMs: number;
  /** ms between the relaying daemon's looks for rows left behind. */
  recoverIntervalMs: number;
}

export class SharedFeed implements OutboxFeed {
  /** This daemon's committed, undelivered events, by seq. */
  private readonly memory = new Map<number, CommittedEvent>();
  /** Seqs known to be in the stream (their rows gone, or going with the next transaction). */
  private readonly done = new Set<number>();
  /** The next look for rows left behind (relaying daemon only); 0: at the next round. */
  private recoverAt = 0;
  /** After a failure: ask which of memory's events another daemon delivered meanwhile. */
  private pruneDue = false;

  constructor(
    private readonly store: Store,
    private readonly lease: RelayLease,
    private readonly clock: Clock,
    private readonly options: SharedFeedOptions,
  ) {}

  committed(events: readonly CommittedEvent[]): void {
    for (const e of events) if (!this.done.has(e.seq)) this.memory.set(e.seq, e);
    if (this.memory.size > MEMORY_LIMIT) {
      // Too many held back (NATS away for long): the relaying daemon delivers them from the outbox.
      this.memory.clear();
      this.recoverAt = 0;
    }
  }

  async next(limit: number): Promise<OutboxEvent[]> {
    if (this.pruneDue) await this.prune();
    const names = new Set<string>();
    const round = await this.own(limit, names);
    if (round.length < limit && this.lease.held && this.clock.now() >= this.recoverAt) {
      const left = await this.leftBehind(limit - round.length, names);
      // A full page may hide more: look again with the next round, else after the interval.
      this.recoverAt = left.length > 0 ? 0 : this.clock.now() + this.options.recoverIntervalMs;
      round.push(...left);
    }
    return round.sort((a, b) => a.seq - b.seq);
  }

  async delivered(_round: readonly OutboxEvent[], delivered: readonly OutboxEvent[]): Promise<void> {
    const own: number[] = [];
    const recovered: number[] = [];
    for (const e of delivered) {
      this.markDone(e.seq);
      (this.memory.delete(e.seq) ? own : recovered).push(e.seq);
    }
    if (own.length > 0) this.store.delivered!(own);
    if (recovered.length > 0) await this.lease.remove(recovered);
  }

  forget(): void {
    // Memory is kept (it is what this daemon still has to deliver); after the failure, the events
    // another daemon delivered meanwhile are dropped from it first.
    this.pruneDue = this.memory.size > 0;
    this.recoverAt = 0;
  }

  async oldest(limit: number): Promise<OutboxEvent[]> {
    const own = [...this.memory.values()].sort((a, b) => a.seq - b.seq).slice(0, limit);
    return this.lease.held ? [...own, ...(await this.lease.read(0, limit))] : own;
  }

  async remove(seqs: readonly number[]): Promise<void> {
    await this.delivered(
      [],
      seqs.map((seq) => this.memory.get(seq) ?? ({ seq } as OutboxEvent)),
    );
  }

  waiting(): boolean {
    // Held-back events of this daemon, or rows left behind still to go after those just sent.
    return this.memory.size > 0 || (this.lease.held && this.recoverAt === 0);
  }

  undelivered(): number {
    return this.memory.size;
  }

  /**
   * This daemon's events that may go now, one per lock, in seq order: those whose lock's previous
   * event is in the stream. Previous events not known here are looked up in the outbox (gone from
   * it: delivered).
   */
  private async own(limit: number, names: Set<string>): Promise<OutboxEvent[]> {
    if (this.memory.size === 0) return [];
    const pending = [...this.memory.values()].sort((a, b) => a.seq - b.seq);
    const unknown = pending.filter((e) => e.prev != null && !this.done.has(e.prev) && !this.memory.has(e.prev)).map((e) => e.prev!);
    if (unknown.length > 0) {
      const present = await this.store.outboxHas!(unknown);
      for (const seq of unknown) if (!present.has(seq)) this.markDone(seq);
    }
    const round: OutboxEvent[] = [];
    for (const e of pending) {
      if (round.length >= limit) break;
      // One event per lock in flight (the next one's prev is this one): no chain header is needed
      // for a lock's events to be stored in order.
      if (names.has(e.name) || (e.prev != null && !this.done.has(e.prev))) continue;
      names.add(e.name);
      round.push(e);
    }
    return round;
  }

  /**
   * Rows their writer has not delivered: the oldest page of the outbox, the first row of each lock
   * (those before it are in the stream), left alone while its writer may still be on it.
   */
  private async leftBehind(limit: number, names: Set<string>): Promise<OutboxEvent[]> {
    const rows = await this.lease.readStale!(PAGE_FOR_RECOVERY, this.options.staleMs);
    const seen = new Set<string>();
    const left: OutboxEvent[] = [];
    for (const { stale, ...row } of rows) {
      if (left.length >= limit) break;
      if (seen.has(row.name)) continue;
      seen.add(row.name);
      if (names.has(row.name) || this.memory.has(row.seq) || this.done.has(row.seq)) continue;
      // This daemon's own rows that memory does not hold (dropped, or a commit whose answer was lost) go at once.
      if (!stale && row.daemon !== this.options.daemonId) continue;
      names.add(row.name);
      left.push(row);
    }
    return left;
  }

  /** Drop from memory the events whose rows are gone: another daemon delivered them. */
  private async prune(): Promise<void> {
    // Only the events asked about: one committed while the question was out is not known to be gone.
    const asked = [...this.memory.keys()];
    this.pruneDue = false;
    let present: Set<number>;
    try {
      present = await this.store.outboxHas!(asked);
    } catch (err) {
      this.pruneDue = true;
      throw err;
    }
    for (const seq of asked) {
      if (present.has(seq) || !this.memory.delete(seq)) continue;
      this.markDone(seq);
    }
  }

  private markDone(seq: number): void {
    this.done.add(seq);
    if (this.done.size > DONE_LIMIT) {
      // Sets iterate in insertion order: forget the oldest (asked of the database if ever needed).
      for (const old of this.done) {
        this.done.delete(old);
        if (this.done.size <= DONE_LIMIT / 2) break;
      }
    }
  }
}
