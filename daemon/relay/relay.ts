/**
 * The event relay's loop: delivers the outbox to NATS, one round at a time, through a feed (what
 * to publish next) and a publisher (where to). A row leaves the outbox only once the stream
 * acknowledged it.
 *
 * Modes (`mode`):
 *
 *   starting    created; `start()` finds JetStream and makes sure the stream exists.
 *   standby     another daemon holds the relay lease (daemons sharing one database): this one
 *               publishes the events it committed itself, and every `standbyRetryMs` tries to
 *               take the lease.
 *   relaying    this daemon holds the lease. A round runs when kicked: after a commit (once its
 *               replies are out), or — when other daemons write to the outbox too — every
 *               `pollIntervalMs`, to deliver what their writers left behind. A round publishes
 *               pages until the feed is empty, pausing half as long as each full page took so a
 *               backlog leaves requests a share of the thread.
 *   backoff     the last round failed: events wait in the outbox; the next round comes after a
 *               wait (`retryMinMs` doubling to `retryMaxMs`) and sends one event, then pages again
 *               once one went through ("event delivery resumed").
 *   offline     NATS is disconnected: no round until it reconnects; then at once, as `backoff`.
 *   stopped     `stop()` was called.
 *
 * Before a JetStream publish after a start, a failure, a reconnect or taking the lease
 * (`unsettled`), the round checks the stream and drops from the outbox the events the stream
 * already holds (acknowledgements lost when a server died), so a re-send does not depend on the
 * duplicate window alone. Without JetStream on the server when the daemon first looks (or with
 * eventsJetstream=off), events go out on core NATS, at most once; once it has delivered to
 * JetStream the daemon keeps to it, and events wait in the outbox while JetStream is away.
 */
import { backoffDelay } from '../backoff';
import { systemClock, sleep, type Cancel, type Clock } from '../clock';
import type { Logger } from '../logger';
import type { CommittedEvent, Store } from '../store/store';
import { MemoryFeed, SharedFeed, type OutboxFeed } from './outbox-feed';
import { ChainBroken, EventsStreamProblem, JetStreamAbsent, type Publisher, type StreamPublisher } from './publisher';

export type RelayMode = 'starting' | 'standby' | 'relaying' | 'backoff' | 'offline' | 'stopped';

export interface RelayOptions {
  /** The stream and subjects, for the log. */
  stream: string;
  subjects: string;
  /** This daemon's id, as its events carry it. */
  daemonId?: string;
  /** ms an event may wait in a shared outbox before the relaying daemon delivers it in its writer's place. */
  staleMs?: number;
  /** ms between looks at an outbox event held back for an earlier event of its lock (shared outbox). */
  heldBackRetryMs?: number;
  /** ms between looks at the outbox by the relaying daemon when others write to it too. */
  pollIntervalMs?: number;
  /** ms between attempts of a standing-by daemon to take the lease. */
  standbyRetryMs?: number;
  /** First wait after a failed round; it doubles up to `retryMaxMs`. */
  retryMinMs?: number;
  retryMaxMs?: number;
  /** Bound on comparing the outbox with the stream (ms). */
  reconcileTimeoutMs?: number;
}

export interface RelayLinks {
  /** The JetStream publisher, or null when events go to core NATS only (eventsJetstream=off). */
  stream: StreamPublisher | null;
  core: Publisher;
}

/** Most events published in one round of the loop (one read, one wait for acknowledgements). */
const PAGE = 250;
/** How many of the newest stream messages are compared with the outbox after a failure. */
const RECONCILE_TAIL = 2 * PAGE;

