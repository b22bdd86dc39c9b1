/**
 * Daemon configuration: defaults < config file (JSON) < environment (LOCKMGR_*) < flags.
 * Every option is declared once below; the environment name and flag name derive from it.
 */
import { readFileSync } from 'node:fs';
import { DEFAULT_NATS_URL, envName, pickSecurity, type NatsSecurity } from '../shared/connect';
import { eventsStreamName, streamNameProblem } from '../shared/events';
import { DEFAULT_PREFIX } from '../shared/protocol';
import { maskNatsUrls } from '../shared/nats-url';
import { databaseUrlProblem, maskDatabaseUrl } from './store';
import { LOG_LEVELS } from './logger';
import { parseListenAddress } from './http-server';

type Kind = 'string' | 'number' | 'boolean' | 'enum';
interface OptionSpec {
  kind: Kind;
  default: string | number | boolean;
  describe: string;
  choices?: readonly string[];
  /** How `lockmgr config` and the logs show it: `url` masks the secrets in URLs, `value` all of it. */
  secret?: 'url' | 'value';
  min?: number;
  /** What is wrong with a (non-empty) string value, or null. */
  check?: (value: string) => string | null;
  /** What `--help` shows as the default, when the default is derived from other options. */
  shownDefault?: string;
}

export const OPTIONS = {
  natsUrl: { kind: 'string', default: DEFAULT_NATS_URL, describe: 'NATS server URL(s), comma-separated', secret: 'url' },
  natsCreds: {
    kind: 'string',
    default: '',
    describe: 'NATS credentials file (.creds: user JWT and NKey seed), for servers in operator mode',
  },
  natsNkey: { kind: 'string', default: '', describe: 'File holding a NATS user NKey seed (SU...), for servers that list NKey users' },
  natsToken: { kind: 'string', default: '', describe: 'NATS token, for servers with authorization { token }', secret: 'value' },
  natsUser: { kind: 'string', default: '', describe: 'NATS user name (with natsPassword)' },
  natsPassword: { kind: 'string', default: '', describe: 'NATS password of natsUser', secret: 'value' },
  tlsCa: { kind: 'string', default: '', describe: 'PEM file of the CA that signed the NATS server certificate; turns TLS on' },
  tlsCert: {
    kind: 'string',
    default: '',
    describe: 'PEM file of a client certificate, for NATS servers that verify clients (with tlsKey)',
  },
  tlsKey: { kind: 'string', default: '', describe: 'PEM file of the key of tlsCert' },
  prefix: { kind: 'string', default: DEFAULT_PREFIX, describe: 'Subject prefix P: requests on P.set, P.get...; events on P.events.>' },
  db: {
    kind: 'string',
    default: './data/lockmgr.sqlite',
    describe: 'SQLite file path, or a postgres:// URL',
    secret: 'url',
    check: databaseUrlProblem,
  },
  dbPoolSize: { kind: 'number', default: 4, min: 1, describe: 'PostgreSQL connections per daemon' },
  dbLockTimeout: {
    kind: 'number',
    default: 0.25,
    min: 0.001,
    describe:
      'PostgreSQL: seconds a statement waits for a row another session holds; then its request alone waits and retries (get/set: LOCKED)',
  },
  dbStatementTimeout: {
    kind: 'number',
    default: 2,
    min: 0.01,
    describe: 'PostgreSQL: seconds a statement may take before the database counts as unavailable (STORE_UNAVAILABLE)',
  },
  dbIdleInTransactionTimeout: {
    kind: 'number',
    default: 2,
    min: 0.01,
    describe: 'PostgreSQL: seconds a session may idle inside a transaction (a paused daemon) before the server ends it',
  },
  requestWindow: {
    kind: 'number',
    default: 120,
    min: 1,
    describe: 'Seconds the outcome of a request id is kept (beyond its wait) to answer a re-send of it the same',
  },
  lockDelay: {
    kind: 'number',
    default: 15,
    min: 0,
    describe:
      'Seconds a lock of a session stays after its session lapsed or it was released by name (by force), so its holder can stop before the name is granted again',
  },
  authorityCheckInterval: {
    kind: 'number',
    default: 5,
    min: 0,
    describe: 'Seconds between checks that no daemon serves the prefix from another store (0: only at start)',
  },
  sqliteSynchronous: {
    kind: 'enum',
    default: 'NORMAL',
    choices: ['NORMAL', 'FULL'],
    describe: 'SQLite synchronous pragma: NORMAL survives a killed daemon, FULL also power loss (one fsync per commit)',
  },
  sqliteCheckpointInterval: {
    kind: 'number',
    default: 100,
    min: 0,
    describe: 'SQLite: ms between WAL checkpoints run by a worker thread (0: SQLite checkpoints inside commits)',
  },
  sqliteWalLimit: {
    kind: 'number',
    default: 64,
    min: 1,
    describe: 'SQLite: most MiB the -wal file may take (restarted past half, and cut back to half)',
  },
  migrate: { kind: 'boolean', default: true, describe: 'Apply pending schema migrations at start' },
  logLevel: { kind: 'enum', default: 'info', choices: LOG_LEVELS, describe: 'Log level' },
  logFormat: {
    kind: 'enum',
    default: 'auto',
    choices: ['auto', 'json', 'pretty'],
    describe: 'Log format (auto: pretty on a terminal, JSON otherwise)',
  },
  maxBatch: { kind: 'number', default: 256, min: 1, describe: 'Most requests committed in one transaction' },
  sweepInterval: { kind: 'number', default: 0.5, min: 0.05, describe: 'Seconds between sweeps for expired locks' },
  drainTimeout: { kind: 'number', default: 10, min: 0, describe: 'Seconds a graceful stop may take before it is forced' },
  eventsJetstream: {
    kind: 'enum',
    default: 'auto',
    choices: ['auto', 'off'],
    describe: 'Deliver events to JetStream (auto) or core NATS only (off)',
  },
  eventsStream: {
    kind: 'string',
    default: '',
    describe: 'JetStream stream that stores the events (created if missing); empty: LOCKMGR_EVENTS_<prefix>, a stream of the prefix alone',
    shownDefault: 'LOCKMGR_EVENTS_<prefix>',
    check: streamNameProblem,
  },
  eventsRetention: {
    kind: 'enum',
    default: 'limits',
    choices: ['limits', 'interest', 'workqueue'],
    describe: 'Retention policy of the events stream',
  },
  eventsReplicas: { kind: 'number', default: 1, min: 1, describe: 'Replicas of the events stream' },
  eventsMaxAge: {
    kind: 'number',
    default: 604_800,
    min: 0,
    describe: 'Seconds a stream the daemon creates keeps events (0: forever); default 7 days',
  },
  eventsMaxBytes: {
    kind: 'number',
    default: 1_073_741_824,
    min: 0,
    describe: 'Most bytes a stream the daemon creates keeps, the oldest events going first (0: no bound); default 1 GiB',
  },
  eventsDuplicateWindow: { kind: 'number', default: 600, min: 1, describe: 'Seconds JetStream remembers event ids to drop re-sends' },
  httpListen: {
    kind: 'string',
    default: '',
    check: (value) => parseListenAddress(value).problem ?? null,
    describe: 'host:port for /metrics (Prometheus), /healthz and /readyz over HTTP (empty: no HTTP listener)',
  },
} as const satisfies Record<string, OptionSpec>;

