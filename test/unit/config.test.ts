/**
 * Configuration precedence, value by value: defaults < config file < LOCKMGR_* environment < flags,
 * for every option in the table; validation errors; secret masking.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, OPTIONS, envName, flagName, loadConfig, maskedConfig, type ConfigKey } from '../../daemon/config';
import { parseListenAddress } from '../../daemon/http-server';
import { maskNatsUrls, natsServerOptions } from '../../shared/nats-url';

const KEYS = Object.keys(OPTIONS) as ConfigKey[];
type Layer = 'file' | 'env' | 'flag';
const LAYERS: Layer[] = ['file', 'env', 'flag'];

interface Spec {
  kind: string;
  default: string | number | boolean;
  choices?: readonly string[];
  min?: number;
}

/** A valid value for `key` that differs from the default and from the other layers' values. */
function valueFor(key: ConfigKey, layer: Layer): string | number | boolean {
  const spec = OPTIONS[key] as Spec;
  const i = LAYERS.indexOf(layer);
  switch (spec.kind) {
    case 'number':
      return (spec.min ?? 0) + 1 + i + (Number.isInteger(spec.default) ? 0 : 0.5);
    case 'boolean':
      // Only two values: alternate away from the default, so each layer differs from the one below.
      return i % 2 === 0 ? !spec.default : Boolean(spec.default);
    case 'enum': {
      const others = spec.choices!.filter((c) => c !== spec.default);
      return [others[0], spec.default, others[others.length - 1]][i]!;
    }
    default:
      if (key === 'httpListen') return `127.0.0.1:${9460 + i}`;
      return key === 'db' ? `/tmp/${layer}-db.sqlite` : `${layer}-${key}`;
  }
}

const asEnv = (v: string | number | boolean) => String(v);

function writeConfig(content: unknown): string {
  const file = join(mkdtempSync(join(tmpdir(), 'lockmgr-config-')), 'lockmgr.json');
  writeFileSync(file, typeof content === 'string' ? content : JSON.stringify(content));
  return file;
}

