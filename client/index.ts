export { LockClient } from './lock-client';
export type {
  LockClientOptions,
  ConnectOptions,
  RequestOptions,
  CallOptions,
  SetLockOptions,
  GetLockOptions,
  RenewLockOptions,
  ListLocksOptions,
} from './lock-client';
export { LockManager } from './lock-manager';
export type { WithLockOptions, ManagerLockOptions, ManagerRenewOptions } from './lock-manager';
export { Lock, LockSetResult, pythonTime } from './lock';
export {
  LockError,
  Locked,
  LockFail,
  LockNotFound,
  NotOwner,
  InvalidRequest,
  StoreUnavailable,
  InternalError,
  NoDaemon,
  RequestTimeout,
  OutcomeUnknown,
  ReplyTooLarge,
  AuthorityConflict,
  SessionNotFound,
  DaemonStopping,
  NatsUnavailable,
  ConnectionClosed,
  PermissionDenied,
  NatsFailure,
  Cancelled,
  errorFromWire,
  errorFromNats,
} from './errors';
export { Session, LockLost } from './session';
export type { SessionOptions } from './session';
export { HeldLock } from './held-lock';
export type { ClientErrorCode, NatsErrorContext } from './errors';
export {
  setLock,
  getLock,
  unlock,
  renewLock,
  isLocked,
  listLocks,
  cleanLocks,
  resetLocks,
  withLock,
  close,
  getDefaultClient,
} from './default-client';
export type { LockRecord, LockSetStatus, LockSetCounts, LockSetResultRecord } from '../shared/protocol';
export type { LockEvent, EventType, EventCause } from '../shared/events';
export { EVENT_TYPES } from '../shared/events';
export { LockEventStream, EventsUnavailable, DEFAULT_EVENTS_STREAM, defaultEventsStream, eventsStreamName, subjectMatches } from './events';
export type { EventsOptions, ReceivedLockEvent } from './events';
