/**
 * Request validation: turns an untrusted JSON body into a normalised request with every default
 * applied, or throws RequestInvalid listing each bad field. Durations come out in milliseconds,
 * null meaning "never expires".
 */
import {
  DEFAULT_EXPIRES,
  DEFAULT_LIST_LIMIT,
  DEFAULT_SESSION_TTL,
  MAX_SESSION_TTL,
  MIN_SESSION_TTL,
  type Endpoint,
  MAX_LIST_LIMIT,
  MAX_NAME_LENGTH,
  MAX_NAMES_PER_SET,
  MAX_SECONDS,
} from './protocol';

export interface FieldProblem {
  field: string;
  problem: string;
}

export class RequestInvalid extends Error {
  constructor(readonly details: FieldProblem[]) {
    super(details.map((d) => `${d.field}: ${d.problem}`).join('; '));
    this.name = 'RequestInvalid';
  }
}

const NAME_TOKEN = /^[^\s*>.]+$/;
export const MAX_REQUEST_ID_LENGTH = 64;
const REQUEST_ID = new RegExp(`^[A-Za-z0-9_.:-]{1,${MAX_REQUEST_ID_LENGTH}}$`);

// Control characters: PostgreSQL refuses NUL in text, and a name is also a NATS subject token.
// eslint-disable-next-line no-control-regex -- matching control characters is the point
const CONTROL = /[\u0000-\u001f\u007f]/;

/** A character a name's token may hold: NAME_TOKEN's and CONTROL's rules in one class. */
const TOKEN_CHAR = '[^\\s*>.\\u0000-\\u001f\\u007f]';
/** A valid name in one test (every request carries one): dot-separated tokens of allowed characters. */
const VALID_NAME = new RegExp(`^${TOKEN_CHAR}+(?:\\.${TOKEN_CHAR}+)*$`);

/** Why `name` is not a valid lock name, or null when it is. */
export function lockNameProblem(name: unknown): string | null {
  if (typeof name !== 'string') return 'must be a string';
  if (name.length === 0 || name.length > MAX_NAME_LENGTH) return `must be 1-${MAX_NAME_LENGTH} characters`;
  if (VALID_NAME.test(name)) return null;
  for (const token of name.split('.')) {
    if (token.length === 0) return 'must not have an empty dot-separated token';
    if (!NAME_TOKEN.test(token)) return "must not contain whitespace, '*' or '>'";
    if (CONTROL.test(token)) return 'must not contain control characters';
  }
  return null;
}

/**
 * What every request that changes something carries: a request id, so that a re-sent request is
 * never done twice (the daemon answers a repeat with the first outcome), and which attempt this is.
 */
export interface Mutation {
  requestId: string | null;
  /** 1 for a first send; more for a re-send of the same request id. */
  attempt: number;
}
export interface NormalizedSet extends Mutation {
  names: string[];
  expiresMs: number | null;
  fail: boolean;
  renew: boolean;
  create: boolean;
  lockedBy: string | null;
  process: number | null;
}
export interface NormalizedGet extends Mutation {
  name: string;
  expiresMs: number | null;
  lockedBy: string | null;
  process: number | null;
  waitMs: number;
  /** Send a WaitingNotice when the wait starts. */
  progress: boolean;
  /** The session the lock is bound to (expiresMs is then null: the session decides). */
  session: string | null;
}
export interface NormalizedUnlock extends Mutation {
  name: string;
  token: number | null;
}
export interface NormalizedRenew extends Mutation {
  name: string;
  expiresMs: number | null;
  addTime: boolean;
  create: boolean;
  token: number | null;
  lockedBy: string | null;
  process: number | null;
}
export interface NormalizedSessionOpen {
  ttlMs: number;
  lockedBy: string | null;
}
export interface NormalizedList {
  prefix: string | null;
  limit: number;
  after: string | null;
}
export interface NormalizedRequests {
  set: NormalizedSet;
  get: NormalizedGet;
  unlock: NormalizedUnlock;
  renew: NormalizedRenew;
  is_locked: { name: string };
  list: NormalizedList;
  clean: Mutation;
  reset: Mutation;
  session_open: NormalizedSessionOpen;
  session_keepalive: { session: string };
  session_close: { session: string };
  admin_set: NormalizedSet;
  admin_unlock: NormalizedUnlock;
  admin_renew: NormalizedRenew;
}

