/**
 * Lock and LockSetResult as services see them: Date times, `expired`, `expires_seconds`, the
 * fencing `token`, and the django-lockmgr string form
 * `<Lock name='hello' locked_by='example.org' locked_until='2019-11-22 02:01:55.439000+00:00'>`.
 */
import { inspect } from 'node:util';
import type { LockRecord, LockSetCounts, LockSetResultRecord, LockSetStatus } from '../shared/protocol';

/** Python's str() of an aware UTC datetime: `2019-11-22 02:01:55.439390+00:00`. */
export function pythonTime(d: Date | null): string {
  if (d === null) return 'None';
  const iso = d.toISOString(); // 2019-11-22T02:01:55.439Z
  const ms = d.getUTCMilliseconds();
  const fraction = ms === 0 ? '' : `.${String(ms * 1000).padStart(6, '0')}`;
  return `${iso.slice(0, 10)} ${iso.slice(11, 19)}${fraction}+00:00`;
}

export class Lock {
  name!: string;
  locked_by!: string | null;
  lock_process!: number | null;
  /** null: the lock never expires. */
  locked_until!: Date | null;
  created_at!: Date;
  updated_at!: Date;
  /** Fencing token of this grant: pass it to the resources the lock protects. */
  token!: number;
  /** The public name of the session the lock was taken in (it lasts as long as the session), or null. */
  session!: string | null;

  static fromRecord(r: LockRecord): Lock {
    return new Lock().assign(r);
  }

  /** Update this object in place from a newer record of the same lock. */
  assign(r: LockRecord): this {
    this.name = r.name;
    this.locked_by = r.locked_by;
    this.lock_process = r.lock_process;
    this.locked_until = r.locked_until === null ? null : new Date(r.locked_until);
    this.created_at = new Date(r.created_at);
    this.updated_at = new Date(r.updated_at);
    this.token = r.token;
    this.session = r.session ?? null;
    return this;
  }

  /** Milliseconds until expiry (negative once expired), or null for a lock that never expires. */
  get expires_in(): number | null {
    return this.locked_until === null ? null : this.locked_until.getTime() - Date.now();
  }

  /** Seconds until expiry, as a float (negative once expired), or null for a lock that never expires. */
  get expires_seconds(): number | null {
    const ms = this.expires_in;
    return ms === null ? null : ms / 1000;
  }

  /** True once `locked_until` has passed; never for a lock that never expires. */
  get expired(): boolean {
    const s = this.expires_seconds;
    return s !== null && s <= 0;
  }

  toString(): string {
    return `<Lock name='${this.name}' locked_by='${this.locked_by ?? 'None'}' locked_until='${pythonTime(this.locked_until)}'>`;
  }

  /** The longer form `lockmgr list-locks` prints, with the process id and the fencing token. */
  toLongString(): string {
    return `<Lock name='${this.name}' locked_by='${this.locked_by ?? 'None'}' lock_process='${this.lock_process ?? 'None'}' token='${this.token}' locked_until='${pythonTime(this.locked_until)}'>`;
  }

  [inspect.custom](): string {
    return this.toString();
  }

  toJSON(): LockRecord {
    const record: LockRecord = {
      name: this.name,
      locked_by: this.locked_by,
      lock_process: this.lock_process,
      locked_until: this.locked_until === null ? null : this.locked_until.toISOString(),
      created_at: this.created_at.toISOString(),
      updated_at: this.updated_at.toISOString(),
      token: this.token,
    };
    if (this.session !== null) record.session = this.session;
    return record;
  }
}

/** What `setLock` did: the locks created, renewed or already held, counts, and a status per name. */
export class LockSetResult {
  readonly locks: Lock[];
  readonly counts: LockSetCounts;
  readonly statuses: [string, LockSetStatus][];

  constructor(r: LockSetResultRecord) {
    this.locks = r.locks.map(Lock.fromRecord);
    this.counts = r.counts;
    this.statuses = r.statuses;
  }

  toJSON(): LockSetResultRecord {
    return { locks: this.locks.map((l) => l.toJSON()), counts: this.counts, statuses: this.statuses };
  }
}
