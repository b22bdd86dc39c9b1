/**
 * Daemon options as command-line flags, derived from the one option table in daemon/config.
 */
import type { Argv } from 'yargs';
import { OPTIONS, envName, flagName, loadConfig, type ConfigKey } from '../daemon/config';

/** How --help shows a default: strings as they are, the empty string as "none". */
function shownDefault(spec: { default: string | number | boolean; shownDefault?: string }): string {
  return spec.shownDefault ?? (spec.default === '' ? 'none' : String(spec.default));
}

/**
 * Adds every daemon option as a flag (--nats-url, --db, ...), its help naming its environment
 * variable and its default. No yargs `default`: a flag that is not given must leave the value to
 * the environment and the config file.
 */
export function withDaemonOptions<T>(y: Argv<T>): Argv<T> {
  let out = y.option('config', { type: 'string', describe: 'JSON config file (see config/) [env LOCKMGR_CONFIG]' });
  for (const key of Object.keys(OPTIONS) as ConfigKey[]) {
    const spec = OPTIONS[key] as {
      kind: string;
      default: string | number | boolean;
      shownDefault?: string;
      describe: string;
      choices?: readonly string[];
    };
    out = out.option(flagName(key), {
      // Numbers are left untyped: yargs would turn "abc" into NaN, and loadConfig could then only
      // report "got null"; untyped, it gets what was typed and says so.
      type: spec.kind === 'boolean' ? 'boolean' : spec.kind === 'number' ? undefined : 'string',
      requiresArg: spec.kind !== 'boolean',
      describe: `${spec.describe} [env ${envName(key)}, default ${shownDefault(spec)}]`,
      choices: spec.choices as string[] | undefined,
    }) as never;
  }
  return out;
}

/** Flag values keyed by config key, as yargs parsed them: of every option, or of those in `keys`. */
export function flagsFrom(
  argv: Record<string, unknown>,
  keys: readonly ConfigKey[] = Object.keys(OPTIONS) as ConfigKey[],
): Partial<Record<ConfigKey, unknown>> {
  const flags: Partial<Record<ConfigKey, unknown>> = {};
  for (const key of keys) flags[key] = argv[flagName(key)];
  return flags;
}

export function resolveConfig(argv: Record<string, unknown>) {
  return loadConfig({ flags: flagsFrom(argv), file: argv.config as string | undefined });
}