/** Collects problems field by field so one reply can name all of them. */
class Reader {
  readonly problems: FieldProblem[] = [];
  constructor(private readonly body: Record<string, unknown>) {}

  private bad(field: string, problem: string): null {
    this.problems.push({ field, problem });
    return null;
  }

  name(field: string): string {
    const value = this.body[field];
    if (value === undefined) return this.bad(field, 'is required') ?? '';
    const problem = lockNameProblem(value);
    return problem ? (this.bad(field, problem) ?? '') : (value as string);
  }

  /** Seconds -> ms. undefined takes the default; null, false or 0 mean never expires. */
  duration(field: string, fallback: number): number | null {
    const value = this.body[field];
    if (value === undefined) return fallback * 1000;
    if (value === null || value === false || value === 0) return null;
    const seconds = typeof value === 'string' && value.trim() !== '' ? Number(value) : value;
    if (typeof seconds !== 'number' || !Number.isFinite(seconds)) return this.bad(field, 'must be a number of seconds or null');
    if (seconds < 0) return this.bad(field, 'must not be negative (use 0 or null for a lock that never expires)');
    if (seconds > MAX_SECONDS) return this.bad(field, `must be at most ${MAX_SECONDS} seconds`);
    if (seconds === 0) return null;
    // A positive duration under half a millisecond must not round to 0, which means "never".
    return Math.max(1, Math.round(seconds * 1000));
  }

  /** Non-negative seconds -> ms, 0 when absent. */
  wait(field: string): number {
    const value = this.body[field];
    if (value === undefined || value === null || value === false) return 0;
    if (typeof value !== 'number' || !Number.isFinite(value)) return this.bad(field, 'must be a number of seconds') ?? 0;
    if (value < 0) return this.bad(field, 'must not be negative') ?? 0;
    if (value > MAX_SECONDS) return this.bad(field, `must be at most ${MAX_SECONDS} seconds`) ?? 0;
    return Math.round(value * 1000);
  }

  bool(field: string, fallback: boolean): boolean {
    const value = this.body[field];
    if (value === undefined || value === null) return fallback;
    if (typeof value !== 'boolean') return this.bad(field, 'must be true or false') ?? fallback;
    return value;
  }

  text(field: string, max = 255): string | null {
    const value = this.body[field];
    if (value === undefined || value === null || value === '') return null;
    if (typeof value !== 'string') return this.bad(field, 'must be a string');
    if (value.length > max) return this.bad(field, `must be at most ${max} characters`);
    // PostgreSQL cannot store NUL in text: refuse it here rather than fail in the database.
    if (value.includes('\u0000')) return this.bad(field, 'must not contain NUL characters');
    return value;
  }

  has(field: string): boolean {
    return this.body[field] !== undefined && this.body[field] !== null;
  }

  integer(field: string): number | null {
    const value = this.body[field];
    if (value === undefined || value === null) return null;
    const n = typeof value === 'string' && /^-?\d+$/.test(value) ? Number(value) : value;
    if (typeof n !== 'number' || !Number.isSafeInteger(n)) return this.bad(field, 'must be an integer');
    return n;
  }

  /** A session id (as a daemon draws them: the same characters as a request id). */
  session(field: string, required: boolean): string | null {
    const value = this.body[field];
    if (value === undefined || value === null) return required ? (this.bad(field, 'is required') ?? '') : null;
    if (typeof value !== 'string' || !REQUEST_ID.test(value)) return this.bad(field, 'must be a session id (from session.open)') ?? '';
    return value;
  }

