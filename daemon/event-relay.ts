/**
 * Delivers events from the outbox table to NATS.
 *
 * With JetStream (the normal case) events leave in outbox order, pipelined, each with its id as
 * Nats-Msg-Id and, after the first of a round, the id of the event before it as the expected last
 * message id of the stream. The stream drops re-sends (de-duplication by id) and refuses an event
 * whose predecessor is missing, so an event is stored only after every earlier one: a publish that
 * failed or timed out can never be overtaken by a later one. A row leaves the outbox only after
 * the stream acknowledged it. After a failure, the relay first reads the newest messages of the
 * stream and drops from the outbox the events already stored (acknowledgements lost when the
 * server died), so a re-send does not depend on the duplicate window alone. While NATS or
 * JetStream is away the relay backs off (250 ms doubling to 10 s) and starts again at once on
 * reconnect; requests are not affected, events wait in the outbox.
 *
 * On SQLite (one daemon, one writer) the relay keeps the events it saw committed in memory and
 * publishes them from there, reading the outbox only for what memory does not hold (events from
 * before the start, or from while delivery was failing). Delivered rows are removed in the next
 * transaction that runs anyway, by sequence: everything up to the last delivered one.
 *
 * Without JetStream on the server when the daemon starts (or with eventsJetstream=off), events go
 * out on core NATS, at most once, and the daemon says so once. Once the daemon has delivered to
 * JetStream it keeps to it: if JetStream goes away later, events wait in the outbox for it.
 *
 * On PostgreSQL several daemons share one outbox; one of them relays at a time: the one holding a
 * session advisory lock on its own dedicated connection (not one of the request pool's). The
 * others stand by, try to take over every 2 s, and nudge the relaying daemon on `P.relay` after
 * committing events, which also looks at the outbox every second.
 */
import { Client as PgClient } from 'pg';
import {
  createInbox,
  headers,
  nanos,
  RetentionPolicy,
  StorageType,
  type JetStreamManager,
  type Msg,
  type NatsConnection,
  type StreamConfig,
  type StreamInfo,
  type Subscription,
} from 'nats';
import { eventSubject, type EventType, type LockEvent } from '../shared/events';
import { isUnavailableError, type Database, type Row } from './store/database';
import { iso } from './store/lock-ops';
import type { Batcher, CommittedEvent, Tx } from './store/transaction';
import type { Logger } from './logger';

export interface EventRelayOptions {
  prefix: string;
  jetstream: 'auto' | 'off';
  stream: string;
  retention: 'limits' | 'interest' | 'workqueue';
  replicas: number;
  maxAgeSeconds: number;
  duplicateWindowSeconds: number;
  /** PostgreSQL: ms between looks at the outbox by the relaying daemon when nothing nudged it. */
  pollIntervalMs?: number;
  /** PostgreSQL: ms between attempts of a standing-by daemon to take over relaying. */
  standbyRetryMs?: number;
  /** First wait after a failed delivery; it doubles up to `retryMaxMs`. */
  retryMinMs?: number;
  retryMaxMs?: number;
  /** ms to wait for the JetStream acknowledgements of a round of events. */
  publishTimeoutMs?: number;
}

/** Most events published in one round (one outbox read, one wait for acknowledgements). */
const PAGE = 250;
/** How many of the newest stream messages are checked against the outbox after a failure. */
const RECONCILE_TAIL = 2 * PAGE;
/** SQLite: most undelivered events kept in memory; beyond that they are read from the outbox. */
const MEMORY_LIMIT = 20_000;
/** SQLite: delivered rows are removed by the next transaction, or by one of their own after this many ms. */
const CLEANUP_DELAY_MS = 20;
/** Header naming the daemon that made a change, so it can skip its own events cheaply. */
export const DAEMON_HEADER = 'Lockmgr-Daemon';
/** Arbitrary constant naming the PostgreSQL advisory lock held by the one relaying daemon. */
const RELAY_LOCK_KEY = 7735342102;
const OUTBOX_COLUMNS = 'seq, event_id, type, name, lock, cause, daemon, at';

export function outboxRowToEvent(row: Row): LockEvent {
  const e = outboxRowToStored(row);
  return { id: e.id, type: e.type, seq: e.seq, lock: JSON.parse(e.lockJson), cause: JSON.parse(e.causeJson), daemon: e.daemon, at: iso(e.at) };
}

