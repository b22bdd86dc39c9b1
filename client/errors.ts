/**
 * Error classes with stable codes: every failure a caller of the client sees is one of them.
 * Daemon answers are mapped in one place (`errorFromWire`), nats.js errors in another
 * (`errorFromNats`), keeping the original as `cause`.
 * `LockFail` is a kind of `Locked`, as in django-lockmgr, so `catch (e) { if (e instanceof Locked) }`
 * covers both.
 */
import { ErrorCode as NatsErrorCode } from 'nats';
import type { FieldProblem } from '../shared/validate';
import type { WireError } from '../shared/protocol';
import { Lock } from './lock';

export type ClientErrorCode =
  | WireError['code']
  | 'NO_DAEMON'
  | 'REQUEST_TIMEOUT'
  | 'PROTOCOL_MISMATCH'
  | 'EVENTS_UNAVAILABLE'
  | 'NATS_UNAVAILABLE'
  | 'CONNECTION_CLOSED'
  | 'PERMISSION_DENIED'
  | 'NATS_ERROR'
  | 'CANCELLED'
  | 'LOCK_LOST';

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
    options?: { cause?: unknown },
  ) {
    super('INVALID_REQUEST', message, options);
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

/**
 * The daemon that had the request is stopping (a drain) and gave up its wait; the client sent the
 * request again meanwhile, and no other daemon answered within the call's time.
 */
export class DaemonStopping extends LockError {
  constructor(message: string) {
    super('DAEMON_STOPPING', message);
  }
}

/**
 * NATS cannot be reached: at connect (refused, timed out, unknown host), or, during a call, the
 * connection was down (reconnecting) when the call's time ran out. Calls work again once NATS is
 * back; a client keeps reconnecting unless told otherwise (`reconnect`).
 */
export class NatsUnavailable extends LockError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('NATS_UNAVAILABLE', message, options);
  }
}

/**
 * The client's NATS connection is closed: `close()` was called, or it gave up reconnecting
 * (`reconnect: false` or a number of attempts). Connect a new client.
 */
export class ConnectionClosed extends LockError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('CONNECTION_CLOSED', message, options);
  }
}

/**
 * NATS refused: a subject this user may not publish or subscribe to (PERMISSIONS_VIOLATION), a
 * login it does not accept (AUTHORIZATION_VIOLATION, expired credentials), or a TLS connection
 * (a client certificate it does not accept, or a server certificate this client cannot trust).
 */
export class PermissionDenied extends LockError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('PERMISSION_DENIED', message, options);
  }
}

/** Any other error nats.js reported; `cause` is that error (its `code` says which). */
export class NatsFailure extends LockError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('NATS_ERROR', message, options);
  }
}

/** The call's `signal` was aborted; `cause` is the signal's reason. A request already sent may have been done. */
export class Cancelled extends LockError {
  constructor(what: string, reason: unknown) {
    super('CANCELLED', `${what} cancelled${reasonText(reason)}`, { cause: reason });
  }
}

function reasonText(reason: unknown): string {
  if (reason instanceof Error) return reason.name === 'AbortError' ? '' : `: ${reason.message}`;
  return reason === undefined ? '' : `: ${String(reason)}`;
}

/** Where a nats.js error happened, for the message. */
export interface NatsErrorContext {
  /** The request subject of a call. */
  subject?: string;
  /** Connecting to these servers (credentials masked). */
  connecting?: string;
}

/**
 * The one place a nats.js error (or any other that reached the client from NATS) becomes a client
 * error. LockErrors pass through unchanged.
 */
export function errorFromNats(err: unknown, context: NatsErrorContext = {}): LockError {
  if (err instanceof LockError) return err;
  const code = typeof (err as { code?: unknown } | null)?.code === 'string' ? (err as { code: string }).code : '';
  const text = err instanceof Error ? err.message : String(err);
  const on = context.subject ? ` (${context.subject})` : '';
  const options = { cause: err };
  switch (code) {
    case NatsErrorCode.ConnectionClosed:
    case NatsErrorCode.ConnectionDraining:
      return new ConnectionClosed(`the NATS connection is closed${on}: connect a new client`, options);
    case NatsErrorCode.PermissionsViolation:
      return new PermissionDenied(`NATS refused${on}: ${text}: grant this NATS user the lockmgr subjects (and _INBOX.>)`, options);
    case NatsErrorCode.AuthorizationViolation:
    case NatsErrorCode.AuthenticationExpired:
    case NatsErrorCode.AuthenticationTimeout:
    case NatsErrorCode.AccountExpired:
    case NatsErrorCode.BadAuthentication:
    case NatsErrorCode.BadCreds:
      return new PermissionDenied(
        `NATS refused the login${context.connecting ? ` at ${context.connecting}` : ''}: ${text}: check the credentials (user:pass@ or token@ in the URL, or creds)`,
        options,
      );
    case 'NATS_CREDENTIALS': {
      // A login or TLS setting that cannot be used (shared/connect's NatsCredentialsError).
      const { setting = 'creds', problem = 'cannot be read' } = err as { setting?: string; problem?: string };
      return new InvalidRequest(text, [{ field: setting, problem }], options);
    }
    case 'NATS_TLS':
      return new PermissionDenied(text, options);
    case NatsErrorCode.MaxPayloadExceeded:
      return new InvalidRequest(
        `the request is larger than the NATS server accepts${on}: ${text}`,
        [{ field: '(body)', problem: 'larger than the NATS server max_payload' }],
        options,
      );
    case NatsErrorCode.BadSubject:
      return new InvalidRequest(
        `not a valid NATS subject${on}: check the prefix`,
        [{ field: 'prefix', problem: 'not a valid NATS subject' }],
        options,
      );
    case NatsErrorCode.NoResponders:
      if (context.subject) return new NoDaemon(context.subject, options);
      break;
    case NatsErrorCode.ConnectionRefused:
    case NatsErrorCode.ConnectionTimeout:
    case NatsErrorCode.Disconnect:
      return new NatsUnavailable(`cannot reach NATS${context.connecting ? ` at ${context.connecting}` : on}: ${text}`, options);
  }
  // Anything else while connecting (a timeout, an unknown host, a TLS failure) leaves no connection.
  if (context.connecting) return new NatsUnavailable(`cannot reach NATS at ${context.connecting}: ${text}`, options);
  return new NatsFailure(`NATS error${on}: ${text}${code ? ` (${code})` : ''}`, options);
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
    case 'DAEMON_STOPPING':
      return new DaemonStopping(error.message);
    case 'INTERNAL':
      return new InternalError(error.message);
    default:
      return new LockError('PROTOCOL_MISMATCH', `unknown error code ${String((error as WireError).code)}: ${(error as WireError).message}`);
  }
}
