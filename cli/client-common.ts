/**
 * What the lock-management commands (set-lock, clear-lock, list-locks, reset-locks, run, ping)
 * share: connection flags, connecting to NATS, exit codes, and turning errors into one clear line
 * (or a JSON object with --json).
 */
import { hostname } from 'node:os';
import type { NatsConnection } from 'nats';
import type { Argv } from 'yargs';
import { LockClient, type LockClientOptions } from '../client/lock-client';
import {
  ConnectionClosed,
  errorFromNats,
  InvalidRequest,
  LockError,
  LockFail,
  Locked,
  NatsUnavailable,
  NoDaemon,
  PermissionDenied,
  RequestTimeout,
} from '../client/errors';
import { ConfigError, OPTIONS, flagName, loadConfig, natsSecurity, type ConfigKey } from '../daemon/config';
import { connectNats as connectToNats, envName, NATS_SECURITY_KEYS, NatsTlsError, type NatsSecurity } from '../shared/connect';
import { maskNatsUrls } from '../shared/nats-url';
import { forTerminal } from './terminal';
import { checkNumber, numberOption, type NumberRule } from './number-option';
import { flagsFrom } from './options';

/** Exit codes of the lockmgr commands (docs/cli.md lists them). */
export const EXIT = {
  OK: 0,
  /** The daemon answered with an error, a request timed out, or something unexpected failed; reset-locks was not confirmed. */
  ERROR: 1,
  /** A lock is held by someone else: set-lock --fail met a held lock; run could not take its lock. */
  LOCKED: 2,
  /** run: the lock was lost while the command ran (released by someone else, or its session could not be kept alive). */
  LOCK_LOST: 3,
  /** Bad command line: unknown option, missing argument, bad value; reset-locks without -f and without a terminal. */
  USAGE: 64,
  /** NATS is unreachable, or no daemon answers on the prefix. */
  UNAVAILABLE: 69,
  /** daemon: another daemon serves its SQLite file, or its prefix from another store (try again once it is gone). */
  CONFLICT: 75,
  /** Bad configuration (config file, LOCKMGR_* environment). */
  CONFIG: 78,
} as const;

/** An error that already knows its exit code and its one-line message. */
export class CliError extends Error {
  constructor(
    readonly exitCode: number,
    message: string,
    readonly code = 'ERROR',
  ) {
    super(message);
    this.name = 'CliError';
  }
}

export interface ClientArgs {
  'nats-url'?: string;
  'nats-creds'?: string;
  'nats-nkey'?: string;
  'nats-token'?: string;
  'nats-user'?: string;
  'nats-password'?: string;
  'tls-ca'?: string;
  'tls-cert'?: string;
  'tls-key'?: string;
  prefix?: string;
  config?: string;
  'timeout-ms'?: number;
  json?: boolean;
}

/** The login and TLS settings' config keys, as the daemon has them (natsCreds, tlsCa...). */
const SECURITY_KEYS = Object.values(NATS_SECURITY_KEYS);
/** The config keys the connection flags set. */
const CONNECTION_KEYS: readonly ConfigKey[] = ['natsUrl', 'prefix', ...SECURITY_KEYS];
const CONNECTION_FLAGS = ['nats-url', ...SECURITY_KEYS.map(flagName), 'prefix', 'config', 'timeout-ms'];

/** What --timeout-ms and LOCKMGR_TIMEOUT_MS take. */
const TIMEOUT_MS: NumberRule = { unit: 'milliseconds', positive: true };

