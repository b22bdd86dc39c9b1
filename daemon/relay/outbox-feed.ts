/**
 * Outbox feeds: what the relay publishes next, in seq order, and what it does with the events the
 * stream acknowledged. Reads and removals go through the relay lease, held by one daemon at a time.
 *
 * - MemoryFeed, where this daemon is the database's only writer: it keeps the events it saw
 *   committed in memory and publishes them from there, reading the outbox only for what memory
 *   does not hold (events from before the start, or committed while delivery was failing). Events
 *   are delivered in seq order, so delivered rows are removed by seq: everything up to the last
 *   delivered one, along with the next transaction.
 * - TableFeed, where several daemons share the outbox: the relaying daemon reads the oldest rows,
 *   whoever committed them, and removes each acknowledged row.
 */
import type { CommittedEvent, OutboxEvent, RelayLease } from '../store/store';

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
}

/** SQLite: most undelivered events kept in memory; beyond that they are read from the outbox. */
const MEMORY_LIMIT = 20_000;
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

  private fromMemory(limit: number): OutboxEvent[] {
    while (this.head < this.memory.length && this.memory[this.head]!.seq <= this.deliveredUpTo) this.head++;
    if (this.head > COMPACT_AFTER && this.head * 2 > this.memory.length) {
      this.memory = this.memory.slice(this.head);
      this.head = 0;
    }
    return this.memory.slice(this.head, this.head + limit);
  }
}

export class TableFeed implements OutboxFeed {
  constructor(private readonly lease: RelayLease) {}

  committed(): void {
    // Other daemons write to the outbox too: everything is read from the table.
  }

  next(limit: number): Promise<OutboxEvent[]> {
    return this.lease.read(0, limit);
  }

  async delivered(_round: readonly OutboxEvent[], delivered: readonly OutboxEvent[]): Promise<void> {
    if (delivered.length > 0) await this.lease.remove(delivered.map((e) => e.seq));
  }

  forget(): void {
    // Nothing kept.
  }

  oldest(limit: number): Promise<OutboxEvent[]> {
    return this.lease.read(0, limit);
  }

  remove(seqs: readonly number[]): Promise<void> {
    return this.lease.remove(seqs);
  }
}
