/**
 * Publishers put outbox events on NATS: into the JetStream events stream (the normal case), or on
 * core NATS, at most once, when the server has no JetStream.
 *
 * JetStream: events leave in outbox order, pipelined, each with its id as Nats-Msg-Id; the stream
 * drops re-sends (de-duplication by id). Where one daemon publishes everything (`chained`), each
 * event after the first of a round also carries the id of the event before it as the expected last
 * message id: the stream refuses an event whose predecessor is missing, so an event is stored only
 * after every earlier one, and a publish that failed or timed out can never be overtaken by a
 * later one. Where several daemons publish, a round holds one event per lock instead (the feed
 * sees to it), which keeps each lock's order.
 */
import {
  MsgHdrsImpl,
  nanos,
  RetentionPolicy,
  StorageType,
  type JetStreamManager,
  type MsgHdrs,
  type NatsConnection,
  type StreamConfig,
  type StreamInfo,
} from 'nats';
import {
  allEventsSubject,
  DAEMON_HEADER,
  defaultEventsStream,
  eventSubject,
  LEGACY_EVENTS_STREAM,
  streamFit,
  streamTakingEvents,
} from '../../shared/events';
import { bodyBytes } from '../../shared/protocol';
import { micros, publishChannel } from '../diagnostics';
import { iso } from '../lock-records';
import type { OutboxEvent } from '../store/store';
import { AckCollector, isJetStreamAbsent, isStreamNotFound, isWrongLastMsgId } from './ack-collector';

export interface PublishResult {
  /** The events of the round now in the stream (or handed to NATS, on core). */
  delivered: OutboxEvent[];
  /** The first failure of the round, if any. */
  error?: unknown;
}

export interface Publisher {
  publish(events: readonly OutboxEvent[]): Promise<PublishResult>;
}

/** A publisher into a stream: it can be checked, and it knows what the stream already holds. */
export interface StreamPublisher extends Publisher {
  /** JetStream answers and the stream exists (created if missing). Throws JetStreamAbsent if the server has no JetStream. */
  prepare(): Promise<void>;
  /** The event ids among the newest `tail` messages of our subjects in the stream. */
  storedIds(tail: number): Promise<Set<string>>;
  /** The connection dropped: stop waiting for the acknowledgements of the round in flight. */
  abandon(): void;
  close(): void;
}

/** The server has no JetStream (or it is not enabled for this account). */
export class JetStreamAbsent extends Error {}

/** The stream refused an event because another publisher wrote between two of ours: go again. */
export class ChainBroken extends Error {}

/**
 * The events stream cannot serve this prefix as configured: it takes other subjects, or JetStream
 * refused to create it. Waiting does not help; the configuration or the stream must change.
 */
export class EventsStreamProblem extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'EventsStreamProblem';
  }
}

export interface StreamOptions {
  prefix: string;
  stream: string;
  /**
   * The stream was named in the configuration (eventsStream), not the prefix's default: it may
   * then be shared with other subjects, which the operator set up.
   */
  streamConfigured: boolean;
  retention: 'limits' | 'interest' | 'workqueue';
  replicas: number;
  /** Limits of a stream the daemon creates (0: none); an existing stream keeps its own. */
  maxAgeSeconds: number;
  maxBytes: number;
  duplicateWindowSeconds: number;
  /** ms to wait for JetStream's answers (acknowledgements of a round, stream requests). */
  timeoutMs: number;
  /**
   * Each event of a round is stored only right after the one before it (the only publisher, in seq
   * order). Off where several daemons publish: a round then holds one event per lock.
   */
  chained: boolean;
}

interface Notes {
  info(message: string, meta?: object): void;
  warn(message: string): void;
}

/** The event's JSON as subscribers receive it, built from the outbox's serialised parts. */
export function eventPayload(e: OutboxEvent): string {
  return (
    `{"id":${JSON.stringify(e.id)},"type":${JSON.stringify(e.type)},"seq":${e.seq},"lock":${e.lockJson},` +
    `"cause":${e.causeJson},"daemon":${JSON.stringify(e.daemon)},"at":"${iso(e.at)}"}`
  );
}

