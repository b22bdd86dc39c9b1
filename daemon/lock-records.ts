/**
 * Locks as they travel on the wire: a store row (times in ms) turned into a LockRecord (ISO
 * strings), built once per row since a granted lock is both replied and recorded in an event.
 */
import type { LockRecord } from '../shared/protocol';
import { publicSessionId } from '../shared/sessions';
import type { LockRow } from './store/store';

const records = new WeakMap<LockRow, LockRecord>();

export function toLockRecord(row: LockRow): LockRecord {
  let record = records.get(row);
  if (!record) {
    record = {
      name: row.name,
      locked_by: row.locked_by,
      lock_process: row.lock_process,
      locked_until: row.locked_until === null ? null : iso(row.locked_until),
      created_at: iso(row.created_at),
      updated_at: iso(row.updated_at),
      token: row.token,
    };
    // Records go to anyone who asks and into events: the session's public name, not its id.
    if (row.session_id !== null) record.session = publicSessionId(row.session_id);
    records.set(row, record);
  }
  return record;
}

/** ISO strings of recent instants: the rows and events of one transaction share its clock reading. */
const isoStrings = new Map<number, string>();

export function iso(ms: number): string {
  let text = isoStrings.get(ms);
  if (text === undefined) {
    if (isoStrings.size >= 256) isoStrings.clear();
    text = new Date(ms).toISOString();
    isoStrings.set(ms, text);
  }
  return text;
}
