/**
 * Lock events: every change to a lock is published on `P.events.<type>.<name>` with this payload.
 * The daemon records each event in the same transaction as the change, so the stream holds the
 * full, ordered history of every lock.
 */
import type { JetStreamManager } from 'nats';
import type { LockRecord } from './protocol';

export const EVENT_TYPES = ['created', 'renewed', 'released', 'expired', 'reset'] as const;
export type EventType = (typeof EVENT_TYPES)[number];

export interface EventCause {
  /**
   * The requester's `locked_by`. Requests that name none (`unlock`, `clean`, `reset`, or a `get`
   * without it) carry the daemon host's name, the seed's default owner; the sweeper's is its
   * daemon's host.
   */
  locked_by: string | null;
  /** The requester's process id (`process_id` / `lock_process`), where given; the sweeper's daemon pid. */
  process_id: number | null;
  /** The NATS client that sent the request (`<server client id>@<host>`), where known. */
  client: string | null;
  /** The request that caused the change (`set`, `get`, ...), or `sweeper` for expiries found on time. */
  operation: string;
  /**
   * Why, where the operation does not say it all: `session lapsed` (an `expired` lock of a session
   * that was not kept alive), `force-released` (a `renewed` lock of a session released by name:
   * it is kept through the lock-delay, then expires).
   */
  reason?: string;
}

export interface LockEvent {
  /** Unique event id; also the JetStream de-duplication id (Nats-Msg-Id). */
  id: string;
  type: EventType;
  /**
   * Orders all events of one database: grows with every event, never repeats. The events of one
   * lock always reach the stream in `seq` order; on PostgreSQL, events of different locks
   * committed concurrently may reach it out of `seq` order (and `seq` may skip values).
   */
  seq: number;
  /** The lock after the change; for released, expired and reset, the lock as it was. */
  lock: LockRecord;
  cause: EventCause;
  /** The daemon instance that made the change. */
  daemon: string;
  /**
   * When the change was made (ISO 8601 UTC): for `created` and `renewed`, the moment of the grant
   * or renewal, which the lock carries as its `created_at`/`updated_at`; for the others, the
   * clock of the transaction that made the change (the database's on PostgreSQL).
   */
  at: string;
}

/** The stream every prefix shared by default before each prefix had one of its own. */
export const LEGACY_EVENTS_STREAM = 'LOCKMGR_EVENTS';

/**
 * The stream a prefix's events go to unless one is configured: `LOCKMGR_EVENTS_` and the prefix,
 * its characters other than letters, digits, `_` and `-` written `_` (`lock` ->
 * `LOCKMGR_EVENTS_lock`, `app.locks` -> `LOCKMGR_EVENTS_app_locks`). Two prefixes may map to one
 * name (`a.b` and `a_b`); the stream's subjects tell them apart, and a daemon or reader finding the
 * other prefix's stream under its name refuses it (see streamFit).
 */
export function defaultEventsStream(prefix: string): string {
  return `LOCKMGR_EVENTS_${prefix.replace(/[^A-Za-z0-9_-]/g, '_')}`;
}

/** The stream of `prefix`'s events: `configured` when given (not empty), else the prefix's default. */
export function eventsStreamName(prefix: string, configured?: string): string {
  return configured || defaultEventsStream(prefix);
}

/** Why JetStream would refuse `name` as a stream name, or null. */
export function streamNameProblem(name: string): string | null {
  if (/[\s.*>/\\]|[^\x21-\x7e]/.test(name))
    return "must be a stream name JetStream takes: no whitespace, '.', '*', '>', '/', '\\' or non-ASCII characters";
  return null;
}

/** True when every subject `pattern` matches is also matched by the stream subject `filter`. */
export function subjectCovers(filter: string, pattern: string): boolean {
  const f = filter.split('.');
  const p = pattern.split('.');
  for (let i = 0; i < f.length; i++) {
    if (f[i] === '>') return p.length > i;
    if (i >= p.length) return false;
    if (p[i] === '>') return false;
    if (f[i] !== '*' && f[i] !== p[i]) return false;
  }
  return f.length === p.length;
}

/**
 * How a stream's subjects fit the events of `prefix`: whether they take all of them (`P.events.>`),
 * and which of them take anything else (other prefixes' events, other publishers).
 */
export function streamFit(prefix: string, subjects: readonly string[]): { takesAll: boolean; others: string[] } {
  const ours = allEventsSubject(prefix);
  return {
    takesAll: subjects.some((s) => subjectCovers(s, ours)),
    others: subjects.filter((s) => !subjectCovers(ours, s)),
  };
}

/** Header naming the daemon that made a change, so that it can skip its own events cheaply. */
export const DAEMON_HEADER = 'Lockmgr-Daemon';

/** `P.events.<type>.<name>`; `*` and `>` (any type, any name) make a subscription subject. */
export function eventSubject(prefix: string, type: EventType | '*', name: string): string {
  return `${prefix}.events.${type}.${name}`;
}

/** Every event subject of the prefix (`P.events.>`): what the events stream takes. */
export function allEventsSubject(prefix: string): string {
  return `${prefix}.events.>`;
}

/**
 * The name of the stream that takes `prefix`'s events (`P.events.>`), whatever it is called; null
 * when none does, or when JetStream cannot say.
 */
export function streamTakingEvents(jsm: Pick<JetStreamManager, 'streams'>, prefix: string): Promise<string | null> {
  return jsm.streams.find(allEventsSubject(prefix)).catch(() => null);
}

/** The type and lock name an event subject of `prefix` carries, or null if it is not one. */
export function parseEventSubject(prefix: string, subject: string): { type: EventType; name: string } | null {
  const head = `${prefix}.events.`;
  if (!subject.startsWith(head)) return null;
  const rest = subject.slice(head.length);
  const dot = rest.indexOf('.');
  const type = rest.slice(0, dot) as EventType;
  if (dot <= 0 || !EVENT_TYPES.includes(type) || dot === rest.length - 1) return null;
  return { type, name: rest.slice(dot + 1) };
}