describe('loadConfig precedence', () => {
  it('gives every option its default, from "default", with nothing set', () => {
    const { config, sources } = loadConfig({ env: {} });
    for (const key of KEYS) {
      expect([key, config[key]]).toEqual([key, OPTIONS[key].default]);
      expect([key, sources[key]]).toEqual([key, 'default']);
    }
  });

  it.each([
    ['file', ['file']],
    ['env over file', ['file', 'env']],
    ['flag over env and file', ['file', 'env', 'flag']],
    ['flag over file', ['file', 'flag']],
    ['flag over env', ['env', 'flag']],
  ] as [string, Layer[]][])('%s, for every option', (_title, layers) => {
    const file = layers.includes('file') ? writeConfig(Object.fromEntries(KEYS.map((k) => [k, valueFor(k, 'file')]))) : undefined;
    const env = layers.includes('env') ? Object.fromEntries(KEYS.map((k) => [envName(k), asEnv(valueFor(k, 'env'))])) : {};
    const flags = layers.includes('flag') ? Object.fromEntries(KEYS.map((k) => [k, valueFor(k, 'flag')])) : {};
    const { config, sources } = loadConfig({ file, env, flags });
    const top = layers[layers.length - 1]!;
    for (const key of KEYS) {
      expect([key, config[key]]).toEqual([key, valueFor(key, top)]);
      expect([key, sources[key]]).toEqual([key, top]);
    }
  });

  it('resolves each option on its own: option i is set in the first i % 4 layers', () => {
    const fileValues: Record<string, unknown> = {};
    const env: Record<string, string> = {};
    const flags: Record<string, unknown> = {};
    KEYS.forEach((key, i) => {
      const depth = i % 4;
      if (depth >= 1) fileValues[key] = valueFor(key, 'file');
      if (depth >= 2) env[envName(key)] = asEnv(valueFor(key, 'env'));
      if (depth >= 3) flags[key] = valueFor(key, 'flag');
    });
    const { config, sources } = loadConfig({ file: writeConfig(fileValues), env, flags });
    KEYS.forEach((key, i) => {
      const depth = i % 4;
      const expected = depth === 0 ? 'default' : LAYERS[depth - 1]!;
      expect([key, sources[key]]).toEqual([key, expected]);
      expect([key, config[key]]).toEqual([key, depth === 0 ? OPTIONS[key].default : valueFor(key, expected as Layer)]);
    });
  });

  it('ignores empty environment values and undefined flags', () => {
    const file = writeConfig({ prefix: 'fromfile' });
    const { config, sources } = loadConfig({ file, env: { LOCKMGR_PREFIX: '' }, flags: { prefix: undefined } });
    expect(config.prefix).toBe('fromfile');
    expect(sources.prefix).toBe('file');
  });

  it('reads the file named by LOCKMGR_CONFIG; an explicit file wins over it', () => {
    const a = writeConfig({ prefix: 'a' });
    const b = writeConfig({ prefix: 'b' });
    expect(loadConfig({ env: { LOCKMGR_CONFIG: a } }).config.prefix).toBe('a');
    expect(loadConfig({ env: { LOCKMGR_CONFIG: a }, file: b }).config.prefix).toBe('b');
  });

  it('parses booleans and numbers from the environment', () => {
    expect(loadConfig({ env: { LOCKMGR_MIGRATE: 'off' } }).config.migrate).toBe(false);
    expect(loadConfig({ env: { LOCKMGR_MIGRATE: 'YES' } }).config.migrate).toBe(true);
    expect(loadConfig({ env: { LOCKMGR_SWEEP_INTERVAL: '0.25' } }).config.sweepInterval).toBe(0.25);
  });

  it('takes the HTTP listener as host:port, [v6]:port or empty (none)', () => {
    expect(loadConfig({ env: {} }).config.httpListen).toBe('');
    for (const value of ['127.0.0.1:9464', '0.0.0.0:0', '[::1]:9464', 'metrics.internal:80']) {
      expect(loadConfig({ env: { LOCKMGR_HTTP_LISTEN: value } }).config.httpListen).toBe(value);
    }
    expect(parseListenAddress('[::1]:9464').address).toEqual({ host: '::1', port: 9464 });
    expect(parseListenAddress('127.0.0.1:0').address).toEqual({ host: '127.0.0.1', port: 0 });
    for (const bad of [':9464', '127.0.0.1:', 'http://127.0.0.1:9464', '::1:9464', '127.0.0.1:9464/metrics']) {
      expect([bad, parseListenAddress(bad).problem]).toEqual([bad, expect.any(String)]);
    }
  });

  it('derives env and flag names from the option names', () => {
    expect(envName('natsUrl')).toBe('LOCKMGR_NATS_URL');
    expect(envName('eventsDuplicateWindow')).toBe('LOCKMGR_EVENTS_DUPLICATE_WINDOW');
    expect(flagName('dbPoolSize')).toBe('db-pool-size');
  });
});

describe('loadConfig errors name the source and the option', () => {
  const cases: [string, () => unknown, RegExp][] = [
    [
      'missing file',
      () => loadConfig({ env: {}, file: '/nonexistent/lockmgr.json' }),
      /cannot read config file \/nonexistent\/lockmgr\.json/,
    ],
    ['invalid JSON', () => loadConfig({ env: {}, file: writeConfig('{ "prefix": ') }), /cannot read config file .*JSON/],
    ['not an object', () => loadConfig({ env: {}, file: writeConfig('[1, 2]') }), /must hold a JSON object/],
    ['unknown key in the file', () => loadConfig({ env: {}, file: writeConfig({ natsURL: 'x' }) }), /unknown option "natsURL"/],
    [
      'bad number in the environment',
      () => loadConfig({ env: { LOCKMGR_DB_POOL_SIZE: 'four' } }),
      /environment LOCKMGR_DB_POOL_SIZE: dbPoolSize must be a number, got "four"/,
    ],
    [
      'number below its minimum from a flag',
      () => loadConfig({ env: {}, flags: { dbPoolSize: 0 } }),
      /flag --db-pool-size: dbPoolSize must be at least 1, got 0/,
    ],
    [
      'bad enum in the file',
      () => loadConfig({ env: {}, file: writeConfig({ logLevel: 'loud' }) }),
      /logLevel must be one of error, warn, info, debug, got "loud"/,
    ],
    [
      'bad boolean in the environment',
      () => loadConfig({ env: { LOCKMGR_MIGRATE: 'maybe' } }),
      /LOCKMGR_MIGRATE: migrate must be true or false/,
    ],
    ['empty string in the file', () => loadConfig({ env: {}, file: writeConfig({ prefix: '' }) }), /prefix must be a non-empty string/],
    [
      'a secret that is not a string: said so, its value not repeated',
      () => loadConfig({ env: {}, file: writeConfig({ natsPassword: 12345678 }) }),
      /natsPassword must be a non-empty string$/,
    ],
    [
      'HTTP address without a port in the environment',
      () => loadConfig({ env: { LOCKMGR_HTTP_LISTEN: '127.0.0.1' } }),
      /environment LOCKMGR_HTTP_LISTEN: httpListen must be host:port .*, got "127.0.0.1"/,
    ],
    [
      'HTTP port out of range from a flag',
      () => loadConfig({ env: {}, flags: { httpListen: '127.0.0.1:70000' } }),
      /flag --http-listen: httpListen must have a port from 0 to 65535, got "127.0.0.1:70000"/,
    ],
    [
      'a postgres URL pg cannot read (its password not repeated)',
      () => loadConfig({ env: { LOCKMGR_DB: 'postgres://lockmgr:pg-s3cret@db:notaport/locks' } }),
      /^environment LOCKMGR_DB: db is not a URL that pg can read \(Invalid URL\): write it as postgres:\/\/user:password@host:port\/database, with special characters percent-encoded$/,
    ],
    [
      'a stream name JetStream refuses',
      () => loadConfig({ env: {}, flags: { eventsStream: 'lock.events' } }),
      /^flag --events-stream: eventsStream must be a stream name JetStream takes: no whitespace, '.'.*, got "lock.events"$/,
    ],
  ];
  it.each(cases)('%s', (_title, fn, message) => {
    expect(fn).toThrow(ConfigError);
    expect(fn).toThrow(message);
  });
});