/** The flags every lock-management command takes. */
export function withClientOptions<T>(y: Argv<T>, opts: { json?: boolean } = {}): Argv<T & ClientArgs> {
  const withJson = opts.json !== false;
  let out = y
    .option('nats-url', {
      type: 'string',
      describe: 'NATS server URL(s), comma-separated [env LOCKMGR_NATS_URL, default nats://127.0.0.1:4222]',
    })
    .option('prefix', { type: 'string', describe: 'Subject prefix the daemons serve [env LOCKMGR_PREFIX, default lock]' })
    .option('config', {
      type: 'string',
      describe: 'JSON config file to take natsUrl, the NATS login and TLS settings and prefix from [env LOCKMGR_CONFIG]',
    })
    .option(
      ...numberOption('timeout-ms', {
        describe: 'Milliseconds to wait for each reply [env LOCKMGR_TIMEOUT_MS, default 10000]',
        ...TIMEOUT_MS,
      }),
    );
  for (const key of SECURITY_KEYS) {
    out = out.option(flagName(key), { type: 'string', describe: `${OPTIONS[key].describe} [env ${envName(key)}]` });
  }
  if (withJson) {
    out = out.option('json', { type: 'boolean', default: false, describe: 'Machine-readable JSON on stdout (same exit codes)' });
  }
  return out.group(withJson ? [...CONNECTION_FLAGS, 'json'] : CONNECTION_FLAGS, 'Connection and output:') as unknown as Argv<
    T & ClientArgs
  >;
}

export interface Connection {
  natsUrl: string;
  /** The NATS login and TLS settings. */
  security: NatsSecurity;
  prefix: string;
  timeoutMs: number;
}

/** Flags > environment > config file > defaults, as for the daemon. */
export function resolveConnection(argv: ClientArgs, env: NodeJS.ProcessEnv = process.env): Connection {
  const flags = flagsFrom(argv as Record<string, unknown>, CONNECTION_KEYS);
  const { config } = loadConfig({ env, file: argv.config, flags });
  let timeoutMs = argv['timeout-ms'];
  if (timeoutMs === undefined && env.LOCKMGR_TIMEOUT_MS) {
    timeoutMs = checkNumber(env.LOCKMGR_TIMEOUT_MS, TIMEOUT_MS, (problem) => new ConfigError(`environment LOCKMGR_TIMEOUT_MS: ${problem}`));
  }
  return { natsUrl: config.natsUrl, security: natsSecurity(config), prefix: config.prefix, timeoutMs: timeoutMs ?? 10_000 };
}

/**
 * Connect to NATS, or throw a CliError that says what to do. A lost connection is reconnected
 * 10 times (a one-shot command ends within its timeout anyway), or forever for commands that
 * run on (`run`, `events --follow`).
 */
export async function connectNats(conn: Connection, name: string, opts: { reconnectForever?: boolean } = {}): Promise<NatsConnection> {
  const reconnect = opts.reconnectForever
    ? { maxReconnectAttempts: -1, reconnectTimeWait: 1000, ignoreAuthErrorAbort: true }
    : { maxReconnectAttempts: 10 };
  try {
    return await connectToNats({
      servers: conn.natsUrl,
      ...conn.security,
      name: `lockmgr-${name} ${hostname()}:${process.pid}`,
      nats: { timeout: Math.min(conn.timeoutMs, 10_000), ...reconnect },
    });
  } catch (err) {
    const urls = maskNatsUrls(conn.natsUrl);
    throw connectFailure(errorFromNats(err, { connecting: urls }), urls);
  }
}

/**
 * A failed connect as the command line tells it: errorFromNats says what failed, this which
 * flags to look at, quoting what NATS said.
 */
function connectFailure(err: LockError, urls: string): CliError {
  const said = err.cause instanceof Error ? err.cause.message : err.message;
  // A login or TLS setting that cannot be used (a file that cannot be read, a seed that is not one).
  if (err instanceof InvalidRequest) return new CliError(EXIT.CONFIG, err.message, 'CONFIG');
  if (err instanceof PermissionDenied) {
    if (err.cause instanceof NatsTlsError) {
      return new CliError(EXIT.UNAVAILABLE, `${err.message} (--tls-ca, --tls-cert, --tls-key)`, 'NATS_TLS');
    }
    return new CliError(
      EXIT.UNAVAILABLE,
      `NATS at ${urls} refused the connection (${said}): give credentials with --nats-creds, --nats-nkey, --nats-token or --nats-user and --nats-password (or as nats://user:pass@host in --nats-url / LOCKMGR_NATS_URL)`,
      'NATS_UNAUTHORIZED',
    );
  }
  return new CliError(
    EXIT.UNAVAILABLE,
    `cannot reach NATS at ${urls} (${said}): start nats-server, or point --nats-url / LOCKMGR_NATS_URL at it`,
    'NATS_UNREACHABLE',
  );
}