  /** `request_id` and `attempt`, on the requests that change something. */
  mutation(): Mutation {
    const id = this.body.request_id;
    let requestId: string | null = null;
    if (id !== undefined && id !== null) {
      if (typeof id !== 'string' || !REQUEST_ID.test(id))
        this.bad('request_id', `must be 1-${MAX_REQUEST_ID_LENGTH} letters, digits or - _ . :`);
      else requestId = id;
    }
    const attempt = this.body.attempt ?? 1;
    if (typeof attempt !== 'number' || !Number.isInteger(attempt) || attempt < 1)
      return this.bad('attempt', 'must be an integer >= 1') ?? { requestId, attempt: 1 };
    return { requestId, attempt };
  }

  unknownFields(allowed: readonly string[]): void {
    for (const key of Object.keys(this.body)) {
      if (!allowed.includes(key)) this.bad(key, 'is not a field of this request');
    }
  }
}

const MUTATION_FIELDS = ['request_id', 'attempt'];
// The everyday and admin forms of set, unlock and renew take the same fields.
const SET_FIELDS = ['locks', 'timeout', 'fail', 'renew', 'create', 'locked_by', 'process_id', ...MUTATION_FIELDS];
const UNLOCK_FIELDS = ['name', 'token', ...MUTATION_FIELDS];
const RENEW_FIELDS = ['name', 'expires', 'add_time', 'create', 'token', 'locked_by', 'lock_process', ...MUTATION_FIELDS];
const FIELDS: Record<Endpoint, readonly string[]> = {
  set: SET_FIELDS,
  get: ['name', 'expires', 'locked_by', 'lock_process', 'wait', 'progress', 'session', ...MUTATION_FIELDS],
  unlock: UNLOCK_FIELDS,
  renew: RENEW_FIELDS,
  is_locked: ['name'],
  list: ['prefix', 'limit', 'after'],
  clean: [...MUTATION_FIELDS],
  reset: [...MUTATION_FIELDS],
  session_open: ['ttl', 'locked_by'],
  session_keepalive: ['session'],
  session_close: ['session'],
  admin_set: SET_FIELDS,
  admin_unlock: UNLOCK_FIELDS,
  admin_renew: RENEW_FIELDS,
};

function readGet(r: Reader, body: Record<string, unknown>): NormalizedGet {
  const session = r.session('session', false);
  if (session !== null && body.expires !== undefined && body.expires !== null) {
    r.problems.push({ field: 'expires', problem: 'must be left out with a session: the lock lasts as long as its session' });
  }
  return {
    name: r.name('name'),
    expiresMs: session === null ? r.duration('expires', DEFAULT_EXPIRES) : null,
    lockedBy: r.text('locked_by'),
    process: r.integer('lock_process'),
    waitMs: r.wait('wait'),
    progress: r.bool('progress', false),
    session,
    ...r.mutation(),
  };
}

function readSessionOpen(r: Reader, body: Record<string, unknown>): NormalizedSessionOpen {
  let ttlMs = DEFAULT_SESSION_TTL * 1000;
  const ttl = body.ttl;
  if (ttl !== undefined && ttl !== null) {
    if (typeof ttl !== 'number' || !Number.isFinite(ttl) || ttl < MIN_SESSION_TTL || ttl > MAX_SESSION_TTL) {
      r.problems.push({ field: 'ttl', problem: `must be a number of seconds from ${MIN_SESSION_TTL} to ${MAX_SESSION_TTL}` });
    } else ttlMs = Math.round(ttl * 1000);
  }
  return { ttlMs, lockedBy: r.text('locked_by') };
}

/** The subject to use instead, named in the refusals of by-name requests on the everyday subjects. */
const BY_NAME = (endpoint: string) => `is an admin operation: send it to the admin.${endpoint} subject`;

/**
 * The token on the everyday `unlock` and `renew`: required, so that they act only on the caller's
 * own grant. Acting by name is what the admin subjects are for.
 */
function ownToken(r: Reader, endpoint: 'unlock' | 'renew'): number | null {
  if (r.has('token')) return r.integer('token');
  r.problems.push({
    field: 'token',
    problem: `is required: ${endpoint === 'unlock' ? 'releasing' : 'renewing'} a lock by name ${BY_NAME(endpoint)}`,
  });
  return null;
}

