/**
 * The statements only the PostgreSQL backend runs (the portable lock, outbox and outcome statements
 * are in store/sql-tx.ts and store/sql-outbox.ts). `?` placeholders, numbered when prepared.
 */
import { OUTBOX_COLUMNS, OUTBOX_SQL } from '../sql-outbox';
import { LIVE, LOCK_COLUMNS, OUTCOME_SQL, SESSION_COLUMNS, SESSION_SQL, withOwnedTwin, type BackendLockSql } from '../sql-tx';

/** Arbitrary constants naming the advisory locks of the schema migration and of the relay lease. */
export const MIGRATION_LOCK_KEY = 7735342101;
export const RELAY_LOCK_KEY = 7735342102;

/**
 * Renewals never shorten a lock; a lock that never expires stays that way unless made so. The new
 * expiry counts from the moment of the statement (`lockmgr_now_ms()`, migration 0008): parameters
 * () for forever, (ms) for add, (ms, ms) for extend, then (name, now[, token]).
 */
export const POSTGRES_LOCK_SQL: BackendLockSql = {
  renew: {
    forever: withOwnedTwin(`UPDATE lockmgr_locks SET locked_until = NULL, updated_at = lockmgr_now_ms() WHERE name = ? AND ${LIVE}`),
    add: withOwnedTwin(
      `UPDATE lockmgr_locks SET locked_until = CASE WHEN locked_until IS NULL THEN NULL ELSE locked_until + ? END, updated_at = lockmgr_now_ms() WHERE name = ? AND ${LIVE}`,
    ),
    extend: withOwnedTwin(
      `UPDATE lockmgr_locks SET locked_until = CASE WHEN locked_until IS NULL OR locked_until >= lockmgr_now_ms() + ? THEN locked_until ELSE lockmgr_now_ms() + ? END, updated_at = lockmgr_now_ms() WHERE name = ? AND ${LIVE}`,
    ),
  },
  // The soonest expired first, a page at a time, skipping rows another session holds (a stuck
  // transaction must not stop the sweep of every other lock). The expiry test is repeated outside
  // the subquery: PostgreSQL re-checks only the outer condition on a row another transaction
  // changed meanwhile, so without it a sweep would delete a lock renewed by another daemon while
  // the sweep waited for that row. (now, limit, now)
  deleteExpired: `DELETE FROM lockmgr_locks WHERE name IN (SELECT name FROM lockmgr_locks WHERE locked_until IS NOT NULL AND locked_until <= ? ORDER BY locked_until LIMIT ? FOR UPDATE SKIP LOCKED) AND locked_until IS NOT NULL AND locked_until <= ? RETURNING ${LOCK_COLUMNS}`,
  // FOR SHARE: a keepalive of another daemon waits until this transaction ends, and one that
  // committed first is seen; a lock bound now gets the session's expiry as it stands.
  liveSession: `SELECT ${SESSION_COLUMNS} FROM lockmgr_sessions WHERE id = ? AND expires_at > ? FOR SHARE`,
};

