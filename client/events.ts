/**
 * Lock events as a typed async iterator: live from core NATS, or replayed (and then followed)
 * from the daemons' JetStream stream with an ordered consumer.
 *
 *   for await (const e of client.events({ types: ['released', 'expired'], names: 'orders.>' })) ...
 *   for await (const e of client.events({ since: { seq: 1 } })) ...   // the whole history, then ends
 */
import { DeliverPolicy, type ConsumerMessages, type NatsConnection, type Subscription } from 'nats';
import {
  allEventsSubject,
  defaultEventsStream,
  EVENT_TYPES,
  eventsStreamName,
  eventSubject,
  LEGACY_EVENTS_STREAM,
  streamFit,
  streamTakingEvents,
  type EventType,
  type LockEvent,
} from '../shared/events';
import { ConnectionClosed, InvalidRequest, LockError, errorFromNats } from './errors';

export { defaultEventsStream, eventsStreamName };

/**
 * @deprecated The stream every prefix shared by default before each prefix had a stream of its
 * own; the default is now `defaultEventsStream(prefix)` (`LOCKMGR_EVENTS_<prefix>`).
 */
export const DEFAULT_EVENTS_STREAM = LEGACY_EVENTS_STREAM;

export interface EventsOptions {
  /** Only events of these types (default: all). */
  types?: readonly EventType[];
  /**
   * Only locks whose name matches one of these patterns. Lock names are NATS subject tokens, so
   * `orders.42` is one lock, `orders.*` every lock one level under `orders`, `orders.>` all below.
   */
  names?: string | readonly string[];
  /**
   * Replay from the stream, starting at stream sequence `seq` (inclusive; 1 is the beginning) or
   * at the first event stored at or after `time`. Without it, only live events from now on.
   */
  since?: { seq: number } | { time: Date | string };
  /**
   * With `since`: once the replay has caught up, go on with new events (default false: the
   * iteration ends with the last event stored when it started). Live events always follow.
   */
  follow?: boolean;
  /**
   * The JetStream stream the daemons deliver to: their `eventsStream`, by default
   * `LOCKMGR_EVENTS_<prefix>` (see defaultEventsStream).
   */
  stream?: string;
}

/** An event as received: the published payload, plus its place in the stream when replayed. */
export interface ReceivedLockEvent extends LockEvent {
  /**
   * The stream sequence of the event, when it was read from JetStream (`since`). Pass
   * `{seq: streamSeq + 1}` as `since` to resume after it. Absent for live core NATS events.
   */
  streamSeq?: number;
}

/**
 * Replay is impossible (live events do not need any of this): JetStream is not enabled
 * (`no-jetstream`), the stream does not exist (`no-stream`), or it does not take the prefix's
 * events (`wrong-stream`: it is another prefix's, or someone else's).
 */
export class EventsUnavailable extends LockError {
  constructor(
    message: string,
    readonly reason: 'no-jetstream' | 'no-stream' | 'wrong-stream',
    options?: { cause?: unknown },
  ) {
    super('EVENTS_UNAVAILABLE', message, options);
  }
}

/** NATS subject matching: `*` is one token, `>` one or more trailing tokens. */
export function subjectMatches(pattern: string, subject: string): boolean {
  const p = pattern.split('.');
  const s = subject.split('.');
  for (let i = 0; i < p.length; i++) {
    if (p[i] === '>') return s.length > i;
    if (i >= s.length) return false;
    if (p[i] !== '*' && p[i] !== s[i]) return false;
  }
  return p.length === s.length;
}

/** Why `pattern` is not a usable lock name pattern, or null. */
export function namePatternProblem(pattern: unknown): string | null {
  if (typeof pattern !== 'string' || pattern.length === 0 || pattern.length > 255) return 'must be a string of 1-255 characters';
  const tokens = pattern.split('.');
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i]!;
    if (t.length === 0) return 'must not have an empty dot-separated token';
    if (/\s/.test(t)) return 'must not contain whitespace';
    if (t === '>' && i !== tokens.length - 1) return "'>' may only be the last token";
    if (t !== '*' && t !== '>' && /[*>]/.test(t)) return "'*' and '>' must be whole tokens";
  }
  return null;
}

interface Plan {
  /** The one subject to subscribe or filter on (servers before 2.10 take only one filter). */
  subject: string;
  /** When the subject is wider than asked: the exact patterns, matched here. */
  patterns: string[] | null;
}