/**
 * An event's headers, with what the stream must hold for JetStream to store it (`expected`). The
 * keys are canonical and the values the daemon's own (ids, a host name, a stream name: no CR or
 * LF), so they go straight into the headers' map: nats.js's `set` checks and canonicalises each
 * key and searches the keys twice, 2–3 µs for an event's four headers against 0.8 µs this way.
 */
function eventHeaders(e: OutboxEvent, expected?: { stream: string; lastId?: string }): MsgHdrs {
  const h = new MsgHdrsImpl();
  h.headers.set(DAEMON_HEADER, [e.daemon]);
  h.headers.set('Nats-Msg-Id', [e.id]);
  if (expected) h.headers.set('Nats-Expected-Stream', [expected.stream]);
  if (expected?.lastId !== undefined) h.headers.set('Nats-Expected-Last-Msg-Id', [expected.lastId]);
  return h;
}

/** Reports a round on the diagnostics channel, when someone listens. */
async function timed(events: readonly OutboxEvent[], publish: () => Promise<PublishResult>): Promise<PublishResult> {
  if (!publishChannel.hasSubscribers) return publish();
  const started = micros();
  try {
    return await publish();
  } finally {
    publishChannel.publish({ events: events.length, us: micros() - started });
  }
}

export class JetStreamPublisher implements StreamPublisher {
  private jsm?: JetStreamManager;
  private readonly acks: AckCollector;
  /** What the log was told of an existing stream (once per process, not at every reconnect). */
  private described = false;

  constructor(
    private readonly nc: NatsConnection,
    private readonly options: StreamOptions,
    private readonly notes: Notes,
  ) {
    this.acks = new AckCollector(nc);
  }

  async prepare(): Promise<void> {
    try {
      const jsm = await this.nc.jetstreamManager({ timeout: this.options.timeoutMs });
      await this.ensureStream(jsm);
      this.jsm = jsm;
    } catch (err) {
      if (isJetStreamAbsent(err)) throw new JetStreamAbsent((err as Error).message);
      throw err;
    }
  }

  publish(events: readonly OutboxEvent[]): Promise<PublishResult> {
    return timed(events, () => this.publishRound(events));
  }

  private async publishRound(events: readonly OutboxEvent[]): Promise<PublishResult> {
    const { stream, prefix, timeoutMs, chained } = this.options;
    const results = await this.acks.round(events.length, timeoutMs, (i, reply) => {
      const e = events[i]!;
      // The first event of a round has every earlier one delivered; each later one is stored
      // only right after its predecessor, so the stream keeps the outbox's order.
      const h = eventHeaders(e, { stream, lastId: i > 0 && chained ? events[i - 1]!.id : undefined });
      this.nc.publish(eventSubject(prefix, e.type, e.name), bodyBytes(eventPayload(e)), { reply, headers: h });
    });
    const delivered: OutboxEvent[] = [];
    let error: unknown;
    let chainBreak: unknown;
    results.forEach((r, i) => {
      if (r === null) delivered.push(events[i]!);
      else if (r && isWrongLastMsgId(r)) chainBreak ??= r;
    });
    for (let i = 0; i < events.length && !error; i++) {
      const r = results[i];
      if (r === undefined)
        error = new Error(`JetStream did not acknowledge every event within ${timeoutMs} ms, or the connection was lost`);
      else if (r && !isWrongLastMsgId(r)) error = r;
    }
    if (!error && chainBreak) {
      error = new ChainBroken(`another publisher wrote to stream ${stream} between two events: ${(chainBreak as Error).message}`);
    }
    return { delivered, error };
  }

  abandon(): void {
    this.acks.abandon();
  }

  close(): void {
    this.acks.close();
  }

