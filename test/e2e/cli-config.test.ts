/**
 * The binary's surface: --help on every command, --version, strict options, `lockmgr config`
 * (precedence and masking as the operator sees them), bad configuration, `lockmgr migrate`.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from 'pg';
import { OPTIONS, envName, flagName } from '../../daemon/config';
import { createTestDatabase, PG_ADMIN_URL } from '../helpers/databases';
import { runCli } from '../helpers/cli';
import { ROOT } from '../helpers/stack';

const COMMANDS: [string, string][] = [
  ['daemon', '--db-pool-size'],
  ['config', '--json'],
  ['migrate', '--db'],
  ['set-lock', '--no-timeout'],
  ['clear-lock', '--nats-url'],
  ['list-locks', '--name-prefix'],
  ['reset-locks', '--force'],
  ['run', '--conflict-exit-code'],
  ['ping', '--local'],
  ['events', '--follow'],
];

function tmpFile(name: string, content: string): string {
  const file = join(mkdtempSync(join(tmpdir(), 'lockmgr-e2e-')), name);
  writeFileSync(file, content);
  return file;
}

describe('lockmgr binary surface', () => {
  it('--help works on every command and lists them all at the top', async () => {
    const top = await runCli(['--help']);
    expect(top.code).toBe(0);
    for (const [cmd] of COMMANDS) expect(top.stdout).toContain(`lockmgr ${cmd}`);
    const results = await Promise.all(COMMANDS.map(([cmd]) => runCli([cmd, '--help'])));
    results.forEach((r, i) => {
      const [cmd, flag] = COMMANDS[i]!;
      expect([cmd, r.code]).toEqual([cmd, 0]);
      expect(r.stdout).toContain(`lockmgr ${cmd}`);
      expect(r.stdout).toContain(flag);
    });
  });

  it("daemon --help names each option's environment variable and default, from the option table", async () => {
    for (const cmd of ['daemon', 'config', 'migrate']) {
      const r = await runCli([cmd, '--help']);
      expect(r.code).toBe(0);
      // One option's help, wrapped lines joined: from its flag to the next flag.
      const help = (flag: string) => {
        const start = r.stdout.indexOf(`  --${flag} `);
        const next = r.stdout.indexOf('\n      --', start + 1);
        return r.stdout.slice(start, next < 0 ? undefined : next).replace(/\s+/g, ' ');
      };
      for (const [key, spec] of Object.entries(OPTIONS)) {
        const derived = (spec as { shownDefault?: string }).shownDefault;
        const shown = derived ?? (spec.default === '' ? 'none' : String(spec.default));
        expect([cmd, key, help(flagName(key))]).toEqual([cmd, key, expect.stringContaining(`[env ${envName(key)}, default ${shown}]`)]);
      }
      expect(help('nats-url')).toContain('[env LOCKMGR_NATS_URL, default nats://127.0.0.1:4222]');
      expect(help('db-pool-size')).toContain('[env LOCKMGR_DB_POOL_SIZE, default 4]');
      expect(help('events-stream')).toContain('[env LOCKMGR_EVENTS_STREAM, default LOCKMGR_EVENTS_<prefix>]');
    }
    // What the help says is what the daemon runs with when nothing is set.
    const defaults = JSON.parse((await runCli(['config', '--json'])).stdout);
    expect(defaults.dbPoolSize).toEqual({ value: 4, source: 'default' });
  });

  it.each([
    ['set-lock', ['set-lock', '-t', 'abc', 'x'], '--timeout must be a non-negative number of seconds, got "abc"'],
    ['set-lock', ['set-lock', '--pid', '1.5', 'x'], '--pid must be an integer, got "1.5"'],
    ['set-lock', ['set-lock', '-t', '5', '-t', '6', 'x'], '--timeout was given more than once (5, 6): give it once'],
    ['list-locks', ['list-locks', '--timeout-ms', 'soon'], '--timeout-ms must be a positive number of milliseconds, got "soon"'],
    ['run', ['run', 'job', '-t', 'abc', '--', 'true'], '--timeout must be a non-negative number of seconds, got "abc"'],
    ['run', ['run', 'job', '-w', '1O', '--', 'true'], '--wait must be a non-negative number of seconds, got "1O"'],
    ['run', ['run', 'job', '--ttl', 'x', '--', 'true'], '--ttl must be a number of seconds from 1 to 3600, got "x"'],
    ['run', ['run', 'job', '--grace', '-1', '--', 'true'], '--grace must be a non-negative number of seconds, got "-1"'],
    ['run', ['run', 'job', '--lock-delay', 'abc', '--', 'true'], '--lock-delay must be a non-negative number of seconds, got "abc"'],
    [
      'run',
      ['run', 'job', '--conflict-exit-code', 'two', '--', 'true'],
      '--conflict-exit-code must be an integer from 0 to 255, got "two"',
    ],
    ['events', ['events', '--since-seq', 'first'], '--since-seq must be an integer of 1 or more, got "first"'],
  ])('%s: a numeric option that is not a number is a usage error quoting what was typed: %j', async (_cmd, args, message) => {
    // A NATS URL nobody listens on: the check comes before any connection.
    const r = await runCli([args[0]!, '--nats-url', 'nats://127.0.0.1:1', ...args.slice(1)]);
    expect(r.code).toBe(64);
    expect(r.stderr).toBe(`lockmgr: ${message}\nRun "lockmgr --help" (or "lockmgr <command> --help") for usage.\n`);
    expect(r.stderr).not.toContain('NaN');
  });

  it('a daemon flag that is not a number is reported as typed (exit 78), not as NaN or null', async () => {
    const r = await runCli(['daemon', '--db-pool-size', 'four']);
    expect(r.code).toBe(78);
    expect(r.stderr).toBe('lockmgr: flag --db-pool-size: dbPoolSize must be a number, got "four"\n');
  });

  it('--version prints the package version', async () => {
    const r = await runCli(['--version']);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version);
  });

  it('unknown options and commands are usage errors (exit 64), naming the culprit', async () => {
    const [a, b, c] = await Promise.all([runCli(['daemon', '--dbpool', '3']), runCli(['list-locks', '--colour']), runCli(['lokc'])]);
    expect(a.code).toBe(64);
    expect(a.stderr).toMatch(/^lockmgr: Unknown argument: dbpool\n/);
    expect(b.code).toBe(64);
    expect(b.stderr).toContain('Unknown argument: colour');
    expect(c.code).toBe(64);
    expect(c.stderr).toContain('lokc');
  });

  describe('lockmgr config', () => {
    it('prints each value with its source (flag > env > file > default), secrets masked', async () => {
      const file = tmpFile(
        'lockmgr.json',
        JSON.stringify({ prefix: 'fromfile', dbPoolSize: 2, logLevel: 'warn', db: 'postgres://lockmgr:pg-s3cret@db:5432/locks' }),
      );
      const env = { LOCKMGR_DB_POOL_SIZE: '7', LOCKMGR_NATS_URL: 'nats://svc:nats-s3cret@nats:4222', LOCKMGR_LOG_LEVEL: 'error' };
      const r = await runCli(['config', '--json', '--config', file, '--log-level', 'debug'], { env });
      expect(r.code).toBe(0);
      expect(r.stdout).not.toMatch(/s3cret/);
      const c = JSON.parse(r.stdout);
      expect(c.prefix).toEqual({ value: 'fromfile', source: 'file' });
      expect(c.dbPoolSize).toEqual({ value: 7, source: 'env' });
      expect(c.logLevel).toEqual({ value: 'debug', source: 'flag' });
      expect(c.db).toEqual({ value: 'postgres://lockmgr:***@db:5432/locks', source: 'file' });
      expect(c.natsUrl).toEqual({ value: 'nats://***@nats:4222', source: 'env' });
      expect(c.maxBatch.source).toBe('default');

      const human = await runCli(['config', '--config', file], { env });
      expect(human.code).toBe(0);
      expect(human.stdout).not.toMatch(/s3cret/);
      expect(human.stdout).toMatch(/^dbPoolSize\s+7\s+\(env LOCKMGR_DB_POOL_SIZE\)$/m);
      expect(human.stdout).toMatch(/^prefix\s+"fromfile"\s+\(file\)$/m);
      expect(human.stdout).toMatch(/^natsUrl\s+"nats:\/\/\*\*\*@nats:4222"\s+\(env LOCKMGR_NATS_URL\)$/m);
    });

    it('takes the file from LOCKMGR_CONFIG too', async () => {
      const file = tmpFile('lockmgr.json', JSON.stringify({ prefix: 'viaenv' }));
      const r = await runCli(['config', '--json'], { env: { LOCKMGR_CONFIG: file } });
      expect(JSON.parse(r.stdout).prefix).toEqual({ value: 'viaenv', source: 'file' });
    });
  });

  describe('bad configuration: exit 78 with one clear line', () => {
    it.each([
      [
        'a missing config file',
        ['daemon', '--config', '/nonexistent/lockmgr.json'],
        {},
        /^lockmgr: cannot read config file \/nonexistent\/lockmgr\.json: ENOENT/,
      ],
      ['an unknown key in the file', ['daemon', '--config', '@FILE@'], {}, /unknown option "dbPool"/],
      [
        'a bad environment value',
        ['daemon'],
        { LOCKMGR_LOG_LEVEL: 'loud' },
        /^lockmgr: environment LOCKMGR_LOG_LEVEL: logLevel must be one of error, warn, info, debug, got "loud"\n$/,
      ],
      [
        'a bad flag value',
        ['migrate', '--db-pool-size', '0'],
        {},
        /^lockmgr: flag --db-pool-size: dbPoolSize must be at least 1, got 0\n$/,
      ],
      [
        'bad client settings',
        ['list-locks'],
        { LOCKMGR_TIMEOUT_MS: 'soon' },
        /^lockmgr: environment LOCKMGR_TIMEOUT_MS: must be a positive number of milliseconds, got "soon"\n$/,
      ],
    ] as [string, string[], Record<string, string>, RegExp][])('%s', async (_title, args, env, message) => {
      const file = tmpFile('bad.json', JSON.stringify({ dbPool: 3 }));
      const r = await runCli(
        args.map((a) => (a === '@FILE@' ? file : a)),
        { env },
      );
      expect(r.code).toBe(78);
      expect(r.stderr).toMatch(message);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stdout).toBe('');
    });

    it('a daemon whose database does not exist exits 1 and says so (password masked)', async () => {
      // (One that cannot be reached yet is waited for: daemon-start-database.test.ts.)
      const url = new URL(PG_ADMIN_URL);
      url.password = 'pg-s3cret'; // trust authentication ignores it; the log must not show it
      url.pathname = '/lockmgr_no_such_database';
      const r = await runCli(['daemon', '--db', url.toString(), '--log-format', 'json']);
      expect(r.code).toBe(1);
      const out = r.stdout + r.stderr;
      expect(out).toContain(JSON.stringify('daemon failed to start: database "lockmgr_no_such_database" does not exist'));
      expect(out).not.toContain('waiting for the database');
      expect(out).not.toContain('pg-s3cret');
    });
  });

  describe('lockmgr migrate', () => {
    it('applies the schema to a new SQLite file once', async () => {
      const db = join(mkdtempSync(join(tmpdir(), 'lockmgr-migrate-')), 'sub', 'locks.sqlite');
      const first = await runCli(['migrate', '--db', db]);
      expect(first.code).toBe(0);
      expect(first.stdout).toMatch(/^migrating sqlite:.*locks\.sqlite\n/);
      expect(first.stdout).toMatch(/applied 0001-create-locks/);
      expect(first.stdout).toMatch(/done: applied \d+ migrations\n$/);
      const second = await runCli(['migrate', '--db', db]);
      expect(second.code).toBe(0);
      expect(second.stdout).toContain('schema is up to date');
    });

    it('applies the schema to a PostgreSQL database (given by LOCKMGR_DB)', async () => {
      const db = await createTestDatabase('postgres');
      try {
        const r = await runCli(['migrate'], { env: { LOCKMGR_DB: db.url } });
        expect(r.code).toBe(0);
        expect(r.stdout).toMatch(/applied 0001-create-locks/);
        const c = new Client({ connectionString: db.url });
        await c.connect();
        const t = await c.query(`SELECT to_regclass('lockmgr_locks') AS t`);
        await c.end();
        expect(t.rows[0].t).toBe('lockmgr_locks');
      } finally {
        await db.drop();
      }
    });
  });
});