/** The subscription subject and, if it is wider than the filters, the patterns to match. */
export function eventsPlan(prefix: string, types?: readonly EventType[], names?: string | readonly string[]): Plan {
  const typeList = types && types.length > 0 ? [...new Set(types)] : null;
  const nameList = names === undefined ? null : [...new Set(typeof names === 'string' ? [names] : names)];
  if (nameList && nameList.length === 0)
    throw new InvalidRequest('names must not be empty', [{ field: 'names', problem: 'must not be empty' }]);
  for (const t of typeList ?? []) {
    if (!EVENT_TYPES.includes(t)) {
      throw new InvalidRequest(`unknown event type ${JSON.stringify(t)} (known: ${EVENT_TYPES.join(', ')})`, [
        { field: 'types', problem: `must be among ${EVENT_TYPES.join(', ')}` },
      ]);
    }
  }
  for (const n of nameList ?? []) {
    const problem = namePatternProblem(n);
    if (problem) throw new InvalidRequest(`invalid name pattern ${JSON.stringify(n)}: ${problem}`, [{ field: 'names', problem }]);
  }
  const t = typeList?.length === 1 ? typeList[0]! : '*';
  const n = nameList?.length === 1 ? nameList[0]! : '>';
  const subject = eventSubject(prefix, t, n);
  const exact = (typeList === null || typeList.length === 1) && (nameList === null || nameList.length === 1);
  if (exact) return { subject, patterns: null };
  const patterns: string[] = [];
  for (const ty of typeList ?? (['*'] as const)) for (const na of nameList ?? ['>']) patterns.push(eventSubject(prefix, ty, na));
  return { subject, patterns };
}

type ReplayStart = { opt_start_seq: number } | { deliver_policy: DeliverPolicy; opt_start_time: string };

/** Where an ordered consumer starts for `since`; throws InvalidRequest for a bad one. */
function replayStart(since: NonNullable<EventsOptions['since']>): ReplayStart {
  if (typeof since === 'object' && since !== null && 'seq' in since) {
    if (!Number.isInteger(since.seq) || since.seq < 1) {
      throw new InvalidRequest(`since.seq must be a whole number >= 1, got ${since.seq}`, [
        { field: 'since', problem: 'seq must be >= 1' },
      ]);
    }
    return { opt_start_seq: since.seq };
  }
  const raw = (since as { time?: unknown })?.time;
  const time = raw instanceof Date ? raw : new Date(String(raw));
  if (raw === undefined || Number.isNaN(time.getTime())) {
    throw new InvalidRequest(`since must be {seq} or {time}; ${JSON.stringify(since)} is neither`, [
      { field: 'since', problem: 'must be {seq: n >= 1} or {time: a date}' },
    ]);
  }
  return { deliver_policy: DeliverPolicy.StartTime, opt_start_time: time.toISOString() };
}

const decoder = new TextDecoder();

function decode(data: Uint8Array): LockEvent | null {
  try {
    const e = JSON.parse(decoder.decode(data)) as LockEvent;
    return e && typeof e === 'object' && typeof e.id === 'string' && typeof e.type === 'string' && e.lock ? e : null;
  } catch {
    return null;
  }
}

/**
 * A running subscription to lock events. Iterate it once with `for await`; leaving the loop (or
 * `close()`) ends the subscription. Events that arrive faster than the loop takes them queue up.
 */
export class LockEventStream implements AsyncIterable<ReceivedLockEvent> {
  /** Resolves once the subscription (or the replay consumer) is in place on the server. */
  readonly ready: Promise<void>;
  private readonly queue: ReceivedLockEvent[] = [];
  private waiter?: (r: IteratorResult<ReceivedLockEvent>) => void;
  private failWaiter?: (err: unknown) => void;
  private ended = false;
  private error?: unknown;
  private sub?: Subscription;
  private messages?: ConsumerMessages;
  private stopConsumer?: () => Promise<void>;

  constructor(
    private readonly nc: NatsConnection,
    private readonly prefix: string,
    options: EventsOptions = {},
  ) {
    const plan = eventsPlan(prefix, options.types, options.names);
    if (nc.isClosed()) throw new ConnectionClosed('the NATS connection is closed: connect a new client');
    // A closed connection ends the iteration (with ConnectionClosed, if it closed on an error:
    // it gave up reconnecting). While NATS is down and nats.js reconnects, the iteration waits.
    void nc
      .closed()
      .then((err) =>
        this.finish(
          err ? new ConnectionClosed(`the NATS connection closed (it gave up reconnecting: ${err.message})`, { cause: err }) : undefined,
        ),
      );
    if (options.since === undefined) {
      if (options.follow === false) {
        throw new InvalidRequest('follow: false needs since: live events always follow', [
          { field: 'follow', problem: 'false needs since' },
        ]);
      }
      try {
        this.sub = nc.subscribe(plan.subject, {
          callback: (err, msg) => {
            if (err) return this.finish(err);
            if (plan.patterns && !plan.patterns.some((p) => subjectMatches(p, msg.subject))) return;
            const e = decode(msg.data);
            if (e) this.push(e);
          },
        });
      } catch (err) {
        throw errorFromNats(err);
      }
      // The subscription is in place once the server has answered a ping sent after it.
      this.ready = nc.flush().catch((err: unknown) => {
        throw errorFromNats(err);
      });
      this.ready.catch(() => undefined);
    } else {
      const start = replayStart(options.since);
      this.ready = this.replay(plan, options, start).catch((err: unknown) => {
        throw errorFromNats(err);
      });
      this.ready.catch((err) => this.finish(err));
    }
  }