describe('the events stream', () => {
  it('is named after the prefix unless configured: empty is the default, also in a file', () => {
    const { config, sources } = loadConfig({ env: { LOCKMGR_PREFIX: 'app.locks' }, file: writeConfig({ eventsStream: '' }) });
    expect([config.eventsStream, sources.eventsStream]).toEqual(['', 'file']);
    expect(maskedConfig(config).eventsStream).toBe('LOCKMGR_EVENTS_app_locks');
    const named = loadConfig({ env: { LOCKMGR_PREFIX: 'app.locks', LOCKMGR_EVENTS_STREAM: 'LOCKMGR_EVENTS' } }).config;
    expect(maskedConfig(named).eventsStream).toBe('LOCKMGR_EVENTS');
  });

  it('keeps events 7 days and 1 GiB by default', () => {
    const { config } = loadConfig({ env: {} });
    expect([config.eventsMaxAge, config.eventsMaxBytes]).toEqual([7 * 24 * 3600, 1024 ** 3]);
    expect(loadConfig({ env: { LOCKMGR_EVENTS_MAX_BYTES: '0', LOCKMGR_EVENTS_MAX_AGE: '0' } }).config).toMatchObject({
      eventsMaxAge: 0,
      eventsMaxBytes: 0,
    });
  });
});

describe('secrets are masked', () => {
  it('masks the password of a postgres URL and credentials in every NATS URL', () => {
    const { config } = loadConfig({
      env: {},
      flags: {
        db: 'postgres://lockmgr:pg-s3cret@db.internal:5432/locks',
        natsUrl: 'nats://alice:nats-s3cret@n1:4222, nats://tok3n-s3cret@n2:4222,nats://n3:4222',
      },
    });
    const masked = maskedConfig(config);
    const text = JSON.stringify(masked);
    expect(text).not.toMatch(/s3cret/);
    expect(masked.db).toBe('postgres://lockmgr:***@db.internal:5432/locks');
    expect(masked.natsUrl).toBe('nats://***@n1:4222, nats://***@n2:4222,nats://n3:4222');
    // The unmasked config keeps them, for connecting.
    expect(config.db).toContain('pg-s3cret');
  });

  it('takes NATS credentials out of the URLs for the connection options', () => {
    expect(natsServerOptions('nats://alice:p%40ss@n1:4222,nats://n2:4222')).toEqual({
      servers: ['nats://n1:4222', 'nats://n2:4222'],
      user: 'alice',
      pass: 'p@ss',
    });
    expect(natsServerOptions('tls://t0ken@n1:4222')).toEqual({ servers: ['tls://n1:4222'], token: 't0ken' });
    expect(natsServerOptions('127.0.0.1:4222')).toEqual({ servers: ['127.0.0.1:4222'] });
    expect(maskNatsUrls('127.0.0.1:4222')).toBe('127.0.0.1:4222');
  });
});
