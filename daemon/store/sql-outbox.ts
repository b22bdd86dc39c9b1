/**
 * The outbox as both SQL backends hold it: the statements they run unchanged, and the mapping
 * between outbox rows and events. Events are written in the transaction of the change they
 * record and stay until the relay has them acknowledged.
 */
import type { EventType } from '../../shared/events';
import type { Row } from './sql-tx';
import type { OutboxEvent } from './store';

export const OUTBOX_COLUMNS = 'seq, event_id, type, name, lock, cause, daemon, at';

/** Outbox statements both backends run unchanged. */
export const OUTBOX_SQL = {
  /** (after, limit) */
  read: `SELECT ${OUTBOX_COLUMNS} FROM lockmgr_outbox WHERE seq > ? ORDER BY seq LIMIT ?`,
  /** (after, before, limit) */
  readBefore: `SELECT ${OUTBOX_COLUMNS} FROM lockmgr_outbox WHERE seq > ? AND seq < ? ORDER BY seq LIMIT ?`,
  /** (seq) */
  removeThrough: 'DELETE FROM lockmgr_outbox WHERE seq <= ?',
  /** (upTo) */
  count: 'SELECT COUNT(*) AS n FROM lockmgr_outbox WHERE seq <= ?',
} as const;

export function toOutboxEvent(row: Row): OutboxEvent {
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
