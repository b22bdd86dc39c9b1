/**
 * Request validation (shared/validate.ts): names, defaults, durations in seconds -> ms with
 * 0/null meaning "never expires", strict types, unknown fields, and one reply naming every
 * problem.
 */
import {
  DEFAULT_EXPIRES,
  DEFAULT_LIST_LIMIT,
  ENDPOINTS,
  MAX_LIST_LIMIT,
  MAX_NAME_LENGTH,
  MAX_NAMES_PER_SET,
  MAX_SECONDS,
} from '../../shared/protocol';
import { lockNameProblem, RequestInvalid, validateRequest, type FieldProblem } from '../../shared/validate';

/** The problems validateRequest reports for `body` (fails the test if it accepts it). */
function problems(endpoint: Parameters<typeof validateRequest>[0], body: unknown): FieldProblem[] {
  try {
    validateRequest(endpoint, body);
  } catch (err) {
    expect(err).toBeInstanceOf(RequestInvalid);
    return (err as RequestInvalid).details;
  }
  throw new Error(`${endpoint} ${JSON.stringify(body)} was accepted`);
}
const fields = (endpoint: Parameters<typeof validateRequest>[0], body: unknown) => problems(endpoint, body).map((p) => p.field);

describe('lockNameProblem', () => {
  it.each([
    'a',
    'hello',
    'orders.42',
    'a.b.c.d',
    'x'.repeat(MAX_NAME_LENGTH),
    'eoshist_sync:queue:user',
    'a-b_c/d@e+f=g,h;i',
    'ünïcödé',
    '$SYS',
  ])('accepts %j', (name) => {
    expect(lockNameProblem(name)).toBeNull();
  });

  it.each([
    [5, 'must be a string'],
    [null, 'must be a string'],
    [undefined, 'must be a string'],
    [['a'], 'must be a string'],
    ['', `must be 1-${MAX_NAME_LENGTH} characters`],
    ['x'.repeat(MAX_NAME_LENGTH + 1), `must be 1-${MAX_NAME_LENGTH} characters`],
    ['a..b', 'must not have an empty dot-separated token'],
    ['.a', 'must not have an empty dot-separated token'],
    ['a.', 'must not have an empty dot-separated token'],
    ['.', 'must not have an empty dot-separated token'],
    [' ', "must not contain whitespace, '*' or '>'"],
    ['a b', "must not contain whitespace, '*' or '>'"],
    ['a\tb', "must not contain whitespace, '*' or '>'"],
    ['a\nb', "must not contain whitespace, '*' or '>'"],
    ['a\u00a0b', "must not contain whitespace, '*' or '>'"],
    ['*', "must not contain whitespace, '*' or '>'"],
    ['>', "must not contain whitespace, '*' or '>'"],
    ['orders.*', "must not contain whitespace, '*' or '>'"],
    ['orders.>', "must not contain whitespace, '*' or '>'"],
    ['a*b', "must not contain whitespace, '*' or '>'"],
    ['a\u0000b', 'must not contain control characters'],
    ['a\u001bb', 'must not contain control characters'],
    ['a\u007fb', 'must not contain control characters'],
  ])('refuses %j: %s', (name, problem) => {
    expect(lockNameProblem(name)).toBe(problem);
  });
});

