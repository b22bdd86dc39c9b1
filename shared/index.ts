export {
  PROTOCOL_VERSION,
  DEFAULT_PREFIX,
  DEFAULT_EXPIRES,
  DEFAULT_RENEW_SECONDS,
  MAX_SECONDS,
  MAX_NAMES_PER_SET,
  MAX_PAYLOAD_BYTES,
  MAX_NAME_LENGTH,
  MAX_LIST_LIMIT,
  DEFAULT_LIST_LIMIT,
  ENDPOINTS,
  ErrorCode,
  ERROR_STATUS,
  requestSubject,
} from './protocol';
export type {
  Endpoint,
  Api,
  LockRecord,
  LockSetStatus,
  LockSetStatusName,
  LockSetCounts,
  LockSetResultRecord,
  SetRequest,
  GetRequest,
  UnlockRequest,
  RenewRequest,
  IsLockedRequest,
  ListRequest,
  UnlockResult,
  IsLockedResult,
  ListResult,
  RemovedResult,
  WireError,
  Reply,
} from './protocol';
export { validateRequest, lockNameProblem, RequestInvalid } from './validate';
export type { FieldProblem, NormalizedRequests } from './validate';
export { EVENT_TYPES, eventSubject } from './events';
export type { EventType, EventCause, LockEvent } from './events';