  private async ensureStream(jsm: JetStreamManager): Promise<void> {
    let info: StreamInfo | undefined;
    try {
      info = await jsm.streams.info(this.options.stream);
    } catch (err) {
      if (!isStreamNotFound(err)) throw err;
    }
    if (info) this.checkStream(info);
    else await this.createStream(jsm);
  }

  private async createStream(jsm: JetStreamManager): Promise<void> {
    const o = this.options;
    const subject = allEventsSubject(o.prefix);
    let dupMs = o.duplicateWindowSeconds * 1000;
    if (o.maxAgeSeconds > 0 && dupMs > o.maxAgeSeconds * 1000) {
      // JetStream refuses a duplicate window longer than the stream keeps messages.
      dupMs = o.maxAgeSeconds * 1000;
      this.notes.warn(`eventsDuplicateWindow is longer than eventsMaxAge: using ${o.maxAgeSeconds}s`);
    }
    const config: Partial<StreamConfig> = {
      name: o.stream,
      subjects: [subject],
      retention: { limits: RetentionPolicy.Limits, interest: RetentionPolicy.Interest, workqueue: RetentionPolicy.Workqueue }[o.retention],
      storage: StorageType.File,
      num_replicas: o.replicas,
      max_age: nanos(o.maxAgeSeconds * 1000),
      max_bytes: o.maxBytes > 0 ? o.maxBytes : -1,
      duplicate_window: nanos(dupMs),
    };
    try {
      await jsm.streams.add(config);
    } catch (err) {
      // JetStream answered and refused (no timeout, no missing JetStream): trying again is no use.
      if (!(err as { api_error?: unknown }).api_error) throw err;
      throw new EventsStreamProblem(await this.refusal(jsm, err as Error), { cause: err });
    }
    this.notes.info('created events stream', {
      stream: o.stream,
      subjects: subject,
      maxAgeSeconds: o.maxAgeSeconds,
      maxBytes: o.maxBytes,
    });
  }

  /** Why JetStream would not create the stream, and what to do about it. */
  private async refusal(jsm: JetStreamManager, err: Error): Promise<string> {
    const o = this.options;
    const subject = allEventsSubject(o.prefix);
    const head = `cannot create events stream ${o.stream} for ${subject}: ${err.message}`;
    if ((err as { api_error?: { err_code?: number } }).api_error?.err_code === 10065) {
      const other = await streamTakingEvents(jsm, o.prefix);
      if (other) {
        const legacy = other === LEGACY_EVENTS_STREAM ? ', the stream every prefix shared by default before each had its own,' : '';
        return (
          `${head}: stream ${other}${legacy} already takes ${subject}; ` +
          `set eventsStream=${other} to keep delivering there, or take ${subject} out of ${other}'s subjects`
        );
      }
    }
    if (/insufficient storage/i.test(err.message)) {
      return `${head}: JetStream reserves a stream's max bytes (eventsMaxBytes, ${o.maxBytes}) from its storage; lower eventsMaxBytes or give JetStream more (max_file_store)`;
    }
    return head;
  }