/** An outbox row as the relay uses it, lock and cause left serialised. */
function outboxRowToStored(row: Row): StoredEvent {
  return {
    seq: Number(row.seq),
    id: String(row.event_id),
    type: String(row.type) as EventType,
    name: String(row.name),
    lockJson: String(row.lock),
    causeJson: String(row.cause),
    daemon: String(row.daemon),
    at: Number(row.at),
  };
}

/** An event ready to publish: its payload is the LockEvent's JSON, built once. */
interface Outgoing {
  seq: number;
  id: string;
  subject: string;
  daemon: string;
  payload: string;
}

/** An event as the outbox keeps it: lock and cause already serialised. */
interface StoredEvent {
  seq: number;
  id: string;
  type: EventType;
  name: string;
  lockJson: string;
  causeJson: string;
  daemon: string;
  at: number;
}

/** The event ready to publish; its payload, the LockEvent JSON, is built from the serialised parts. */
function toOutgoing(prefix: string, e: StoredEvent): Outgoing {
  return {
    seq: e.seq,
    id: e.id,
    subject: eventSubject(prefix, e.type, e.name),
    daemon: e.daemon,
    payload:
      `{"id":${JSON.stringify(e.id)},"type":${JSON.stringify(e.type)},"seq":${e.seq},"lock":${e.lockJson},` +
      `"cause":${e.causeJson},"daemon":${JSON.stringify(e.daemon)},"at":"${iso(e.at)}"}`,
  };
}

/** The subject relaying daemons listen on for "events are waiting in the outbox". */
export function relayNudgeSubject(prefix: string): string {
  return `${prefix}.relay`;
}

/** The stream refused an event because another publisher wrote between two of ours. */
class ChainBroken extends Error {}

/** A JetStream refusal, shaped like nats.js's errors so that the checks below read both. */
class StreamRefusal extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly api_error?: { code?: number; err_code?: number; description?: string },
  ) {
    super(message);
  }
}

function errorCode(err: unknown): string {
  return String((err as { code?: unknown })?.code ?? '');
}
function apiErrorCode(err: unknown): number | undefined {
  return (err as { api_error?: { err_code?: number } })?.api_error?.err_code;
}
/** nats.js: 503 = no responders, i.e. JetStream is not enabled on the server (or no stream listens). */
function isJetStreamAbsent(err: unknown): boolean {
  return errorCode(err) === '503' || /jetstream not enabled/i.test(String((err as Error)?.message));
}
function isStreamNotFound(err: unknown): boolean {
  return apiErrorCode(err) === 10059 || /stream not found/i.test(String((err as Error)?.message));
}
function isWrongLastMsgId(err: unknown): boolean {
  return apiErrorCode(err) === 10070 || /wrong last msg id/i.test(String((err as Error)?.message));
}

/** Per event of a round: undefined while unacknowledged, null once stored, or the refusal. */
type AckResult = Error | null | undefined;

/**
 * Publishes a round of events as plain messages whose reply subjects lie under one inbox
 * subscription, and matches the stream's acknowledgements to them by number. (nats.js's
 * `js.publish` makes a request, a timer and, in 2.29, an error object per message: at one event
 * per lock change that was a tenth of the daemon's CPU.) One round is in flight at a time.
 */
class AckCollector {
  private inbox = '';
  private sub?: Subscription;
  /** Number of the first message of the current round; replies are `<inbox>.<number>`. */
  private base = 0;
  private next = 0;
  private results: AckResult[] = [];
  private missing = 0;
  private finish?: () => void;
  private readonly decoder = new TextDecoder();

  constructor(private readonly nc: NatsConnection) {}

  /** Publish `count` messages (by `send`) and wait for their acknowledgements, at most `timeoutMs`. */
  async round(count: number, timeoutMs: number, send: (i: number, reply: string) => void): Promise<AckResult[]> {
    if (!this.sub || this.sub.isClosed()) {
      this.inbox = createInbox();
      this.sub = this.nc.subscribe(`${this.inbox}.*`, { callback: (_err, msg) => this.acknowledged(msg) });
    }
    this.base = this.next;
    this.next += count;
    this.results = new Array<AckResult>(count);
    this.missing = count;
    const done = new Promise<void>((resolve) => (this.finish = resolve));
    for (let i = 0; i < count; i++) send(i, `${this.inbox}.${this.base + i}`);
    const timer = setTimeout(() => this.abandon(), timeoutMs);
    await done;
    clearTimeout(timer);
    return this.results;
  }

  /** Stop waiting: the acknowledgements still missing will not be waited for (timeout, disconnect). */
  abandon(): void {
    const finish = this.finish;
    this.finish = undefined;
    // Late acknowledgements of an abandoned round are ignored: their numbers are below the next base.
    this.base = this.next;
    finish?.();
  }