export async function openClient(
  argv: ClientArgs,
  name: string,
  options: LockClientOptions & { reconnectForever?: boolean } = {},
): Promise<LockClient> {
  const { reconnectForever, ...clientOptions } = options;
  const conn = resolveConnection(argv);
  const nc = await connectNats(conn, name, { reconnectForever });
  return new LockClient(nc, { ...clientOptions, prefix: conn.prefix, timeout: conn.timeoutMs }, true);
}

/** Exit code and message for any error a command may meet. */
export function describeError(err: unknown): { exitCode: number; code: string; message: string; lock?: unknown } {
  if (err instanceof CliError) return { exitCode: err.exitCode, code: err.code, message: err.message };
  if (err instanceof ConfigError) return { exitCode: EXIT.CONFIG, code: 'CONFIG', message: err.message };
  if (err instanceof NoDaemon) {
    return {
      exitCode: EXIT.UNAVAILABLE,
      code: err.code,
      message: `${err.message.replace(/: start one.*$/, '')}: start one with "lockmgr daemon", or check --prefix / LOCKMGR_PREFIX and --nats-url / LOCKMGR_NATS_URL`,
    };
  }
  if (err instanceof NatsUnavailable || err instanceof ConnectionClosed) {
    return {
      exitCode: EXIT.UNAVAILABLE,
      code: err.code,
      message: `${err.message.replace(/: connect a new client$/, '')}: check that nats-server runs and --nats-url / LOCKMGR_NATS_URL points at it`,
    };
  }
  if (err instanceof RequestTimeout) {
    return {
      exitCode: EXIT.ERROR,
      code: err.code,
      message: `${err.message}: the daemon is overloaded or its database is slow; retry, or raise --timeout-ms`,
    };
  }
  if (err instanceof LockFail || err instanceof Locked) {
    return { exitCode: EXIT.LOCKED, code: err.code, message: err.message, lock: err.lock ?? undefined };
  }
  if (err instanceof LockError) return { exitCode: EXIT.ERROR, code: err.code, message: err.message };
  return { exitCode: EXIT.ERROR, code: 'ERROR', message: (err as Error)?.message ?? String(err) };
}

/** Print an error (one line on stderr, or a JSON object on stdout) and return its exit code. */
export function reportError(err: unknown, json: boolean | undefined): number {
  const d = describeError(err);
  if (json) {
    const error: Record<string, unknown> = { code: d.code, message: d.message };
    if (d.lock) error.lock = d.lock;
    process.stdout.write(`${JSON.stringify({ error })}\n`);
  } else {
    process.stderr.write(`lockmgr: ${forTerminal(d.message)}\n`);
  }
  return d.exitCode;
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** A count with its noun: "no locks", "1 lock", "2 locks". */
export function count(n: number, noun: string, plural = `${noun}s`): string {
  return `${n === 0 ? 'no' : n} ${n === 1 ? noun : plural}`;
}

/** Python's print(): the text and a newline. */
export function print(text = ''): void {
  process.stdout.write(`${text}\n`);
}

/** django-lockmgr's rule between sections: a blank line, 57 '=', a blank line. */
export const RULE = `\n${'='.repeat(57)}\n`;

/**
 * Run a command body with a connected client: closes the connection afterwards and sets the
 * exit code from what the body returned or threw.
 */
export async function withClient(argv: ClientArgs, name: string, body: (client: LockClient) => Promise<number>): Promise<void> {
  let client: LockClient | undefined;
  let code: number;
  try {
    client = await openClient(argv, name);
    code = await body(client);
  } catch (err) {
    code = reportError(err, argv.json);
  }
  await client?.close().catch(() => undefined);
  process.exitCode = code;
}
