/**
 * Opens the store a database URL names: a `postgres://` URL is the PostgreSQL backend, anything
 * else a SQLite file. The one place that chooses a backend.
 */
import type { Clock } from '../clock';
import { maskUrlSecrets } from '../../shared/nats-url';
import { PostgresStore, postgresUrlProblem } from './postgres/postgres-store';
import { SqliteStore } from './sqlite/sqlite-store';
import type { Store } from './store';

export interface StoreOptions {
  /** A SQLite file path, or a `postgres://` URL. */
  url: string;
  /** The daemon's instance id, written into each event. */
  daemonId: string;
  /** PostgreSQL: connections in the pool. */
  poolSize?: number;
  /** PostgreSQL: how long a statement may wait for a row, run, or a session idle in a transaction (ms). */
  lockTimeoutMs?: number;
  statementTimeoutMs?: number;
  idleInTransactionTimeoutMs?: number;
  /** SQLite: the `synchronous` pragma. */
  sqliteSynchronous?: 'FULL' | 'NORMAL';
  /** SQLite: ms between WAL checkpoints by a worker thread (0: SQLite's own, inside commits). */
  sqliteCheckpointInterval?: number;
  /** SQLite: bound on the `-wal` file, in MiB. */
  sqliteWalLimit?: number;
  clock?: Clock;
}

export function isPostgresUrl(url: string): boolean {
  return /^postgres(ql)?:\/\//i.test(url);
}

export function openStore(options: StoreOptions): Store {
  if (isPostgresUrl(options.url)) {
    return new PostgresStore({
      url: options.url,
      daemonId: options.daemonId,
      poolSize: options.poolSize,
      lockTimeoutMs: options.lockTimeoutMs,
      statementTimeoutMs: options.statementTimeoutMs,
      idleInTransactionTimeoutMs: options.idleInTransactionTimeoutMs,
    });
  }
  return new SqliteStore({
    file: options.url,
    daemonId: options.daemonId,
    synchronous: options.sqliteSynchronous,
    checkpointIntervalMs: options.sqliteCheckpointInterval,
    walLimitMb: options.sqliteWalLimit,
    clock: options.clock,
  });
}

/** Why `url` is not a usable database URL (a `postgres://` URL that does not parse), or null. */
export function databaseUrlProblem(url: string): string | null {
  return isPostgresUrl(url) ? postgresUrlProblem(url) : null;
}

/** A database URL with any password masked, for logs and `lockmgr config`. */
export function maskDatabaseUrl(url: string): string {
  return isPostgresUrl(url) ? maskUrlSecrets(url) : url;
}

export type { Store } from './store';
