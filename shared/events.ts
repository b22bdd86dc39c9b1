/**
 * Lock events: every change to a lock is published on `P.events.<type>.<name>` with this payload.
 * The daemon records each event in the same transaction as the change, so the stream holds the
 * full, ordered history of every lock.
 */
import type { LockRecord } from './protocol';

export const EVENT_TYPES = ['created', 'renewed', 'released', 'expired', 'reset'] as const;
export type EventType = (typeof EVENT_TYPES)[number];

export interface EventCause {
  /** The requester's `locked_by`, where the request named one. */
  locked_by: string | null;
  /** The requester's process id (`process_id` / `lock_process`), where given. */
  process_id: number | null;
  /** The NATS client that sent the request (`<server client id>@<host>`), where known. */
  client: string | null;
  /** The request that caused the change (`set`, `get`, ...), or `sweeper` for expiries found on time. */
  operation: string;
}

export interface LockEvent {
  /** Unique event id; also the JetStream de-duplication id (Nats-Msg-Id). */
  id: string;
  type: EventType;
  /** Orders all events of one database: grows with every event, never repeats. */
  seq: number;
  /** The lock after the change; for released, expired and reset, the lock as it was. */
  lock: LockRecord;
  cause: EventCause;
  /** The daemon instance that made the change. */
  daemon: string;
  /** When the change was committed (ISO 8601 UTC). */
  at: string;
}

export function eventSubject(prefix: string, type: EventType | '*', name: string | '>'): string {
  return `${prefix}.events.${type}.${name}`;
}
