/**
 * Error classes with stable codes, mapped from the wire in one place (`errorFromWire`).
 * `LockFail` is a kind of `Locked`, as in django-lockmgr, so `catch (e) { if (e instanceof Locked) }`
 * covers both.
 */
import type { FieldProblem } from '../shared/validate';
import type { WireError } from '../shared/protocol';
import { Lock } from './lock';

export type ClientErrorCode =
  WireError['code'] | 'NO_DAEMON' | 'REQUEST_TIMEOUT' | 'PROTOCOL_MISMATCH' | 'EVENTS_UNAVAILABLE' | 'LOCK_LOST';

export class LockError extends Error {
  constructor(
    readonly code: ClientErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The lock is held by someone else (`get` on a held name; `withLock` that could not enter). */
export class Locked extends LockError {
  /** The lock that stood in the way, when the daemon said. */
  readonly lock: Lock | null;
  constructor(message: string, lock?: Lock | null, code: ClientErrorCode = 'LOCKED') {
    super(code, message);
    this.lock = lock ?? null;
  }
}

/** `setLock(..., {fail: true})` met a held lock; nothing the request did was kept. */
export class LockFail extends Locked {
  constructor(message: string, lock?: Lock | null) {
    super(message, lock, 'LOCK_FAIL');
  }
}

/** `renewLock` of a lock that does not exist (or has expired) without `create: true`. */
export class LockNotFound extends LockError {
  constructor(message: string) {
    super('LOCK_NOT_FOUND', message);
  }
}

/** The lock was granted to someone else since your grant (your token no longer holds it). */
export class NotOwner extends LockError {
  readonly lock: Lock | null;
  constructor(message: string, lock?: Lock | null) {
    super('NOT_OWNER', message);
    this.lock = lock ?? null;
  }
}

/** The request was malformed; `details` names each bad field. */
export class InvalidRequest extends LockError {
  constructor(
    message: string,
    readonly details: FieldProblem[] = [],
  ) {
    super('INVALID_REQUEST', message);
  }
}

/** The daemon's database is unreachable; the request did nothing and may be retried. */
export class StoreUnavailable extends LockError {
  constructor(message: string) {
    super('STORE_UNAVAILABLE', message);
  }
}

/** The daemon failed unexpectedly; its log says why. */
export class InternalError extends LockError {
  constructor(message: string) {
    super('INTERNAL', message);
  }
}

/** No daemon listens on the subject: start one (`npm start` / `lockmgr daemon`) or check the prefix. */
export class NoDaemon extends LockError {
  constructor(subject: string, options?: { cause?: unknown }) {
    super('NO_DAEMON', `no lockmgr daemon answers on ${subject}: start one (lockmgr daemon) or check the prefix and NATS URL`, options);
  }
}

/** No daemon answered within the call's timeout (its request was sent again meanwhile), or a grant came too late to use. */
export class RequestTimeout extends LockError {
  constructor(subject: string, timeoutMs: number, options?: { cause?: unknown }, message?: string) {
    super('REQUEST_TIMEOUT', message ?? `no reply on ${subject} within ${timeoutMs} ms`, options);
  }
}

/**
 * The daemon lost its database while committing the request, and the call's time ran out before
 * a re-send could learn whether it was done. A later re-send with the same request id would tell.
 */
export class OutcomeUnknown extends LockError {
  constructor(message: string) {
    super('OUTCOME_UNKNOWN', message);
  }
}

/** The reply would not fit in a NATS message: nothing was done; ask for less (fewer names). */
export class ReplyTooLarge extends LockError {
  constructor(message: string) {
    super('REPLY_TOO_LARGE', message);
  }
}

/** The daemon that answered refuses to serve: another daemon serves the prefix from another store. */
export class AuthorityConflict extends LockError {
  constructor(message: string) {
    super('AUTHORITY_CONFLICT', message);
  }
}

/** The session has lapsed (or never existed): every lock held in it is lost. */
export class SessionNotFound extends LockError {
  constructor(message: string) {
    super('SESSION_NOT_FOUND', message);
  }
}

/** The one place a wire error becomes a client error. */
export function errorFromWire(error: WireError): LockError {
  const lock = error.lock ? Lock.fromRecord(error.lock) : null;
  switch (error.code) {
    case 'LOCKED':
      return new Locked(error.message, lock);
    case 'LOCK_FAIL':
      return new LockFail(error.message, lock);
    case 'LOCK_NOT_FOUND':
      return new LockNotFound(error.message);
    case 'NOT_OWNER':
      return new NotOwner(error.message, lock);
    case 'INVALID_REQUEST':
      return new InvalidRequest(error.message, error.details);
    case 'STORE_UNAVAILABLE':
      return new StoreUnavailable(error.message);
    case 'OUTCOME_UNKNOWN':
      return new OutcomeUnknown(error.message);
    case 'REPLY_TOO_LARGE':
      return new ReplyTooLarge(error.message);
    case 'AUTHORITY_CONFLICT':
      return new AuthorityConflict(error.message);
    case 'SESSION_NOT_FOUND':
      return new SessionNotFound(error.message);
    case 'INTERNAL':
      return new InternalError(error.message);
    default:
      return new LockError('PROTOCOL_MISMATCH', `unknown error code ${String((error as WireError).code)}: ${(error as WireError).message}`);
  }
}