export class EventRelay {
  private mode: RelayMode = 'starting';
  /** While offline: the mode to go back to on reconnect. */
  private resumeAs: 'relaying' | 'backoff' = 'relaying';
  private publisher: Publisher;
  /** Check the stream and reconcile the outbox with it before the next JetStream publish. */
  private unsettled = true;
  /** Delivered to JetStream at least once in this process: from then on, never fall back to core. */
  private hadJetStream = false;
  private warnedCore = false;
  private readonly feed: OutboxFeed;
  private round?: Promise<void>;
  /** Kicked while a round ran: run another after it. */
  private again = false;
  private kickQueued = false;
  private cancelTimer?: Cancel;
  /** flush() calls waiting: deliver without pausing between pages. */
  private flushing = 0;
  private failures = 0;
  private retryAt = 0;
  private lastLeaseAttempt = -Infinity;
  /** This daemon held the relay lease at its last look. */
  private leading = false;
  private readonly pollIntervalMs: number;
  private readonly standbyRetryMs: number;
  private readonly retryMinMs: number;
  private readonly retryMaxMs: number;
  private readonly reconcileTimeoutMs: number;
  private readonly heldBackRetryMs: number;

  constructor(
    private readonly store: Store,
    private readonly links: RelayLinks,
    private readonly options: RelayOptions,
    private readonly logger: Logger,
    private readonly clock: Clock = systemClock,
  ) {
    this.publisher = links.stream ?? links.core;
    this.pollIntervalMs = options.pollIntervalMs ?? 1000;
    this.feed = store.soleWriter
      ? new MemoryFeed(store.relayLease())
      : new SharedFeed(store, store.relayLease(), clock, {
          daemonId: options.daemonId ?? '',
          staleMs: options.staleMs ?? 2000,
          recoverIntervalMs: this.pollIntervalMs,
        });
    this.heldBackRetryMs = options.heldBackRetryMs ?? 25;
    this.standbyRetryMs = options.standbyRetryMs ?? 2000;
    this.retryMinMs = options.retryMinMs ?? 250;
    this.retryMaxMs = options.retryMaxMs ?? 10_000;
    this.reconcileTimeoutMs = options.reconcileTimeoutMs ?? 10_000;
  }

  get deliveryMode(): 'jetstream' | 'core' {
    return this.publisher === this.links.core ? 'core' : 'jetstream';
  }

  get state(): RelayMode {
    return this.mode;
  }

  /**
   * Find JetStream and make sure the events stream exists, then deliver what is waiting. Throws
   * EventsStreamProblem if the stream cannot be this prefix's (waiting would not change that).
   */
  async start(): Promise<void> {
    if (!this.links.stream) {
      this.warnedCore = true;
      this.logger.warn('events go out on core NATS only (eventsJetstream=off): subscribers that are away miss them');
    } else {
      try {
        await this.prepareStream();
      } catch (err) {
        // A stream that cannot be this prefix's stands in the way of the start: the operator must act.
        if (err instanceof EventsStreamProblem) throw err;
        this.logger.warn(`JetStream did not answer (${(err as Error).message}): events wait in the outbox until it does`);
      }
    }
    if (this.mode === 'starting') this.mode = 'relaying';
    this.kick();
  }

  /** This daemon committed `events`: deliver them soon. */
  committed(events: readonly CommittedEvent[]): void {
    this.feed.committed(events, this.mode === 'relaying');
    // After the replies: they wait on the same commit, and the round can wait for them.
    if (!this.kickQueued) {
      this.kickQueued = true;
      setImmediate(() => {
        this.kickQueued = false;
        this.kick();
      });
    }
  }

  /**
   * A daemon of an earlier version committed events (`P.relay`; daemons of this version publish
   * their own): look at the outbox if this daemon relays.
   */
  nudged(): void {
    if (this.store.relayLease().held) this.kick();
  }

  /** NATS disconnected: acknowledgements of what was sent on the lost connection cannot come. */
  disconnected(): void {
    if (this.mode === 'stopped' || this.mode === 'offline') return;
    this.resumeAs = this.mode === 'backoff' ? 'backoff' : 'relaying';
    this.mode = 'offline';
    // End the round in flight: its unacknowledged events are sent again after the reconnect (the
    // stream drops those it already holds).
    this.links.stream?.abandon();
    this.feed.forget();
  }

  /** NATS is back: go again at once. The server may have come back without the stream. */
  reconnected(): void {
    if (this.mode !== 'offline') return;
    this.mode = this.resumeAs;
    this.failures = 0;
    this.retryAt = 0;
    if (this.links.stream) {
      this.publisher = this.links.stream;
      this.unsettled = true;
    }
    this.kick();
  }

