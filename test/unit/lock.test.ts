/**
 * Lock and LockSetResult as services see them (client/lock.ts), and the one place wire errors
 * become client errors (client/errors.ts errorFromWire).
 */
import { inspect } from 'node:util';
import {
  DaemonStopping,
  errorFromWire,
  InternalError,
  InvalidRequest,
  Lock,
  LockError,
  Locked,
  LockFail,
  LockNotFound,
  LockSetResult,
  NoDaemon,
  NotOwner,
  pythonTime,
  RequestTimeout,
  StoreUnavailable,
} from '../../client/index';
import type { LockRecord, LockSetResultRecord, WireError } from '../../shared/protocol';

const record = (over: Partial<LockRecord> = {}): LockRecord => ({
  name: 'hello',
  locked_by: 'example.org',
  lock_process: null,
  locked_until: '2019-11-22T02:01:55.439Z',
  created_at: '2019-11-22T01:51:55.439Z',
  updated_at: '2019-11-22T01:51:56.000Z',
  token: 41,
  ...over,
});

describe('Lock', () => {
  afterEach(() => jest.restoreAllMocks());

  it("prints like django-lockmgr: <Lock name='hello' locked_by='example.org' locked_until='...'>", () => {
    const lock = Lock.fromRecord(record());
    const text = "<Lock name='hello' locked_by='example.org' locked_until='2019-11-22 02:01:55.439000+00:00'>";
    expect(lock.toString()).toBe(text);
    expect(String(lock)).toBe(text);
    expect(`${lock}`).toBe(text);
    expect(inspect(lock)).toBe(text);
  });

  it('prints None for a lock that never expires and for a missing owner', () => {
    expect(Lock.fromRecord(record({ locked_until: null, locked_by: null })).toString()).toBe(
      "<Lock name='hello' locked_by='None' locked_until='None'>",
    );
  });

  it('the long form adds lock_process and the fencing token, as lockmgr list-locks prints it', () => {
    expect(Lock.fromRecord(record({ lock_process: 42, token: 17 })).toLongString()).toBe(
      "<Lock name='hello' locked_by='example.org' lock_process='42' token='17' locked_until='2019-11-22 02:01:55.439000+00:00'>",
    );
    expect(Lock.fromRecord(record()).toLongString()).toContain("lock_process='None'");
  });

  it("pythonTime is Python's str() of an aware UTC datetime", () => {
    expect(pythonTime(new Date('2019-11-22T02:01:55.439Z'))).toBe('2019-11-22 02:01:55.439000+00:00');
    expect(pythonTime(new Date('2019-11-22T02:01:55.001Z'))).toBe('2019-11-22 02:01:55.001000+00:00');
    // Python leaves out a zero fraction.
    expect(pythonTime(new Date('2019-11-22T02:01:55.000Z'))).toBe('2019-11-22 02:01:55+00:00');
    expect(pythonTime(new Date('2030-01-02T03:04:05.600Z'))).toBe('2030-01-02 03:04:05.600000+00:00');
    expect(pythonTime(null)).toBe('None');
  });

  it('holds Date times, the owner fields and the fencing token', () => {
    const lock = Lock.fromRecord(record({ lock_process: 7 }));
    expect(lock).toBeInstanceOf(Lock);
    expect(lock.locked_until).toEqual(new Date('2019-11-22T02:01:55.439Z'));
    expect(lock.created_at).toEqual(new Date('2019-11-22T01:51:55.439Z'));
    expect(lock.updated_at).toEqual(new Date('2019-11-22T01:51:56.000Z'));
    expect(lock.locked_by).toBe('example.org');
    expect(lock.lock_process).toBe(7);
    expect(lock.token).toBe(41);
  });

  it('expires_in / expires_seconds (a float) / expired follow the clock', () => {
    const until = Date.parse('2019-11-22T02:01:55.439Z');
    const lock = Lock.fromRecord(record());
    const now = jest.spyOn(Date, 'now');
    now.mockReturnValue(until - 90_500);
    expect(lock.expires_in).toBe(90_500);
    expect(lock.expires_seconds).toBe(90.5);
    expect(lock.expired).toBe(false);
    now.mockReturnValue(until - 1);
    expect(lock.expired).toBe(false);
    // Like the seed: expired once expires_seconds <= 0.
    now.mockReturnValue(until);
    expect(lock.expires_seconds).toBe(0);
    expect(lock.expired).toBe(true);
    now.mockReturnValue(until + 2500);
    expect(lock.expires_seconds).toBe(-2.5);
    expect(lock.expired).toBe(true);
  });

  it('a lock that never expires: expires_in and expires_seconds are null, expired is false', () => {
    const lock = Lock.fromRecord(record({ locked_until: null }));
    jest.spyOn(Date, 'now').mockReturnValue(Date.parse('2100-01-01T00:00:00Z'));
    expect(lock.locked_until).toBeNull();
    expect(lock.expires_in).toBeNull();
    expect(lock.expires_seconds).toBeNull();
    expect(lock.expired).toBe(false);
  });

  it('assign updates the same object in place (what renewLock(lock) returns)', () => {
    const lock = Lock.fromRecord(record());
    const same = lock.assign(record({ locked_until: '2019-11-22T03:00:00.000Z', token: 42 }));
    expect(same).toBe(lock);
    expect(lock.locked_until).toEqual(new Date('2019-11-22T03:00:00.000Z'));
    expect(lock.token).toBe(42);
    lock.assign(record({ locked_until: null }));
    expect(lock.locked_until).toBeNull();
  });

  it('serialises back to the wire record', () => {
    for (const r of [record(), record({ locked_until: null, locked_by: null, lock_process: 3 })]) {
      const lock = Lock.fromRecord(r);
      expect(lock.toJSON()).toEqual(r);
      expect(JSON.parse(JSON.stringify(lock))).toEqual(r);
    }
  });
});