export const POSTGRES_SQL = {
  /** Open a transaction and read the database's clock (ms since the epoch) in one round trip. */
  begin: 'BEGIN; SELECT lockmgr_now_ms() AS now',
  commit: 'COMMIT',
  rollback: 'ROLLBACK',
  /**
   * (name, locked_by, process, expires_ms): the row goes in with token 0 and takes its token from
   * the sequence only once it is in, its expiry counted from that moment (migration 0008).
   */
  insertLock: `SELECT ${LOCK_COLUMNS} FROM lockmgr_grant(?, ?, ?, ?)`,
  /** (kinds[], names[], locked_by[], process[], expires_ms[], token[]): see migrations 0005, 0008 and 0009. */
  firstPass:
    'SELECT op, l_name AS name, l_locked_by AS locked_by, l_lock_process AS lock_process, l_locked_until AS locked_until, ' +
    'l_created_at AS created_at, l_updated_at AS updated_at, l_token AS token, l_session_id AS session_id ' +
    'FROM lockmgr_first_pass_v3(?::text[], ?::varchar[], ?::varchar[], ?::bigint[], ?::bigint[], ?::bigint[])',
  /**
   * Events numbered by the outbox's sequence in the order given: (event_id[], type[], name[],
   * lock[], cause[], daemon[], at[]). Each row comes back with `prev`, the newest row of the same
   * lock already in the outbox (committed earlier: the lock's row is held by this transaction), or
   * null: an event may be published once `prev` is in the stream (migration 0010).
   */
  insertOutbox:
    'WITH ins AS (INSERT INTO lockmgr_outbox (event_id, type, name, lock, cause, daemon, at) ' +
    'SELECT e, t, n, l, c, d, a FROM unnest(?::varchar[], ?::varchar[], ?::varchar[], ?::text[], ?::text[], ?::varchar[], ?::bigint[]) ' +
    'WITH ORDINALITY AS u(e, t, n, l, c, d, a, k) ORDER BY k RETURNING seq, event_id, name) ' +
    'SELECT ins.seq, ins.event_id, (SELECT max(o.seq) FROM lockmgr_outbox o WHERE o.name = ins.name) AS prev FROM ins',
  /** (id[], outcome[], expires_at[]): an id recorded meanwhile fails the statement (unique violation). */
  insertOutcomes: 'INSERT INTO lockmgr_requests (id, outcome, expires_at) SELECT * FROM unnest(?::varchar[], ?::text[], ?::bigint[])',
  /** (id[]): outcomes kept under these ids, marked answered to a repeat; on the database's clock. */
  recall: 'UPDATE lockmgr_requests SET replayed = 1 WHERE id = ANY(?::varchar[]) AND expires_at > lockmgr_now_ms() RETURNING id, outcome',
  /** (seqs[]) */
  removeOutboxRows: 'DELETE FROM lockmgr_outbox WHERE seq = ANY(?::bigint[])',
  /** (seqs[]): those still in the outbox. */
  outboxHas: 'SELECT seq FROM lockmgr_outbox WHERE seq = ANY(?::bigint[])',
  /** (stale_ms, limit): the oldest rows, each marked stale when older than stale_ms on the database's clock. */
  readStale: `SELECT ${OUTBOX_COLUMNS}, at < lockmgr_now_ms() - ? AS stale FROM lockmgr_outbox ORDER BY seq LIMIT ?`,
  /** The store's identity (migration 0006). */
  identity: "SELECT value FROM lockmgr_meta WHERE key = 'store_id'",
  /** (key) */
  tryLease: 'SELECT pg_try_advisory_lock(?) AS got',
  /** (key): held for the rest of the migration's transaction. */
  migrationLock: 'SELECT pg_advisory_xact_lock(?)',
} as const;

/**
 * Statements planned anew at each run rather than once per connection: they look rows up in tables
 * whose size swings (outcomes kept for minutes, an outbox that grows while NATS is away, sessions).
 * A plan a connection keeps from when such a table was nearly empty reads the whole table once it
 * has grown (seen: the request-id look-up at 2–8 ms per batch after seconds of load on a new
 * database, until autovacuum's next ANALYZE). Planning one of these costs tens of µs.
 */
export const PLANNED_EACH_RUN: ReadonlySet<string> = new Set([
  POSTGRES_SQL.recall,
  POSTGRES_SQL.removeOutboxRows,
  POSTGRES_SQL.outboxHas,
  POSTGRES_SQL.readStale,
  OUTBOX_SQL.read,
  OUTBOX_SQL.readBefore,
  OUTBOX_SQL.removeThrough,
  OUTBOX_SQL.count,
  OUTCOME_SQL.forget,
  OUTCOME_SQL.deleteExpired,
  SESSION_SQL.deleteExpired,
  POSTGRES_LOCK_SQL.deleteExpired,
]);