export type ConfigKey = keyof typeof OPTIONS;
type ValueOf<K extends ConfigKey> = (typeof OPTIONS)[K]['kind'] extends 'number'
  ? number
  : (typeof OPTIONS)[K]['kind'] extends 'boolean'
    ? boolean
    : string;
export type DaemonConfig = { [K in ConfigKey]: ValueOf<K> };
export type ConfigSource = 'default' | 'file' | 'env' | 'flag';

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

export { envName };
/** --nats-url for natsUrl, and so on. */
export function flagName(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

function coerce(key: ConfigKey, raw: unknown, origin: string): string | number | boolean {
  const spec: OptionSpec = OPTIONS[key];
  switch (spec.kind) {
    case 'number': {
      const n = typeof raw === 'string' && raw.trim() !== '' ? Number(raw) : raw;
      if (typeof n !== 'number' || !Number.isFinite(n))
        throw new ConfigError(`${origin}: ${key} must be a number, got ${JSON.stringify(raw)}`);
      if (spec.min !== undefined && n < spec.min) throw new ConfigError(`${origin}: ${key} must be at least ${spec.min}, got ${n}`);
      return n;
    }
    case 'boolean': {
      if (typeof raw === 'boolean') return raw;
      if (typeof raw === 'string' && /^(1|true|yes|on)$/i.test(raw)) return true;
      if (typeof raw === 'string' && /^(0|false|no|off)$/i.test(raw)) return false;
      throw new ConfigError(`${origin}: ${key} must be true or false, got ${JSON.stringify(raw)}`);
    }
    case 'enum': {
      if (typeof raw !== 'string' || !spec.choices!.includes(raw)) {
        throw new ConfigError(`${origin}: ${key} must be one of ${spec.choices!.join(', ')}, got ${JSON.stringify(raw)}`);
      }
      return raw;
    }
    default: {
      // Options that are off by default (a file, a secret, a listener) may be set empty again.
      if (typeof raw !== 'string' || (raw === '' && spec.default !== '')) {
        throw new ConfigError(`${origin}: ${key} must be a non-empty string${spec.secret ? '' : `, got ${JSON.stringify(raw)}`}`);
      }
      const problem = raw === '' ? null : spec.check?.(raw);
      // A secret's value is not repeated: a URL that does not parse may not be masked right.
      if (problem) throw new ConfigError(`${origin}: ${key} ${problem}${spec.secret ? '' : `, got ${JSON.stringify(raw)}`}`);
      return raw;
    }
  }
}

export interface LoadConfigInput {
  /** Values from command-line flags (undefined entries are ignored). */
  flags?: Partial<Record<ConfigKey, unknown>>;
  env?: NodeJS.ProcessEnv;
  /** Path of a JSON config file. */
  file?: string;
}

export interface LoadedConfig {
  config: DaemonConfig;
  sources: Record<ConfigKey, ConfigSource>;
}

export function loadConfig(input: LoadConfigInput = {}): LoadedConfig {
  const env = input.env ?? process.env;
  const values: Record<string, unknown> = {};
  const sources = {} as Record<ConfigKey, ConfigSource>;
  const keys = Object.keys(OPTIONS) as ConfigKey[];
  for (const key of keys) {
    values[key] = OPTIONS[key].default;
    sources[key] = 'default';
  }
  const file = input.file ?? env.LOCKMGR_CONFIG;
  if (file) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(readFileSync(file, 'utf8'));
    } catch (err) {
      throw new ConfigError(`cannot read config file ${file}: ${(err as Error).message}`);
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
      throw new ConfigError(`config file ${file} must hold a JSON object`);
    }
    for (const [key, raw] of Object.entries(parsed)) {
      if (key === '$comment') continue;
      if (!(key in OPTIONS)) throw new ConfigError(`config file ${file}: unknown option "${key}" (known: ${keys.join(', ')})`);
      values[key] = coerce(key as ConfigKey, raw, `config file ${file}`);
      sources[key as ConfigKey] = 'file';
    }
  }
  for (const key of keys) {
    const raw = env[envName(key)];
    if (raw !== undefined && raw !== '') {
      values[key] = coerce(key, raw, `environment ${envName(key)}`);
      sources[key] = 'env';
    }
  }
  for (const [key, raw] of Object.entries(input.flags ?? {})) {
    if (raw === undefined) continue;
    if (!(key in OPTIONS)) throw new ConfigError(`unknown option --${flagName(key)}`);
    values[key] = coerce(key as ConfigKey, raw, `flag --${flagName(key)}`);
    sources[key as ConfigKey] = 'flag';
  }
  return { config: values as DaemonConfig, sources };
}

/** The config with secrets masked and the events stream named, for logs and `lockmgr config`. */
export function maskedConfig(config: DaemonConfig): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(OPTIONS) as ConfigKey[]) {
    const value = config[key];
    const secret = (OPTIONS[key] as OptionSpec).secret;
    if (secret === 'value') out[key] = value === '' ? '' : '***';
    else if (key === 'db') out[key] = maskDatabaseUrl(String(value));
    else if (secret === 'url') out[key] = maskNatsUrls(String(value));
    else out[key] = value;
  }
  out.eventsStream = eventsStreamName(config.prefix, config.eventsStream);
  return out;
}

/** How the config logs in to NATS and secures the connection, for connectNats. */
export function natsSecurity(config: DaemonConfig): NatsSecurity {
  return pickSecurity((key) => config[key] || undefined);
}