  close(): void {
    this.abandon();
    this.sub?.unsubscribe();
    this.sub = undefined;
  }

  private acknowledged(msg: Msg): void {
    const i = Number(msg.subject.slice(this.inbox.length + 1)) - this.base;
    if (!(i >= 0 && i < this.results.length) || this.results[i] !== undefined || !this.finish) return;
    this.results[i] = this.refusal(msg);
    if (--this.missing === 0) this.abandon();
  }

  private refusal(msg: Msg): Error | null {
    if (msg.data.length === 0 && msg.headers?.code === 503) {
      return new StreamRefusal('no responders: JetStream is not enabled or no stream takes the subject', '503');
    }
    const text = this.decoder.decode(msg.data);
    if (!text.includes('"error"')) return null; // {"stream":..,"seq":..}: stored
    try {
      const { error } = JSON.parse(text) as { error?: { code?: number; err_code?: number; description?: string } };
      return error ? new StreamRefusal(error.description ?? 'refused by JetStream', String(error.code ?? ''), error) : null;
    } catch (err) {
      return new StreamRefusal(`unreadable JetStream acknowledgement: ${(err as Error).message}`, 'BAD_ACK');
    }
  }
}

export class EventRelay {
  private mode: 'jetstream' | 'core';
  /** Delivered to JetStream at least once in this process: from then on, never fall back to core. */
  private hadJetStream = false;
  private warnedCore = false;
  private jsm?: JetStreamManager;
  private connected = true;
  private statusIter?: AsyncIterable<unknown> & { stop?: () => void };
  private running?: Promise<void>;
  private again = false;
  private kickQueued = false;
  private timer?: NodeJS.Timeout;
  private stopped = false;
  /** flush() calls waiting: deliver without pausing between pages. */
  private flushing = 0;
  /** Delivery is failing: retry with backoff, one event at a time until it works again. */
  private failing = false;
  private failures = 0;
  private retryAt = 0;
  /** Make sure JetStream answers and the stream exists before the next publish. */
  private checkStream = true;
  /** Drop from the outbox what the stream already holds before the next publish. */
  private reconcileNeeded = true;
  /** Highest outbox seq committed by this daemon (what a stop must see delivered). */
  private maxCommittedSeq = 0;
  private readonly acks: AckCollector;
  // SQLite: events kept in memory, and how far delivery and removal from the outbox have got.
  /** Every event committed with seq >= memoryFrom, in seq order (undefined: none kept). */
  private memory: CommittedEvent[] = [];
  private memoryHead = 0;
  private memoryFrom?: number;
  /** Every event with seq <= deliveredUpTo is in the stream (or gone from the outbox). */
  private deliveredUpTo = 0;
  private removedUpTo = 0;
  private cleanupTimer?: NodeJS.Timeout;
  // PostgreSQL: relay leadership.
  private pg?: PgClient;
  private leading = false;
  private lastLeadAttempt = 0;
  private nudgeSub?: Subscription;
  private nudgeQueued = false;
  private readonly encoder = new TextEncoder();
  private readonly pollIntervalMs: number;
  private readonly standbyRetryMs: number;
  private readonly retryMinMs: number;
  private readonly retryMaxMs: number;
  private readonly publishTimeoutMs: number;

  constructor(
    private readonly db: Database,
    private readonly batcher: Batcher,
    private readonly nc: NatsConnection,
    private readonly options: EventRelayOptions,
    private readonly logger: Logger,
  ) {
    this.mode = options.jetstream === 'off' ? 'core' : 'jetstream';
    this.pollIntervalMs = options.pollIntervalMs ?? 1000;
    this.standbyRetryMs = options.standbyRetryMs ?? 2000;
    this.retryMinMs = options.retryMinMs ?? 250;
    this.retryMaxMs = options.retryMaxMs ?? 10_000;
    this.publishTimeoutMs = options.publishTimeoutMs ?? 5000;
    this.acks = new AckCollector(nc);
  }

  get deliveryMode(): 'jetstream' | 'core' {
    return this.mode;
  }