describe('LockSetResult', () => {
  const wire: LockSetResultRecord = {
    locks: [record(), record({ name: 'world', token: 42 })],
    counts: { created: 2, renewed: 0, skip_create: 0, skip_renew: 0 },
    statuses: [
      ['hello', { was_locked: false, status: 'create', locked: true }],
      ['world', { was_locked: false, status: 'create', locked: true }],
    ],
  };

  it("reads like the seed's example", () => {
    const res = new LockSetResult(wire);
    expect(res.locks.every((l) => l instanceof Lock)).toBe(true);
    expect(res.locks.map(String)).toEqual([
      "<Lock name='hello' locked_by='example.org' locked_until='2019-11-22 02:01:55.439000+00:00'>",
      "<Lock name='world' locked_by='example.org' locked_until='2019-11-22 02:01:55.439000+00:00'>",
    ]);
    expect(res.counts).toEqual({ created: 2, renewed: 0, skip_create: 0, skip_renew: 0 });
    expect(res.statuses[0]).toEqual(['hello', { was_locked: false, status: 'create', locked: true }]);
  });

  it('serialises to the wire form, keys in the documented order', () => {
    const json = JSON.parse(JSON.stringify(new LockSetResult(wire)));
    expect(json).toEqual(wire);
    expect(Object.keys(json)).toEqual(['locks', 'counts', 'statuses']);
    expect(Object.keys(json.statuses[0][1])).toEqual(['was_locked', 'status', 'locked']);
  });
});

describe('errorFromWire', () => {
  const held = record({ name: 'busy', token: 9 });

  it.each([
    ['LOCKED', Locked],
    ['LOCK_FAIL', LockFail],
    ['LOCK_NOT_FOUND', LockNotFound],
    ['NOT_OWNER', NotOwner],
    ['INVALID_REQUEST', InvalidRequest],
    ['STORE_UNAVAILABLE', StoreUnavailable],
    ['DAEMON_STOPPING', DaemonStopping],
    ['INTERNAL', InternalError],
  ] as const)('%s -> %p, keeping code and message', (code, cls) => {
    const err = errorFromWire({ code, message: `the ${code} message` });
    expect(err).toBeInstanceOf(cls);
    expect(err).toBeInstanceOf(LockError);
    expect(err).toBeInstanceOf(Error);
    expect(err.code).toBe(code);
    expect(err.message).toBe(`the ${code} message`);
    expect(err.name).toBe(cls.name);
  });

  it('LockFail is a kind of Locked (catching Locked catches both), LockNotFound is not', () => {
    const fail = errorFromWire({ code: 'LOCK_FAIL', message: "Lock 'busy' already existed. Aborting!", lock: held });
    expect(fail).toBeInstanceOf(LockFail);
    expect(fail).toBeInstanceOf(Locked);
    expect((fail as LockFail).lock).toBeInstanceOf(Lock);
    expect((fail as LockFail).lock?.token).toBe(9);
    const locked = errorFromWire({ code: 'LOCKED', message: 'Lock with name busy already exists.', lock: held });
    expect(locked).toBeInstanceOf(Locked);
    expect(locked).not.toBeInstanceOf(LockFail);
    const notFound = errorFromWire({ code: 'LOCK_NOT_FOUND', message: 'gone' });
    expect(notFound).not.toBeInstanceOf(Locked);
  });

  it('the lock that stood in the way comes as a Lock; none gives null', () => {
    const locked = errorFromWire({ code: 'LOCKED', message: 'm', lock: held }) as Locked;
    expect(locked.lock?.toString()).toBe("<Lock name='busy' locked_by='example.org' locked_until='2019-11-22 02:01:55.439000+00:00'>");
    expect((errorFromWire({ code: 'LOCKED', message: 'm' }) as Locked).lock).toBeNull();
    const notOwner = errorFromWire({ code: 'NOT_OWNER', message: 'm', lock: held }) as NotOwner;
    expect(notOwner.lock?.token).toBe(9);
  });

  it('INVALID_REQUEST keeps the details, field by field', () => {
    const details = [
      { field: 'name', problem: 'is required' },
      { field: 'wait', problem: 'must not be negative' },
    ];
    const err = errorFromWire({ code: 'INVALID_REQUEST', message: 'bad', details }) as InvalidRequest;
    expect(err.details).toEqual(details);
    expect((errorFromWire({ code: 'INVALID_REQUEST', message: 'bad' }) as InvalidRequest).details).toEqual([]);
  });

  it('an unknown code is a protocol mismatch, not a crash', () => {
    const err = errorFromWire({ code: 'SOMETHING_NEW', message: 'from a newer daemon' } as unknown as WireError);
    expect(err).toBeInstanceOf(LockError);
    expect(err.code).toBe('PROTOCOL_MISMATCH');
    expect(err.message).toContain('SOMETHING_NEW');
    expect(err.message).toContain('from a newer daemon');
  });

  it('client-side errors carry their own codes', () => {
    const noDaemon = new NoDaemon('lock.get');
    expect(noDaemon.code).toBe('NO_DAEMON');
    expect(noDaemon.message).toContain('lock.get');
    const timeout = new RequestTimeout('lock.get', 1500);
    expect(timeout.code).toBe('REQUEST_TIMEOUT');
    expect(timeout.message).toContain('1500 ms');
    expect(noDaemon).not.toBeInstanceOf(Locked);
  });
});
