/**
 * Daemon options as command-line flags, derived from the one option table in daemon/config.
 */
import type { Argv } from 'yargs';
import { OPTIONS, flagName, loadConfig, type ConfigKey } from '../daemon/config';

/** Adds every daemon option as a flag (--nats-url, --db, ...). */
export function withDaemonOptions<T>(y: Argv<T>): Argv<T> {
  let out = y.option('config', { type: 'string', describe: 'JSON config file (see config/)' });
  for (const key of Object.keys(OPTIONS) as ConfigKey[]) {
    const spec = OPTIONS[key] as { kind: string; describe: string; choices?: readonly string[] };
    out = out.option(flagName(key), {
      // Numbers are left untyped: yargs would turn "abc" into NaN, and loadConfig could then only
      // report "got null"; untyped, it gets what was typed and says so.
      type: spec.kind === 'boolean' ? 'boolean' : spec.kind === 'number' ? undefined : 'string',
      requiresArg: spec.kind !== 'boolean',
      describe: spec.describe,
      choices: spec.choices as string[] | undefined,
    }) as never;
  }
  return out;
}

/** Flag values keyed by config key, as yargs parsed them. */
export function flagsFrom(argv: Record<string, unknown>): Partial<Record<ConfigKey, unknown>> {
  const flags: Partial<Record<ConfigKey, unknown>> = {};
  for (const key of Object.keys(OPTIONS) as ConfigKey[]) flags[key] = argv[flagName(key)];
  return flags;
}

export function resolveConfig(argv: Record<string, unknown>) {
  return loadConfig({ flags: flagsFrom(argv), file: argv.config as string | undefined });
}
