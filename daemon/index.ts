export { LockDaemon, SERVICE_NAME, SERVICE_VERSION } from './lock-daemon';
export type { LockDaemonOptions } from './lock-daemon';
export { loadConfig, maskedConfig, envName, flagName, OPTIONS, ConfigError } from './config';
export type { DaemonConfig, ConfigKey, ConfigSource, LoadedConfig } from './config';
export { createLogger } from './logger';
export type { Logger, LogLevel } from './logger';
export { Database, dialectOf } from './store/database';
export { migrate, pendingMigrations } from './store/migrations';