function readSet(r: Reader, body: Record<string, unknown>, everyday: boolean): NormalizedSet {
  const locks = body.locks;
  const names: string[] = [];
  if (!Array.isArray(locks)) {
    r.problems.push({ field: 'locks', problem: 'must be an array of lock names' });
  } else if (locks.length > MAX_NAMES_PER_SET) {
    r.problems.push({ field: 'locks', problem: `must hold at most ${MAX_NAMES_PER_SET} names` });
  } else {
    locks.forEach((name, i) => {
      const problem = lockNameProblem(name);
      if (problem) r.problems.push({ field: `locks[${i}]`, problem });
      else names.push(name as string);
    });
  }
  return {
    names,
    expiresMs: r.duration('timeout', DEFAULT_EXPIRES),
    fail: r.bool('fail', false),
    renew: everyday ? everydayRenew(r) : r.bool('renew', true),
    create: r.bool('create', true),
    lockedBy: r.text('locked_by'),
    process: r.integer('process_id'),
    ...r.mutation(),
  };
}

/** The everyday `set` only creates: it renews nobody's lock (renew defaults to false and may not be true). */
function everydayRenew(r: Reader): boolean {
  if (r.bool('renew', false)) r.problems.push({ field: 'renew', problem: `renewing held locks by name ${BY_NAME('set')}` });
  return false;
}

function readUnlock(r: Reader, everyday: boolean): NormalizedUnlock {
  return { name: r.name('name'), token: everyday ? ownToken(r, 'unlock') : r.integer('token'), ...r.mutation() };
}

function readRenew(r: Reader, everyday: boolean): NormalizedRenew {
  return {
    name: r.name('name'),
    expiresMs: r.duration('expires', DEFAULT_EXPIRES),
    addTime: r.bool('add_time', false),
    create: r.bool('create', false),
    token: everyday ? ownToken(r, 'renew') : r.integer('token'),
    lockedBy: r.text('locked_by'),
    process: r.integer('lock_process'),
    ...r.mutation(),
  };
}

function readList(r: Reader, body: Record<string, unknown>): NormalizedList {
  let limit = DEFAULT_LIST_LIMIT;
  if (body.limit !== undefined && body.limit !== null) {
    const n = body.limit;
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > MAX_LIST_LIMIT) {
      r.problems.push({ field: 'limit', problem: `must be an integer from 1 to ${MAX_LIST_LIMIT}` });
    } else limit = n;
  }
  return { prefix: r.text('prefix'), limit, after: r.text('after') };
}

type Readers = { [E in Endpoint]: (r: Reader, body: Record<string, unknown>) => NormalizedRequests[E] };

/** How each endpoint's request is read; every default is applied here. */
const READERS: Readers = {
  set: (r, body) => readSet(r, body, true),
  get: readGet,
  unlock: (r) => readUnlock(r, true),
  renew: (r) => readRenew(r, true),
  is_locked: (r) => ({ name: r.name('name') }),
  list: readList,
  clean: (r) => r.mutation(),
  reset: (r) => r.mutation(),
  session_open: readSessionOpen,
  session_keepalive: (r) => ({ session: r.session('session', true)! }),
  session_close: (r) => ({ session: r.session('session', true)! }),
  admin_set: (r, body) => readSet(r, body, false),
  admin_unlock: (r) => readUnlock(r, false),
  admin_renew: (r) => readRenew(r, false),
};

/** Validate and normalise one request body for `endpoint`. Throws RequestInvalid. */
export function validateRequest<E extends Endpoint>(endpoint: E, body: unknown): NormalizedRequests[E] {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new RequestInvalid([{ field: '(body)', problem: 'must be a JSON object' }]);
  }
  const fields = body as Record<string, unknown>;
  const r = new Reader(fields);
  r.unknownFields(FIELDS[endpoint]);
  const read: Readers[E] = READERS[endpoint];
  const out = read(r, fields);
  if (r.problems.length > 0) throw new RequestInvalid(r.problems);
  return out;
}