  /** Find JetStream and make sure the events stream exists, then deliver what is waiting. */
  async start(): Promise<void> {
    this.watchConnection();
    if (this.db.dialect === 'postgres') {
      this.nudgeSub = this.nc.subscribe(relayNudgeSubject(this.options.prefix), {
        callback: () => {
          if (this.leading) this.kick();
        },
      });
    }
    if (this.options.jetstream === 'off') {
      this.warnedCore = true;
      this.logger.warn('events go out on core NATS only (eventsJetstream=off): subscribers that are away miss them');
    } else {
      try {
        await this.ensureJetStream();
      } catch (err) {
        this.logger.warn(`JetStream did not answer (${(err as Error).message}): events wait in the outbox until it does`);
      }
    }
    this.kick();
  }

  /** New events were committed by this daemon: deliver them soon. */
  committed(events: readonly CommittedEvent[]): void {
    for (const e of events) if (e.seq > this.maxCommittedSeq) this.maxCommittedSeq = e.seq;
    if (this.db.dialect === 'sqlite') this.remember(events);
    else if (!this.leading) this.nudge();
    // After the replies: they wait on the same commit, and the relay's round can wait for them.
    if (!this.kickQueued) {
      this.kickQueued = true;
      setImmediate(() => {
        this.kickQueued = false;
        this.kick();
      });
    }
  }

  /**
   * SQLite: removes delivered events from the outbox inside a transaction that runs anyway (the
   * Batcher calls this first in each one); the returned function records it once committed.
   */
  async housekeeping(tx: Tx): Promise<(() => void) | undefined> {
    const upTo = this.deliveredUpTo;
    if (this.db.dialect !== 'sqlite' || upTo <= this.removedUpTo) return undefined;
    await tx.query('DELETE FROM lockmgr_outbox WHERE seq <= ?', [upTo]);
    return () => {
      if (upTo > this.removedUpTo) this.removedUpTo = upTo;
    };
  }

  /** Look at the outbox now (after a commit, a reconnect, or a timer). */
  kick(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = this.deliverAll().finally(() => {
      this.running = undefined;
      if (this.again) {
        this.again = false;
        this.kick();
      }
    });
  }

  /**
   * Deliver the events this daemon committed (all of the outbox, if this daemon relays);
   * resolves true once they are delivered, false if `timeoutMs` passed first.
   */
  async flush(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    this.flushing += 1;
    try {
      for (;;) {
        this.retryAt = 0; // try now, whatever the backoff says
        this.kick();
        await this.running;
        const upTo = this.db.dialect === 'sqlite' || this.leading ? Number.MAX_SAFE_INTEGER : this.maxCommittedSeq;
        // On SQLite the count's transaction also removes what was delivered.
        if (upTo === 0 || (await this.countPending(upTo)) === 0) return true;
        if (Date.now() >= deadline) return false;
        if (this.db.dialect === 'postgres' && !this.leading) this.nudge();
        await new Promise((r) => setTimeout(r, 100));
      }
    } finally {
      this.flushing -= 1;
    }
  }

  /** Events waiting in the outbox (with seq <= `upTo`). */
  async countPending(upTo = Number.MAX_SAFE_INTEGER): Promise<number> {
    const [row] = await this.batcher.run((tx) => tx.query('SELECT COUNT(*) AS n FROM lockmgr_outbox WHERE seq <= ?', [upTo]));
    return Number(row?.n ?? 0);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    clearTimeout(this.cleanupTimer);
    await this.running;
    this.statusIter?.stop?.();
    this.nudgeSub?.unsubscribe();
    this.acks.close();
    const pg = this.pg;
    this.pg = undefined;
    this.leading = false;
    if (pg) {
      // Ending the session releases the advisory lock; a standing-by daemon takes over.
      await pg.end().catch(() => undefined);
    }
  }

  private watchConnection(): void {
    const iter = this.nc.status() as AsyncIterable<{ type: string }> & { stop?: () => void };
    this.statusIter = iter;
    void (async () => {
      for await (const s of iter) {
        if (this.stopped) break;
        if (s.type === 'disconnect') {
          this.connected = false;
          // Acknowledgements of what was sent on the lost connection cannot come: end the round
          // (its unacknowledged events are sent again after the reconnect; the stream drops those
          // it already holds).
          this.acks.abandon();
        } else if (s.type === 'reconnect') this.reconnected();
      }
    })().catch(() => undefined);
  }

  private reconnected(): void {
    this.connected = true;
    this.failures = 0;
    this.retryAt = 0;
    if (this.options.jetstream !== 'off') {
      // The server may have come back without the stream (or, in core mode, now with JetStream).
      this.mode = 'jetstream';
      this.checkStream = true;
      this.reconcileNeeded = true;
    }
    this.kick();
  }