  /** Look at the outbox now. */
  kick(): void {
    if (this.mode === 'stopped') return;
    if (this.round) {
      this.again = true;
      return;
    }
    this.round = this.deliver().finally(() => {
      this.round = undefined;
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
    const deadline = this.clock.now() + timeoutMs;
    this.flushing += 1;
    try {
      for (;;) {
        this.retryAt = 0; // try now, whatever the backoff says
        this.kick();
        await this.round;
        if (await this.allDelivered()) return true;
        if (this.clock.now() >= deadline) return false;
        await sleep(this.clock, this.feed.waiting() ? this.heldBackRetryMs : 100);
      }
    } finally {
      this.flushing -= 1;
    }
  }

  /** This daemon's events are delivered (where it writes alone: the whole outbox). */
  private async allDelivered(): Promise<boolean> {
    const left = this.feed.undelivered();
    if (left !== null) return left === 0;
    return (await this.store.countOutbox()) === 0;
  }

  async stop(): Promise<void> {
    this.mode = 'stopped';
    this.cancelTimer?.();
    await this.round;
    this.links.stream?.close();
    // Ending the lease lets a standing-by daemon take over.
    await this.store.relayLease().release();
  }

  /** Look at the outbox again in `ms` (replacing any earlier plan). */
  private schedule(ms: number): void {
    this.cancelTimer?.();
    if (this.mode === 'stopped') return;
    this.cancelTimer = this.clock.schedule(() => {
      this.cancelTimer = undefined;
      this.kick();
    }, ms);
  }

  /** One round: take the lease if due, settle with the stream, publish pages until none is left. */
  private async deliver(): Promise<void> {
    if (this.mode === 'offline' || this.mode === 'stopped' || this.mode === 'starting') return; // a reconnect, or start(), kicks us
    if (this.mode === 'backoff' && this.clock.now() < this.retryAt) return; // the retry timer is set
    try {
      const leading = await this.lead();
      if (!leading) {
        if (this.mode === 'relaying') this.mode = 'standby';
        // Where the outbox is shared, a daemon on standby still delivers its own events.
        if (this.store.soleWriter) return this.schedule(this.standbyRetryMs);
      } else if (this.mode === 'standby') this.mode = 'relaying';
      if (this.unsettled && this.links.stream) await this.settle(this.links.stream);
      for (;;) {
        const started = performance.now();
        // While failing, probe with one event rather than send a page into the void.
        const limit = this.mode === 'backoff' ? 1 : PAGE;
        const events = await this.feed.next(limit);
        if (events.length === 0) break;
        if (this.halted()) return; // the reconnect starts a round of its own
        const { delivered, error } = await this.publisher.publish(events);
        if (delivered.length > 0) await this.feed.delivered(events, delivered);
        if (error) throw error;
        this.recovered();
        // A short round ends the loop, unless events were held back behind ones this round sent
        // (a lock's next event goes once its previous one is acknowledged).
        if (events.length < limit && !this.feed.waiting()) break;
        if (this.flushing === 0) await sleep(this.clock, (performance.now() - started) / 2);
        if (this.halted()) return;
      }
      this.recovered();
      if (!this.store.soleWriter) {
        const next = leading ? this.pollIntervalMs : this.standbyRetryMs;
        this.schedule(this.feed.waiting() ? Math.min(next, this.heldBackRetryMs) : next);
      }
    } catch (err) {
      this.failed(err);
    }
  }

  /** A stop or a disconnect ends a round between its pages. */
  private halted(): boolean {
    return this.mode === 'stopped' || this.mode === 'offline';
  }

  /** True if this daemon relays, trying to take the lease when due. */
  private async lead(): Promise<boolean> {
    if (this.store.soleWriter) return this.tryLead();
    // Its own events do not wait for the lease: a database that refuses it now is tried again later.
    return this.tryLead().catch((err: unknown) => {
      this.logger.debug(`could not take the relay lease: ${(err as Error).message}`);
      return false;
    });
  }

  private async tryLead(): Promise<boolean> {
    const lease = this.store.relayLease();
    if (!lease.held) {
      if (this.leading) {
        this.leading = false;
        this.lastLeaseAttempt = -Infinity;
        this.logger.warn('lost the relay connection to the database: another daemon may relay now');
      }
      if (this.clock.now() - this.lastLeaseAttempt < this.standbyRetryMs) return false;
      this.lastLeaseAttempt = this.clock.now();
      if (!(await lease.acquire())) return false;
    }
    if (!this.leading) {
      this.leading = true;
      this.unsettled = true;
      if (!this.store.soleWriter) this.logger.info('this daemon relays the events of the database');
    }
    return true;
  }

  /** The stream exists, and the outbox holds nothing the stream already has. */
  private async settle(stream: StreamPublisher): Promise<void> {
    if (this.publisher === stream) await this.prepareStream();
    if (this.publisher === stream) {
      // Best effort (a work-queue stream, for one, may refuse the reading consumer): the stream's
      // duplicate window still drops re-sends.
      await this.reconcile(stream).catch((err: unknown) =>
        this.logger.debug(`could not compare the outbox with the stream: ${(err as Error).message}`),
      );
    }
    this.unsettled = false;
  }

  /** JetStream answers and the stream exists; or, the first time only, fall back to core NATS. */
  private async prepareStream(): Promise<void> {
    const stream = this.links.stream!;
    try {
      await stream.prepare();
    } catch (err) {
      if (!(err instanceof JetStreamAbsent) || this.hadJetStream) throw err;
      this.publisher = this.links.core;
      if (!this.warnedCore) {
        this.warnedCore = true;
        this.logger.warn(
          'JetStream is not enabled on the NATS server: events go out on core NATS only and are not kept; start nats-server with -js to keep an audit trail',
        );
      }
      return;
    }
    this.publisher = stream;
    if (!this.hadJetStream) {
      this.hadJetStream = true;
      this.logger.info('events delivered to JetStream', { stream: this.options.stream, subjects: this.options.subjects });
    }
  }

  /**
   * Remove from the outbox the events the stream already holds: those whose acknowledgement was
   * lost (server killed, connection cut, daemon stopped before removing them). They are among the
   * newest messages of our subjects, since a relay has at most one page in flight.
   */
  private async reconcile(stream: StreamPublisher): Promise<void> {
    // Bounded: a stream that does not answer must not hold up delivery.
    let cancel: Cancel | undefined;
    const ids = await Promise.race([
      stream.storedIds(RECONCILE_TAIL),
      new Promise<never>(
        (_, reject) =>
          (cancel = this.clock.schedule(() => reject(new Error('the stream did not answer in time')), this.reconcileTimeoutMs)),
      ),
    ]).finally(() => cancel?.());
    if (ids.size === 0) return;
    const rows = await this.feed.oldest(RECONCILE_TAIL);
    const stored = rows.filter((r) => ids.has(r.id)).map((r) => r.seq);
    if (stored.length > 0) {
      await this.feed.remove(stored);
      this.logger.info(`${stored.length} events were already in the stream: removed them from the outbox`);
    }
  }

  private recovered(): void {
    if (this.mode !== 'backoff') return;
    this.mode = 'relaying';
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
    // Events committed from now on are read from the outbox, after what the stream may already hold.
    this.feed.forget();
    this.failures += 1;
    const wasFailing = this.mode === 'backoff' || (this.mode === 'offline' && this.resumeAs === 'backoff');
    if (wasFailing) this.logger.debug(`event delivery still failing: ${(err as Error).message}`);
    else this.logger.warn(`event delivery paused, events wait in the outbox: ${(err as Error).message}`);
    if (this.mode === 'offline') this.resumeAs = 'backoff';
    else if (this.mode !== 'stopped') this.mode = 'backoff';
    if (this.publisher !== this.links.core) this.unsettled = true;
    const delay = backoffDelay(this.failures, { minMs: this.retryMinMs, maxMs: this.retryMaxMs, jitter: 0.2 });
    this.retryAt = this.clock.now() + delay;
    this.schedule(delay);
  }
}