  /** An existing stream must take this prefix's events; a default-named one nothing else. */
  private checkStream(info: StreamInfo): void {
    const o = this.options;
    const subject = allEventsSubject(o.prefix);
    const subjects = info.config.subjects ?? [];
    const fit = streamFit(o.prefix, subjects);
    const listed = subjects.join(', ') || 'no subjects';
    if (!fit.takesAll) {
      // Never add our subjects to someone else's stream: prefixes would mix without anyone asking.
      throw new EventsStreamProblem(
        `events stream ${o.stream} takes ${listed}, not ${subject} (the events of prefix ${o.prefix}): ` +
          (o.streamConfigured
            ? `give this prefix a stream of its own (leave eventsStream unset for ${defaultEventsStream(o.prefix)}), or, to share ${o.stream}, add ${subject} to its subjects (nats stream edit ${o.stream})`
            : `${o.stream} is this prefix's default name, but the stream is another prefix's (or someone else's); set eventsStream to a stream name of this prefix's own`),
      );
    }
    if (fit.others.length > 0 && !o.streamConfigured) {
      throw new EventsStreamProblem(
        `events stream ${o.stream}, the default stream of prefix ${o.prefix}, also takes ${fit.others.join(', ')}: ` +
          `a default stream holds one prefix's events alone; to share a stream, name it with eventsStream`,
      );
    }
    if (this.described) return;
    this.described = true;
    if (fit.others.length > 0) {
      this.notes.info('the events stream is shared (eventsStream names it): it also takes other subjects', {
        stream: o.stream,
        others: fit.others.join(', '),
      });
    }
    // An existing stream's limits are the operator's: told, never rewritten.
    const maxAgeSeconds = Number(info.config.max_age) / 1e9;
    const maxBytes = info.config.max_bytes > 0 ? info.config.max_bytes : 0;
    if (maxAgeSeconds !== o.maxAgeSeconds || maxBytes !== o.maxBytes) {
      this.notes.warn(
        `events stream ${o.stream} exists with max age ${limitText(maxAgeSeconds, 's')} and max bytes ${limitText(maxBytes)}, ` +
          `not the configured eventsMaxAge ${limitText(o.maxAgeSeconds, 's')} and eventsMaxBytes ${limitText(o.maxBytes)}: ` +
          `the limits of an existing stream are left as they are (change them with nats stream edit ${o.stream})`,
      );
    }
  }

  async storedIds(tail: number): Promise<Set<string>> {
    const ids = new Set<string>();
    const { stream, prefix, timeoutMs } = this.options;
    const subject = allEventsSubject(prefix);
    const jsm = this.jsm ?? (await this.nc.jetstreamManager({ timeout: timeoutMs }));
    const info = await jsm.streams.info(stream);
    if (info.state.messages === 0) return ids;
    const start = Math.max(info.state.first_seq, info.state.last_seq - tail + 1);
    // The newest message of ours ends the read (the per-message `pending` count is not reliable
    // with wildcard filters on servers before 2.10).
    let last: number;
    try {
      last = (await jsm.streams.getMessage(stream, { last_by_subj: subject })).seq;
    } catch (err) {
      if (/no message found/i.test((err as Error).message)) return ids;
      throw err;
    }
    if (last < start) return ids;
    const consumer = await this.nc.jetstream().consumers.get(stream, { filterSubjects: subject, opt_start_seq: start, headers_only: true });
    const messages = await consumer.consume({ max_messages: 500 });
    const guard = setTimeout(() => void messages.stop(), timeoutMs);
    try {
      for await (const m of messages) {
        const id = m.headers?.get('Nats-Msg-Id');
        if (id) ids.add(id);
        if (m.seq >= last) break;
      }
    } finally {
      clearTimeout(guard);
      void messages.stop();
    }
    void consumer.delete().catch(() => undefined);
    return ids;
  }
}

/** A stream limit for the log: `604800s`, `1073741824`, or `none` (0). */
function limitText(n: number, unit = ''): string {
  return n > 0 ? `${n}${unit}` : 'none';
}

/** Core NATS: published and flushed, at most once; nobody acknowledges. */
export class CorePublisher implements Publisher {
  constructor(
    private readonly nc: NatsConnection,
    private readonly prefix: string,
    private readonly timeoutMs: number,
  ) {}

  publish(events: readonly OutboxEvent[]): Promise<PublishResult> {
    return timed(events, () => this.publishAndFlush(events));
  }

  private async publishAndFlush(events: readonly OutboxEvent[]): Promise<PublishResult> {
    for (const e of events)
      this.nc.publish(eventSubject(this.prefix, e.type, e.name), bodyBytes(eventPayload(e)), { headers: eventHeaders(e) });
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.nc.flush(),
        new Promise(
          (_, reject) => (timer = setTimeout(() => reject(new Error('NATS did not confirm the events in time')), this.timeoutMs)),
        ),
      ]);
    } catch (error) {
      return { delivered: [], error };
    } finally {
      clearTimeout(timer);
    }
    return { delivered: [...events] };
  }
}