  /** SQLite: keep committed events in memory while delivery works, so they need not be read back. */
  private remember(events: readonly CommittedEvent[]): void {
    if (events.length === 0) return;
    if (this.failing || !this.connected) {
      // Memory must hold every event from memoryFrom on: once one is left out, keep none.
      this.forget();
      return;
    }
    // A commit's events come numbered in order, after those of the commit before (one writer).
    if (this.memoryFrom === undefined) this.memoryFrom = events[0]!.seq;
    for (const e of events) this.memory.push(e);
    if (this.memory.length - this.memoryHead > MEMORY_LIMIT) this.forget();
  }

  /** Drop the events kept in memory: from now on they are read from the outbox. */
  private forget(): void {
    this.memory = [];
    this.memoryHead = 0;
    this.memoryFrom = undefined;
  }

  /** Ask the relaying daemon (another one, on PostgreSQL) to look at the outbox. */
  private nudge(): void {
    if (this.nudgeQueued || this.nc.isClosed()) return;
    this.nudgeQueued = true;
    setImmediate(() => {
      this.nudgeQueued = false;
      if (!this.nc.isClosed()) this.nc.publish(relayNudgeSubject(this.options.prefix));
    });
  }

  /** Look at the outbox again in `ms` (replacing any earlier plan). */
  private schedule(ms: number): void {
    clearTimeout(this.timer);
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.kick();
    }, ms);
    this.timer.unref?.();
  }

  private async deliverAll(): Promise<void> {
    if (this.stopped || this.nc.isClosed() || !this.connected) return; // a reconnect kicks us
    if (this.failing && Date.now() < this.retryAt) return; // the retry timer is set
    try {
      if (!(await this.lead())) {
        this.schedule(this.standbyRetryMs);
        return;
      }
      if (this.mode === 'jetstream') {
        if (this.checkStream) await this.ensureJetStream();
        if (this.mode === 'jetstream' && this.reconcileNeeded) {
          // Best effort (a work-queue stream, for one, may refuse the reading consumer): the
          // stream's duplicate window still drops re-sends.
          await this.reconcile().catch((err) => this.logger.debug(`could not compare the outbox with the stream: ${(err as Error).message}`));
          this.reconcileNeeded = false;
        }
      }
      for (;;) {
        const started = performance.now();
        // While failing, probe with one event rather than send a page into the void.
        const limit = this.failing ? 1 : PAGE;
        const events = await this.nextEvents(limit);
        if (events.length === 0) break;
        const { delivered, error } = this.mode === 'jetstream' ? await this.publishJetStream(events) : await this.publishCore(events);
        if (delivered.length > 0) await this.markDelivered(events, delivered);
        if (error) throw error;
        if (this.failing) this.recovered();
        if (events.length < limit) break;
        // A backlog (an expiry storm, events kept while NATS was away): pause half as long as
        // the page took, so requests keep a share of the thread. A stop drains at full speed.
        if (this.flushing === 0) await new Promise((r) => setTimeout(r, (performance.now() - started) / 2));
      }
      if (this.failing) this.recovered();
      if (this.db.dialect === 'postgres') this.schedule(this.pollIntervalMs);
    } catch (err) {
      this.failed(err);
    }
  }

  /** The next events to publish, in seq order: from memory where it holds them, else the outbox. */
  private async nextEvents(limit: number): Promise<Outgoing[]> {
    if (this.db.dialect === 'postgres') return (await this.readOutbox(OUTBOX_COLUMNS, limit)).map(rowToOutgoing(this.options.prefix));
    for (;;) {
      if (this.memoryFrom !== undefined && this.deliveredUpTo >= this.memoryFrom - 1) return this.fromMemory(limit);
      // The bound is read inside the transaction: memory then holds every event the read misses.
      const { rows, below } = await this.batcher.run(async (tx) => {
        const below = this.memoryFrom;
        const rows = await tx.query(
          `SELECT ${OUTBOX_COLUMNS} FROM lockmgr_outbox WHERE seq > ?${below === undefined ? '' : ' AND seq < ?'} ORDER BY seq LIMIT ?`,
          below === undefined ? [this.deliveredUpTo, limit] : [this.deliveredUpTo, below, limit],
        );
        return { rows, below };
      });
      if (rows.length > 0) return rows.map(rowToOutgoing(this.options.prefix));
      if (below === undefined) return [];
      // Nothing older than memory is left in the outbox: go on from memory.
      this.deliveredUpTo = Math.max(this.deliveredUpTo, below - 1);
    }
  }

  private fromMemory(limit: number): Outgoing[] {
    while (this.memoryHead < this.memory.length && this.memory[this.memoryHead]!.seq <= this.deliveredUpTo) this.memoryHead++;
    if (this.memoryHead > 4096 && this.memoryHead * 2 > this.memory.length) {
      this.memory = this.memory.slice(this.memoryHead);
      this.memoryHead = 0;
    }
    const daemon = this.batcher.daemonId;
    return this.memory
      .slice(this.memoryHead, this.memoryHead + limit)
      .map((e) =>
        toOutgoing(this.options.prefix, { seq: e.seq, id: e.id, type: e.type, name: e.lock.name, lockJson: e.lockJson, causeJson: e.causeJson, daemon, at: e.at }),
      );
  }

  /**
   * Record what the stream acknowledged. On SQLite, delivery is in seq order: everything up to
   * the end of the acknowledged prefix is delivered, and rows go from the outbox with the next
   * transaction. On PostgreSQL the leader removes the acknowledged rows at once.
   */
  private async markDelivered(round: Outgoing[], delivered: Outgoing[]): Promise<void> {
    if (this.db.dialect === 'postgres') return this.remove(delivered.map((e) => e.seq));
    let prefix = 0;
    while (prefix < round.length && round[prefix] === delivered[prefix]) prefix++;
    if (prefix === 0) return;
    this.deliveredUpTo = Math.max(this.deliveredUpTo, round[prefix - 1]!.seq);
    this.cleanupTimer ??= setTimeout(() => {
      this.cleanupTimer = undefined;
      // Nothing else ran a transaction meanwhile: run one for the removal alone.
      if (this.deliveredUpTo > this.removedUpTo && !this.stopped) void this.batcher.run(async () => undefined).catch(() => undefined);
    }, CLEANUP_DELAY_MS);
  }

  private recovered(): void {
    this.failing = false;
    this.failures = 0;
    this.retryAt = 0;
    this.logger.info('event delivery resumed');
  }

  private failed(err: unknown): void {
    if (err instanceof ChainBroken) {
      // Not a failure: the next round starts with the refused event. Go again at once.
      this.logger.debug(err.message);
      this.schedule(0);
      return;
    }
    if (this.pg && isUnavailableError(err)) this.dropLeadership();
    // Events committed from now on are read from the outbox, after what the stream may already hold.
    this.forget();
    this.failures += 1;
    if (!this.failing) {
      this.failing = true;
      this.logger.warn(`event delivery paused, events wait in the outbox: ${(err as Error).message}`);
    } else {
      this.logger.debug(`event delivery still failing: ${(err as Error).message}`);
    }
    if (this.mode === 'jetstream') {
      this.checkStream = true;
      this.reconcileNeeded = true;
    }
    const base = Math.min(this.retryMaxMs, this.retryMinMs * 2 ** Math.min(this.failures - 1, 20));
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    this.retryAt = Date.now() + delay;
    this.schedule(delay);
  }

  /** JetStream answers and the stream exists; or, the first time only, fall back to core NATS. */
  private async ensureJetStream(): Promise<void> {
    let jsm: JetStreamManager;
    try {
      jsm = await this.nc.jetstreamManager({ timeout: this.publishTimeoutMs });
      await this.ensureStream(jsm);
    } catch (err) {
      if (isJetStreamAbsent(err) && !this.hadJetStream) {
        this.mode = 'core';
        this.checkStream = false;
        if (!this.warnedCore) {
          this.warnedCore = true;
          this.logger.warn(
            'JetStream is not enabled on the NATS server: events go out on core NATS only and are not kept; start nats-server with -js to keep an audit trail',
          );
        }
        return;
      }
      throw err;
    }
    this.jsm = jsm;
    this.checkStream = false;
    if (!this.hadJetStream) {
      this.hadJetStream = true;
      this.logger.info('events delivered to JetStream', { stream: this.options.stream, subjects: `${this.options.prefix}.events.>` });
    }
  }

  private async ensureStream(jsm: JetStreamManager): Promise<void> {
    const o = this.options;
    const subject = `${o.prefix}.events.>`;
    let info: StreamInfo | undefined;
    try {
      info = await jsm.streams.info(o.stream);
    } catch (err) {
      if (!isStreamNotFound(err)) throw err;
    }
    if (!info) {
      let dupMs = o.duplicateWindowSeconds * 1000;
      if (o.maxAgeSeconds > 0 && dupMs > o.maxAgeSeconds * 1000) {
        // JetStream refuses a duplicate window longer than the stream keeps messages.
        dupMs = o.maxAgeSeconds * 1000;
        this.logger.warn(`eventsDuplicateWindow is longer than eventsMaxAge: using ${o.maxAgeSeconds}s`);
      }
      const config: Partial<StreamConfig> = {
        name: o.stream,
        subjects: [subject],
        retention: { limits: RetentionPolicy.Limits, interest: RetentionPolicy.Interest, workqueue: RetentionPolicy.Workqueue }[o.retention],
        storage: StorageType.File,
        num_replicas: o.replicas,
        max_age: nanos(o.maxAgeSeconds * 1000),
        duplicate_window: nanos(dupMs),
      };
      await jsm.streams.add(config);
      this.logger.info('created events stream', { stream: o.stream, subjects: subject });
      return;
    }
    const covered = (info.config.subjects ?? []).some((s) => s === '>' || s === subject || (s.endsWith('.>') && subject.startsWith(s.slice(0, -1))));
    if (!covered) {
      // A stream of that name exists for other subjects (another prefix): add ours to it.
      await jsm.streams.update(o.stream, { ...info.config, subjects: [...(info.config.subjects ?? []), subject] });
      this.logger.warn(`events stream ${o.stream} did not take ${subject}: added it to the stream's subjects`);
    }
  }

  /**
   * Remove from the outbox the events the stream already holds: those whose acknowledgement was
   * lost (server killed, connection cut, daemon stopped before removing them). They are among the
   * newest messages of our subjects, since a relay has at most one page in flight.
   */
  private async reconcile(): Promise<void> {
    // Bounded: a stream that does not answer must not hold up delivery (re-sends are still
    // dropped by the duplicate window).
    let timer: NodeJS.Timeout | undefined;
    const ids = await Promise.race([
      this.storedIds(),
      new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error('the stream did not answer in time')), 2 * this.publishTimeoutMs))),
    ]).finally(() => clearTimeout(timer));
    if (ids.size === 0) return;
    const rows = await this.readOutbox('seq, event_id', RECONCILE_TAIL);
    const stored = rows.filter((r) => ids.has(String(r.event_id))).map((r) => Number(r.seq));
    if (stored.length > 0) {
      await this.remove(stored);
      this.logger.info(`${stored.length} events were already in the stream: removed them from the outbox`);
    }
  }

  /** The event ids among the newest messages of our subjects in the stream. */
  private async storedIds(): Promise<Set<string>> {
    const ids = new Set<string>();
    const subject = `${this.options.prefix}.events.>`;
    const info = await this.jsm!.streams.info(this.options.stream);
    if (info.state.messages === 0) return ids;
    const start = Math.max(info.state.first_seq, info.state.last_seq - RECONCILE_TAIL + 1);
    // The newest message of ours ends the read (the per-message `pending` count is not reliable
    // with wildcard filters on servers before 2.10).
    let last: number;
    try {
      last = (await this.jsm!.streams.getMessage(this.options.stream, { last_by_subj: subject })).seq;
    } catch (err) {
      if (/no message found/i.test((err as Error).message)) return ids;
      throw err;
    }
    if (last < start) return ids;
    const consumer = await this.nc.jetstream().consumers.get(this.options.stream, { filterSubjects: subject, opt_start_seq: start, headers_only: true });
    const messages = await consumer.consume({ max_messages: 500 });
    const guard = setTimeout(() => messages.stop(), this.publishTimeoutMs);
    try {
      for await (const m of messages) {
        const id = m.headers?.get('Nats-Msg-Id');
        if (id) ids.add(id);
        if (m.seq >= last) break;
      }
    } finally {
      clearTimeout(guard);
      messages.stop();
    }
    void consumer.delete().catch(() => undefined);
    return ids;
  }

  /** On PostgreSQL, true if this daemon relays (holds the advisory lock), trying to take it when due. */
  private async lead(): Promise<boolean> {
    if (this.db.dialect !== 'postgres') return true;
    if (this.leading && this.pg) return true;
    if (Date.now() - this.lastLeadAttempt < this.standbyRetryMs) return false;
    this.lastLeadAttempt = Date.now();
    if (!this.pg) {
      const client = new PgClient({ connectionString: this.db.options.url, connectionTimeoutMillis: 5000, keepAlive: true });
      client.on('error', () => {
        if (this.pg === client) this.dropLeadership();
      });
      client.on('end', () => {
        if (this.pg === client) this.dropLeadership();
      });
      this.pg = client;
      try {
        await client.connect();
      } catch (err) {
        this.dropLeadership();
        throw err;
      }
    }
    const res = await this.pg.query<{ got: boolean }>('SELECT pg_try_advisory_lock($1) AS got', [RELAY_LOCK_KEY]);
    if (res.rows[0]?.got !== true) return false;
    this.leading = true;
    this.reconcileNeeded = true;
    this.logger.info('this daemon relays the events of the database');
    return true;
  }

  private dropLeadership(): void {
    const pg = this.pg;
    this.pg = undefined;
    if (this.leading) this.logger.warn('lost the relay connection to PostgreSQL: another daemon may relay now');
    this.leading = false;
    this.lastLeadAttempt = 0;
    pg?.end().catch(() => undefined);
  }

  private leaderConnection(): PgClient {
    if (!this.pg || !this.leading) throw new Error('lost the relay connection to PostgreSQL');
    return this.pg;
  }

  /** The oldest undelivered rows of the outbox. */
  private async readOutbox(columns: string, limit: number): Promise<Row[]> {
    if (this.db.dialect === 'sqlite') {
      return this.batcher.run((tx) => tx.query(`SELECT ${columns} FROM lockmgr_outbox WHERE seq > ? ORDER BY seq LIMIT ?`, [this.deliveredUpTo, limit]));
    }
    const res = await this.leaderConnection().query(`SELECT ${columns} FROM lockmgr_outbox ORDER BY seq LIMIT $1`, [limit]);
    return res.rows as Row[];
  }

  private async remove(seqs: number[]): Promise<void> {
    if (this.db.dialect === 'sqlite') {
      const sql = `DELETE FROM lockmgr_outbox WHERE seq IN (${seqs.map(() => '?').join(', ')})`;
      await this.batcher.run((tx) => tx.query(sql, seqs));
    } else {
      await this.leaderConnection().query('DELETE FROM lockmgr_outbox WHERE seq = ANY($1::bigint[])', [seqs]);
    }
  }

  /** Publish in order, pipelined; returns the events the stream acknowledged and the first error. */
  private async publishJetStream(events: Outgoing[]): Promise<{ delivered: Outgoing[]; error?: unknown }> {
    if (!this.connected) return { delivered: [], error: new Error('not connected to NATS') };
    const stream = this.options.stream;
    const results = await this.acks.round(events.length, this.publishTimeoutMs, (i, reply) => {
      const e = events[i]!;
      const h = this.headersFor(e);
      h.set('Nats-Msg-Id', e.id);
      h.set('Nats-Expected-Stream', stream);
      // The first event of a round has every earlier one delivered; each later one is stored
      // only right after its predecessor, so the stream keeps the outbox's order.
      if (i > 0) h.set('Nats-Expected-Last-Msg-Id', events[i - 1]!.id);
      this.nc.publish(e.subject, this.encoder.encode(e.payload), { reply, headers: h });
    });
    const delivered: Outgoing[] = [];
    let error: unknown;
    let chainBreak: unknown;
    results.forEach((r, i) => {
      if (r === null) delivered.push(events[i]!);
      else if (r && isWrongLastMsgId(r)) chainBreak ??= r;
    });
    for (let i = 0; i < events.length && !error; i++) {
      const r = results[i];
      if (r === undefined) error = new Error(`JetStream did not acknowledge every event within ${this.publishTimeoutMs} ms, or the connection was lost`);
      else if (r && !isWrongLastMsgId(r)) error = r;
    }
    if (!error && chainBreak) {
      error = new ChainBroken(`another publisher wrote to stream ${stream} between two events: ${(chainBreak as Error).message}`);
    }
    return { delivered, error };
  }

  private async publishCore(events: Outgoing[]): Promise<{ delivered: Outgoing[]; error?: unknown }> {
    for (const e of events) {
      const h = this.headersFor(e);
      h.set('Nats-Msg-Id', e.id);
      this.nc.publish(e.subject, this.encoder.encode(e.payload), { headers: h });
    }
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.nc.flush(),
        new Promise((_, reject) => (timer = setTimeout(() => reject(new Error('NATS did not confirm the events in time')), this.publishTimeoutMs))),
      ]);
    } catch (error) {
      return { delivered: [], error };
    } finally {
      clearTimeout(timer);
    }
    return { delivered: events };
  }

  private headersFor(e: Outgoing) {
    const h = headers();
    h.set(DAEMON_HEADER, e.daemon);
    return h;
  }
}

/** An outbox row as an event ready to publish. */
function rowToOutgoing(prefix: string): (row: Row) => Outgoing {
  return (row) => toOutgoing(prefix, outboxRowToStored(row));
}