  private async replay(plan: Plan, options: EventsOptions, start: ReplayStart): Promise<void> {
    const streamName = eventsStreamName(this.prefix, options.stream);
    const ours = allEventsSubject(this.prefix);
    // The last stored event the filter matches: a replay that does not follow ends with it. (The
    // `pending` count JetStream sends with each message is not reliable with wildcard filters on
    // servers before 2.10, so it is not used.)
    let last: { seq: number; time: Date } | null;
    const js = this.nc.jetstream();
    try {
      const jsm = await this.nc.jetstreamManager();
      const info = await jsm.streams.info(streamName).catch(async (err: unknown) => {
        if (!/stream not found/i.test((err as Error).message)) throw err;
        // Name the stream that does take the prefix's events, if there is one (a stream shared
        // by every prefix before each had its own).
        const other = await streamTakingEvents(jsm, this.prefix);
        throw new EventsUnavailable(
          `no events stream ${streamName} on this NATS server` +
            (other
              ? `; stream ${other} takes ${ours}: read that one (the daemons' eventsStream)`
              : `: is a daemon of prefix ${this.prefix} running with JetStream, and is the stream name right (the daemons' eventsStream)?`),
          'no-stream',
          { cause: err },
        );
      });
      const subjects = info.config.subjects ?? [];
      if (!streamFit(this.prefix, subjects).takesAll) {
        throw new EventsUnavailable(
          `events stream ${streamName} takes ${subjects.join(', ') || 'no subjects'}, not ${ours} (the events of prefix ${this.prefix}): ` +
            `it is not this prefix's stream; name the stream the daemons of prefix ${this.prefix} deliver to (their eventsStream)`,
          'wrong-stream',
        );
      }
      last = await jsm.streams.getMessage(streamName, { last_by_subj: plan.subject }).then(
        (m) => ({ seq: m.seq, time: m.time }),
        (err) => {
          if (/no message found/i.test((err as Error).message)) return null;
          throw err;
        },
      );
    } catch (err) {
      if (err instanceof EventsUnavailable) throw err;
      const code = String((err as { code?: unknown }).code ?? '');
      if (code === '503')
        throw new EventsUnavailable('JetStream is not enabled on the NATS server: there is no stored history to replay', 'no-jetstream', {
          cause: err,
        });
      throw errorFromNats(err);
    }
    if (this.ended) return;
    if (!options.follow) {
      const nothing =
        last === null ||
        ('opt_start_seq' in start ? last.seq < start.opt_start_seq : last.time.getTime() < Date.parse(start.opt_start_time));
      if (nothing) return this.finish();
    }
    const consumer = await js.consumers.get(streamName, { filterSubjects: plan.subject, ...start });
    this.stopConsumer = async () => {
      this.messages?.stop();
      await consumer.delete().catch(() => undefined);
    };
    if (this.ended) return void (await this.stopConsumer());
    const messages = await consumer.consume({ max_messages: 512 });
    this.messages = messages;
    if (this.ended) return void (await this.stopConsumer());
    void (async () => {
      try {
        for await (const m of messages) {
          const inRange = plan.patterns === null || plan.patterns.some((p) => subjectMatches(p, m.subject));
          const e = inRange ? decode(m.data) : null;
          if (e) this.push({ ...e, streamSeq: m.seq });
          if (!options.follow && m.seq >= last!.seq) break;
        }
        this.finish();
      } catch (err) {
        this.finish(err);
      }
    })();
  }

  private push(e: ReceivedLockEvent): void {
    if (this.ended) return;
    const w = this.waiter;
    if (w) {
      this.waiter = this.failWaiter = undefined;
      w({ value: e, done: false });
    } else {
      this.queue.push(e);
    }
  }

  /** End the iteration (after the queued events), with an error if one stopped it (as a LockError). */
  private finish(err?: unknown): void {
    if (this.ended) return;
    this.ended = true;
    if (err !== undefined) this.error = errorFromNats(err);
    this.sub?.unsubscribe();
    void this.stopConsumer?.();
    if (this.waiter && this.queue.length === 0) {
      const w = this.waiter;
      const f = this.failWaiter;
      this.waiter = this.failWaiter = undefined;
      if (this.error !== undefined) f!(this.error);
      else w({ value: undefined, done: true });
    }
  }

  /** Stop receiving; a pending or later `next()` ends the iteration. Queued events are dropped. */
  async close(): Promise<void> {
    this.queue.length = 0;
    this.finish();
    await this.ready.catch(() => undefined);
    await this.stopConsumer?.();
  }

  private next(): Promise<IteratorResult<ReceivedLockEvent>> {
    if (this.queue.length > 0) return Promise.resolve({ value: this.queue.shift()!, done: false });
    if (this.ended) {
      if (this.error !== undefined) {
        const err = this.error;
        this.error = undefined;
        return Promise.reject(err);
      }
      return Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => {
      this.waiter = resolve;
      this.failWaiter = reject;
    });
  }

  [Symbol.asyncIterator](): AsyncIterator<ReceivedLockEvent> {
    return {
      next: () => this.next(),
      return: async () => {
        await this.close();
        return { value: undefined, done: true };
      },
    };
  }
}