describe('validateRequest', () => {
  /** What a request carries when it is sent once, without a request id. */
  const FIRST_SEND = { requestId: null, attempt: 1 };

  describe('defaults, as django-lockmgr documents them', () => {
    it("admin.set (the seed's set_lock): 600 s, fail=false, renew=true, create=true, no owner", () => {
      expect(validateRequest('admin_set', { locks: ['a', 'b'] })).toEqual({
        names: ['a', 'b'],
        expiresMs: DEFAULT_EXPIRES * 1000,
        fail: false,
        renew: true,
        create: true,
        lockedBy: null,
        process: null,
        ...FIRST_SEND,
      });
    });

    it('get: 600 s, no wait', () => {
      expect(validateRequest('get', { name: 'a' })).toEqual({
        name: 'a',
        expiresMs: 600_000,
        lockedBy: null,
        process: null,
        waitMs: 0,
        progress: false,
        session: null,
        ...FIRST_SEND,
      });
    });

    it('sessions: 15 s ttl by default; a lock in a session takes its life from it (no expires)', () => {
      expect(validateRequest('session_open', {})).toEqual({ ttlMs: 15_000, lockedBy: null });
      expect(validateRequest('session_open', { ttl: 2.5, locked_by: 'w' })).toEqual({ ttlMs: 2500, lockedBy: 'w' });
      expect(validateRequest('get', { name: 'a', session: 'S-1' })).toMatchObject({ session: 'S-1', expiresMs: null });
      expect(validateRequest('session_keepalive', { session: 'S-1' })).toEqual({ session: 'S-1' });
    });

    it('sessions: bad ttl, missing or malformed ids, expires beside a session are refused', () => {
      const problems = (endpoint: Parameters<typeof validateRequest>[0], body: object) => {
        try {
          validateRequest(endpoint, body);
        } catch (err) {
          return (err as RequestInvalid).details.map((d) => d.field);
        }
        return [];
      };
      expect(problems('session_open', { ttl: 0.5 })).toEqual(['ttl']);
      expect(problems('session_open', { ttl: 3601 })).toEqual(['ttl']);
      expect(problems('session_open', { ttl: 'x' })).toEqual(['ttl']);
      expect(problems('session_keepalive', {})).toEqual(['session']);
      expect(problems('session_close', { session: 'a b' })).toEqual(['session']);
      expect(problems('get', { name: 'a', session: 'S', expires: 5 })).toEqual(['expires']);
      expect(problems('set', { locks: ['a'], session: 'S' })).toEqual(['session']);
    });

    it('admin.renew: 600 s, add_time=false, create=false, no token', () => {
      expect(validateRequest('admin_renew', { name: 'a' })).toEqual({
        name: 'a',
        expiresMs: 600_000,
        addTime: false,
        create: false,
        token: null,
        lockedBy: null,
        process: null,
        ...FIRST_SEND,
      });
    });

    it('admin.unlock, is_locked, list, clean, reset', () => {
      expect(validateRequest('admin_unlock', { name: 'a' })).toEqual({ name: 'a', token: null, ...FIRST_SEND });
      expect(validateRequest('is_locked', { name: 'a' })).toEqual({ name: 'a' });
      expect(validateRequest('list', {})).toEqual({ prefix: null, limit: DEFAULT_LIST_LIMIT, after: null });
      expect(validateRequest('clean', {})).toEqual(FIRST_SEND);
      expect(validateRequest('reset', {})).toEqual(FIRST_SEND);
    });

    it('request_id and attempt on the requests that change something; neither on reads', () => {
      expect(validateRequest('get', { name: 'a', request_id: 'c1.r-7:x_y', attempt: 3 })).toMatchObject({
        requestId: 'c1.r-7:x_y',
        attempt: 3,
      });
      expect(validateRequest('reset', { request_id: 'r' })).toEqual({ requestId: 'r', attempt: 1 });
      for (const [field, value] of [
        ['request_id', ''],
        ['request_id', 'has space'],
        ['request_id', 'x'.repeat(65)],
        ['request_id', 7],
        ['attempt', 0],
        ['attempt', 1.5],
        ['attempt', '2'],
      ] as const) {
        expect(() => validateRequest('unlock', { name: 'a', token: 1, [field]: value })).toThrow(RequestInvalid);
      }
      expect(() => validateRequest('is_locked', { name: 'a', request_id: 'r' })).toThrow(/request_id: is not a field of this request/);
      expect(() => validateRequest('list', { attempt: 1 })).toThrow(/attempt: is not a field of this request/);
    });

    it('null for an optional field means its default', () => {
      expect(
        validateRequest('admin_set', { locks: ['a'], fail: null, renew: null, create: null, locked_by: null, process_id: null }),
      ).toMatchObject({
        fail: false,
        renew: true,
        create: true,
        lockedBy: null,
        process: null,
      });
      expect(validateRequest('get', { name: 'a', wait: null, lock_process: null })).toMatchObject({ waitMs: 0, process: null });
    });
  });

  describe("the everyday subjects act on the caller's own grants only; acting by name is for the admin subjects", () => {
    it('unlock and renew need the token of the grant; admin.unlock and admin.renew take a name alone', () => {
      expect(problems('unlock', { name: 'a' })).toEqual([
        { field: 'token', problem: 'is required: releasing a lock by name is an admin operation: send it to the admin.unlock subject' },
      ]);
      expect(problems('renew', { name: 'a', expires: 5 })).toEqual([
        { field: 'token', problem: 'is required: renewing a lock by name is an admin operation: send it to the admin.renew subject' },
      ]);
      expect(problems('unlock', { name: 'a', token: null })).toEqual([expect.objectContaining({ field: 'token' })]);
      expect(validateRequest('unlock', { name: 'a', token: 7 })).toEqual({ name: 'a', token: 7, ...FIRST_SEND });
      expect(validateRequest('renew', { name: 'a', token: 7 })).toMatchObject({ name: 'a', token: 7 });
      expect(validateRequest('admin_renew', { name: 'a', token: 7 })).toMatchObject({ token: 7 });
    });

    it('set only creates: renew is false unless asked, and asking is refused; admin.set renews by default', () => {
      expect(validateRequest('set', { locks: ['a'] })).toMatchObject({ renew: false, create: true });
      expect(validateRequest('set', { locks: ['a'], renew: false })).toMatchObject({ renew: false });
      expect(problems('set', { locks: ['a'], renew: true })).toEqual([
        { field: 'renew', problem: 'renewing held locks by name is an admin operation: send it to the admin.set subject' },
      ]);
      expect(validateRequest('admin_set', { locks: ['a'] })).toMatchObject({ renew: true });
      expect(validateRequest('admin_set', { locks: ['a'], renew: false })).toMatchObject({ renew: false });
    });
  });

  describe('durations (seconds in, milliseconds out)', () => {
    it.each([
      [null, null],
      [0, null],
      [-0, null],
      [false, null],
      ['0', null],
      [1, 1000],
      [1.5, 1500],
      [0.25, 250],
      ['30', 30_000],
      [' 45 ', 45_000],
      [MAX_SECONDS, MAX_SECONDS * 1000],
    ])('expires %j -> %j ms', (expires, ms) => {
      expect(validateRequest('get', { name: 'a', expires }).expiresMs).toBe(ms);
      expect(validateRequest('renew', { name: 'a', token: 1, expires }).expiresMs).toBe(ms);
      expect(validateRequest('set', { locks: ['a'], timeout: expires }).expiresMs).toBe(ms);
    });

    it('a tiny positive duration is at least 1 ms, never "never expires" (fixed: no truncation to 0)', () => {
      expect(validateRequest('get', { name: 'a', expires: 0.0004 }).expiresMs).toBe(1);
      expect(validateRequest('set', { locks: ['a'], timeout: 1e-9 }).expiresMs).toBe(1);
    });

    it.each([-1, -0.001, '-5', MAX_SECONDS + 1, 'soon', '', ' ', true, {}, [], '1e400', 'NaN'])('expires %j is refused', (expires) => {
      expect(fields('get', { name: 'a', expires })).toEqual(['expires']);
      expect(fields('set', { locks: ['a'], timeout: expires })).toEqual(['timeout']);
    });

    it('a negative duration says how to ask for "never expires"', () => {
      expect(problems('set', { locks: ['a'], timeout: -5 })[0]!.problem).toMatch(/must not be negative.*0 or null/);
    });

    it.each([
      [undefined, 0],
      [null, 0],
      [false, 0],
      [0, 0],
      [7, 7000],
      [0.5, 500],
      [MAX_SECONDS, MAX_SECONDS * 1000],
    ])('wait %j -> %j ms (any non-negative number)', (wait, ms) => {
      expect(validateRequest('get', { name: 'a', wait }).waitMs).toBe(ms);
    });

    it.each([-5, -0.001, '5', true, MAX_SECONDS + 1, {}])('wait %j is refused', (wait) => {
      expect(fields('get', { name: 'a', wait })).toEqual(['wait']);
    });
  });

  describe('types', () => {
    it.each([
      ['fail', 'yes'],
      ['fail', 1],
      ['renew', 'false'],
      ['create', 0],
    ])('set %s=%j is refused (booleans are JSON booleans)', (field, value) => {
      expect(fields('set', { locks: ['a'], [field]: value })).toEqual([field]);
    });

    it('get progress: a JSON boolean', () => {
      expect(validateRequest('get', { name: 'a', wait: 1, progress: true }).progress).toBe(true);
      expect(fields('get', { name: 'a', progress: 'yes' })).toEqual(['progress']);
    });

    it('integers: numbers or digit strings, safe range only', () => {
      expect(validateRequest('get', { name: 'a', lock_process: 42 }).process).toBe(42);
      expect(validateRequest('get', { name: 'a', lock_process: '42' }).process).toBe(42);
      expect(validateRequest('set', { locks: ['a'], process_id: '-3' }).process).toBe(-3);
      expect(validateRequest('unlock', { name: 'a', token: 17 }).token).toBe(17);
      for (const bad of [1.5, '1.5', 'x', 2 ** 53, true, ''])
        expect(fields('get', { name: 'a', lock_process: bad })).toEqual(['lock_process']);
      expect(fields('renew', { name: 'a', token: 'abc' })).toEqual(['token']);
    });

    it("text fields: '' means none, at most 255 characters, no NUL", () => {
      expect(validateRequest('get', { name: 'a', locked_by: '' }).lockedBy).toBeNull();
      expect(validateRequest('get', { name: 'a', locked_by: 'me' }).lockedBy).toBe('me');
      expect(validateRequest('get', { name: 'a', locked_by: 'x'.repeat(255) }).lockedBy).toHaveLength(255);
      expect(fields('get', { name: 'a', locked_by: 'x'.repeat(256) })).toEqual(['locked_by']);
      expect(fields('get', { name: 'a', locked_by: 5 })).toEqual(['locked_by']);
      expect(fields('get', { name: 'a', locked_by: 'a\u0000b' })).toEqual(['locked_by']);
      expect(fields('list', { prefix: 'p\u0000' })).toEqual(['prefix']);
    });

    it('set locks: an array of valid names, at most the limit, each bad one named by index', () => {
      expect(fields('set', { locks: 'a' })).toEqual(['locks']);
      expect(fields('set', {})).toEqual(['locks']);
      expect(fields('set', { locks: ['ok', '', 'a b', 3] })).toEqual(['locks[1]', 'locks[2]', 'locks[3]']);
      const max = Array.from({ length: MAX_NAMES_PER_SET }, (_, i) => `n${i}`);
      expect(validateRequest('set', { locks: max }).names).toHaveLength(MAX_NAMES_PER_SET);
      expect(problems('set', { locks: [...max, 'one-more'] })).toEqual([
        { field: 'locks', problem: `must hold at most ${MAX_NAMES_PER_SET} names` },
      ]);
      expect(validateRequest('set', { locks: [] }).names).toEqual([]);
      expect(validateRequest('set', { locks: ['d', 'd'] }).names).toEqual(['d', 'd']);
    });

    it('list limit is an integer from 1 to the maximum', () => {
      expect(validateRequest('list', { limit: 1 }).limit).toBe(1);
      expect(validateRequest('list', { limit: MAX_LIST_LIMIT }).limit).toBe(MAX_LIST_LIMIT);
      for (const limit of [0, -1, MAX_LIST_LIMIT + 1, 1.5, '10']) expect(fields('list', { limit })).toEqual(['limit']);
      expect(validateRequest('list', { prefix: 'orders.', after: 'orders.1' })).toEqual({
        prefix: 'orders.',
        limit: DEFAULT_LIST_LIMIT,
        after: 'orders.1',
      });
    });
  });

  describe('shape', () => {
    it.each([null, [], [{ name: 'a' }], 'a', 42, true, undefined])('body %j is not an object', (body) => {
      for (const endpoint of ENDPOINTS) expect(problems(endpoint, body)).toEqual([{ field: '(body)', problem: 'must be a JSON object' }]);
    });

    it('unknown fields are refused on every endpoint, by name', () => {
      expect(fields('get', { name: 'a', timeout: 5 })).toEqual(['timeout']);
      expect(fields('set', { locks: ['a'], expires: 5 })).toEqual(['expires']);
      expect(fields('renew', { name: 'a', token: 1, wait: 5 })).toEqual(['wait']);
      expect(fields('unlock', { name: 'a', token: 1, force: true })).toEqual(['force']);
      expect(fields('is_locked', { name: 'a', token: 1 })).toEqual(['token']);
      expect(fields('list', { name: 'a' })).toEqual(['name']);
      expect(fields('clean', { all: true })).toEqual(['all']);
      expect(fields('reset', { force: true })).toEqual(['force']);
    });

    it('names are required where the endpoint takes one', () => {
      for (const endpoint of ['get', 'admin_unlock', 'admin_renew', 'is_locked'] as const) {
        expect(problems(endpoint, {})).toEqual([{ field: 'name', problem: 'is required' }]);
      }
      for (const endpoint of ['unlock', 'renew'] as const) {
        expect(problems(endpoint, { token: 1 })).toEqual([{ field: 'name', problem: 'is required' }]);
      }
    });

    it('every problem is reported at once, unknown fields first, then field by field', () => {
      const err = (() => {
        try {
          validateRequest('get', { name: '', expires: -1, wait: 'x', lock_process: 1.5, extra: 1 });
        } catch (e) {
          return e as RequestInvalid;
        }
        throw new Error('accepted');
      })();
      expect(err.details.map((d) => d.field)).toEqual(['extra', 'name', 'expires', 'lock_process', 'wait']);
      expect(err.message).toBe(err.details.map((d) => `${d.field}: ${d.problem}`).join('; '));
      expect(err.name).toBe('RequestInvalid');
    });
  });
});
