/**
 * `lockmgr daemon`, `lockmgr config`, `lockmgr migrate`.
 */
import { LockDaemon } from '../daemon/lock-daemon';
import { OPTIONS, envName, maskedConfig, type ConfigKey } from '../daemon/config';
import { createLogger, type LogLevel } from '../daemon/logger';
import { AuthorityConflict } from '../daemon/authority';
import { StartAborted } from '../daemon/backoff';
import { openStore } from '../daemon/store';
import { StoreInUse } from '../daemon/store/store';
import { NatsCredentialsError } from '../shared/connect';
import { EXIT, count } from './client-common';
import { resolveConfig } from './options';

export async function daemonCommand(argv: Record<string, unknown>): Promise<void> {
  const { config } = resolveConfig(argv);
  const logger = createLogger({ level: config.logLevel as LogLevel, format: config.logFormat as 'auto' });
  const daemon = new LockDaemon({ config, logger });
  let signals = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    signals += 1;
    if (signals > 1) {
      logger.warn(`second ${signal}: exiting now`);
      process.exit(130);
    }
    logger.info(`${signal} received: draining (send it again to exit at once)`);
    const force = setTimeout(
      () => {
        logger.error(`drain took longer than ${config.drainTimeout}s: exiting now`);
        process.exit(1);
      },
      (config.drainTimeout + 5) * 1000,
    );
    force.unref();
    daemon.stop().then(
      () => process.exit(0),
      (err) => {
        logger.error(`stop failed: ${(err as Error).message}`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  // NATS gone for good (not a disconnect: those are reconnected forever): exit 1, so that a
  // supervisor starts the daemon again.
  void daemon.natsLost.then(async () => {
    await daemon.stop(1000).catch(() => undefined);
    process.exit(EXIT.ERROR);
  });
  try {
    await daemon.start();
  } catch (err) {
    // A signal stopped the daemon while it waited for NATS or the database: that stop exits 0.
    if (err instanceof StartAborted) return;
    // Another daemon serves the store or the prefix: one line saying so, and an exit code of its own.
    const conflict = err instanceof StoreInUse || err instanceof AuthorityConflict;
    // A NATS login or TLS file that cannot be used is bad configuration, as a bad option is.
    const badConfig = err instanceof NatsCredentialsError;
    logger.error(`daemon ${conflict ? 'refused to start' : 'failed to start'}: ${(err as Error).message}`);
    await daemon.stop(1000).catch(() => undefined);
    process.exit(conflict ? EXIT.CONFLICT : badConfig ? EXIT.CONFIG : EXIT.ERROR);
  }
}

export async function configCommand(argv: Record<string, unknown>): Promise<void> {
  const { config, sources } = resolveConfig(argv);
  const masked = maskedConfig(config);
  if (argv.json) {
    const out: Record<string, { value: unknown; source: string }> = {};
    for (const key of Object.keys(OPTIONS) as ConfigKey[]) out[key] = { value: masked[key], source: sources[key] };
    process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
    return;
  }
  const width = Math.max(...Object.keys(OPTIONS).map((k) => k.length));
  for (const key of Object.keys(OPTIONS) as ConfigKey[]) {
    const source = sources[key] === 'env' ? `env ${envName(key)}` : sources[key];
    process.stdout.write(`${key.padEnd(width)}  ${JSON.stringify(masked[key])}  (${source})\n`);
  }
}

export async function migrateCommand(argv: Record<string, unknown>): Promise<void> {
  const { config } = resolveConfig(argv);
  const store = openStore({ url: config.db, daemonId: 'lockmgr-migrate' });
  try {
    process.stdout.write(`migrating ${store.describe()}\n`);
    const applied = await store.migrate({ onApplied: (name) => process.stdout.write(`  applied ${name}\n`) });
    process.stdout.write(applied.length ? `done: applied ${count(applied.length, 'migration')}\n` : 'schema is up to date\n');
  } finally {
    await store.close();
  }
}
