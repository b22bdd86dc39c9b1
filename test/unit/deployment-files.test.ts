/**
 * What CI can check of the deployment files without a Docker engine: docker-compose.yml parses
 * and has the intended structure, its server flags match the ones the tests and .ci/run start
 * nats-server with, the Dockerfile builds and runs the CLI, and the example configs load.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseDocument } from 'yaml';
import { OPTIONS, envName, loadConfig } from '../../daemon/config';
import { parseListenAddress } from '../../daemon/http-server';
import { isPostgresUrl } from '../../daemon/store';

const ROOT = join(__dirname, '..', '..');
const read = (p: string) => readFileSync(join(ROOT, p), 'utf8');

interface Service {
  image?: string;
  build?: string | { context: string };
  command?: string[];
  environment?: Record<string, string>;
  volumes?: string[];
  ports?: string[];
  healthcheck?: { test: string[]; interval?: string; retries?: number };
  depends_on?: Record<string, { condition: string }>;
  deploy?: { replicas?: number };
  stop_signal?: string;
  stop_grace_period?: string;
}

function loadCompose(): { services: Record<string, Service>; volumes: Record<string, unknown> } {
  const doc = parseDocument(read('docker-compose.yml'), { prettyErrors: true });
  expect(doc.errors.map((e) => e.message)).toEqual([]);
  expect(doc.warnings.map((e) => e.message)).toEqual([]);
  return doc.toJS();
}

/** The URL a healthcheck's wget asks, with its flags, or undefined if it is not such a check. */
function wgetCheck(test: string[]): { flags: string[]; url: URL } | undefined {
  const args = test[0] === 'CMD' ? test.slice(1) : test;
  if (args[0] !== 'wget') return undefined;
  return { flags: args.slice(1, -1), url: new URL(args[args.length - 1]!) };
}

/** `-sd <dir>` as nats-server reads it. */
function storeDir(args: string[]): string | undefined {
  const i = args.findIndex((a) => a === '-sd' || a === '--store_dir');
  return i >= 0 ? args[i + 1] : undefined;
}

describe('docker-compose.yml', () => {
  const compose = loadCompose();
  const { nats, postgres, lockmgr } = compose.services;

  /**
   * `docker-compose config -q` with LOCKMGR_PG_PASSWORD set to `password`, or unset; an empty env
   * file stands in for a developer's .env (which may set it).
   */
  const composeConfig = (password: string | undefined) => {
    const env = { ...process.env };
    delete env.LOCKMGR_PG_PASSWORD;
    if (password !== undefined) env.LOCKMGR_PG_PASSWORD = password;
    const envFile = join(mkdtempSync(join(tmpdir(), 'lockmgr-compose-')), 'empty.env');
    writeFileSync(envFile, '');
    const args = ['--env-file', envFile, '-f', join(ROOT, 'docker-compose.yml'), 'config', '-q'];
    return spawnSync('docker-compose', args, { encoding: 'utf8', env });
  };

  it("is accepted by Debian's docker-compose (1.29), which refuses what newer Compose alone knows (a top-level name)", () => {
    const r = composeConfig('s3cret');
    expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: '' });
  });

  it('has no default database password: without LOCKMGR_PG_PASSWORD compose refuses, saying what to set', () => {
    for (const password of [undefined, '']) {
      const r = composeConfig(password);
      expect([password, r.status]).not.toEqual([password, 0]);
      expect(r.stderr).toContain('set LOCKMGR_PG_PASSWORD to the PostgreSQL password');
    }
    // Every use of the variable requires it: no ${VAR:-default} or ${VAR-default} fallback anywhere.
    const uses = read('docker-compose.yml').match(/\$\{LOCKMGR_PG_PASSWORD[^}]*\}/g) ?? [];
    expect(uses.length).toBeGreaterThanOrEqual(2);
    for (const use of uses) expect(use).toMatch(/^\$\{LOCKMGR_PG_PASSWORD:\?/);
    expect(compose.services.postgres!.environment!.POSTGRES_PASSWORD).toMatch(/^\$\{LOCKMGR_PG_PASSWORD:\?/);
  });

  it('has exactly the nats, postgres and lockmgr services and declares its named volumes', () => {
    expect(Object.keys(compose.services).sort()).toEqual(['lockmgr', 'nats', 'postgres']);
    expect(Object.keys(compose.volumes).sort()).toEqual(['nats-data', 'pg-data']);
  });

  it('runs nats-server with JetStream and a store directory on a named volume, like the tests and .ci/run', () => {
    const args = nats!.command!;
    expect(args).toContain('-js');
    const dir = storeDir(args);
    expect(dir).toBeDefined();
    const mount = nats!.volumes!.map((v) => v.split(':')).find(([vol, target]) => vol === 'nats-data' && dir!.startsWith(target!));
    expect(mount).toBeDefined();
    // The flags the test harness and CI start their own servers with.
    const helper = read('test/helpers/nats-server.ts');
    expect(helper).toMatch(/args\.push\('-js', '-sd'/);
    const ci = read('.ci/run');
    expect(ci).toMatch(/nats-server.*\n?.*-js -sd \S+/);
    expect(nats!.ports).toContain('127.0.0.1:4222:4222');
    expect(nats!.healthcheck!.test.join(' ')).toContain('/healthz?js-enabled-only=true');
    // The monitoring port the healthcheck reads is switched on.
    expect(args.join(' ')).toMatch(/-m 8222/);
  });

  it('runs PostgreSQL with its data on a named volume and the pg_isready check CI uses', () => {
    expect(postgres!.image).toMatch(/^postgres:\d+/);
    expect(postgres!.volumes).toContain('pg-data:/var/lib/postgresql/data');
    expect(postgres!.healthcheck!.test).toEqual(expect.arrayContaining(['pg_isready', '-p', '5432']));
    expect(read('.ci/run')).toContain('pg_isready -h 127.0.0.1 -p 5432');
    expect(postgres!.environment!.POSTGRES_DB).toBe('lockmgr');
  });

  it('runs two lockmgr daemon replicas from the Dockerfile, in PostgreSQL mode on the one database', () => {
    expect(lockmgr!.build).toBe('.');
    expect(lockmgr!.command).toEqual(['daemon']);
    expect(lockmgr!.deploy!.replicas).toBe(2);
    const env = lockmgr!.environment!;
    const db = env.LOCKMGR_DB!;
    expect(isPostgresUrl(db)).toBe(true);
    expect(new URL(db.replace(/\$\{[^}]+\}/g, 'x')).host).toBe('postgres:5432');
    expect(new URL(db.replace(/\$\{[^}]+\}/g, 'x')).pathname).toBe(`/${postgres!.environment!.POSTGRES_DB}`);
    expect(env.LOCKMGR_NATS_URL).toBe('nats://nats:4222');
    // Replicas cannot share host ports, and need none: clients reach them through NATS.
    expect(lockmgr!.ports).toBeUndefined();
    // Every LOCKMGR_* variable set is a real option, with a value the daemon accepts.
    const known = new Set(Object.keys(OPTIONS).map(envName));
    for (const key of Object.keys(env)) expect([key, known.has(key)]).toEqual([key, true]);
    const resolved = loadConfig({ env: { ...env, LOCKMGR_DB: db.replace(/\$\{[^}]+\}/g, 'x') } });
    expect(resolved.config.prefix).toBe('lock');
    expect(resolved.config.drainTimeout).toBe(20);
  });

  it('starts the daemons after healthy dependencies, checks each with wget on its own /readyz and drains on stop', () => {
    expect(lockmgr!.depends_on).toEqual({ nats: { condition: 'service_healthy' }, postgres: { condition: 'service_healthy' } });
    // The daemon listens for HTTP on every interface of its container, on the port the check asks.
    const listen = parseListenAddress(lockmgr!.environment!.LOCKMGR_HTTP_LISTEN!).address!;
    expect(listen.host).toBe('0.0.0.0');
    const check = wgetCheck(lockmgr!.healthcheck!.test)!;
    expect(check).toBeDefined();
    // Its own container (loopback), not another replica; a failed HTTP status fails wget.
    expect(check.url.toString()).toBe(`http://127.0.0.1:${listen.port}/readyz`);
    expect(check.flags).toContain('-q');
    for (const s of [nats, postgres, lockmgr]) expect(s!.healthcheck!.retries).toBeGreaterThan(0);
    expect(lockmgr!.stop_signal).toBe('SIGTERM');
    // The grace period covers the drain timeout.
    expect(parseInt(lockmgr!.stop_grace_period!, 10)).toBeGreaterThan(Number(lockmgr!.environment!.LOCKMGR_DRAIN_TIMEOUT));
  });
});

describe('Dockerfile', () => {
  const lines = read('Dockerfile')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));

  it('builds the daemon package on node:20 with the versions of the lockfile and runs `lockmgr daemon` with a /readyz healthcheck', () => {
    const froms = lines.filter((l) => l.startsWith('FROM '));
    expect(froms.length).toBeGreaterThanOrEqual(1);
    for (const f of froms) expect(f).toMatch(/^FROM node:20[-\w]*( AS \w+)?$/);
    const build = lines.join(' ');
    const daemon = JSON.parse(read('daemon/package.json')) as { bin: Record<string, string>; dependencies: Record<string, string> };
    // Built as the package is packed, then only its run-time dependencies, pinned by the lockfile.
    expect(build).toContain('npm run build -w daemon');
    expect(build).toMatch(/npm ci --omit=dev .*-w daemon/);
    // Scripts are off for that install: the native modules among the dependencies are built by name.
    const rebuild = /npm rebuild ([\w -]+)/.exec(build)?.[1]?.trim().split(/\s+/) ?? [];
    expect(rebuild.sort()).toEqual(
      Object.keys(daemon.dependencies)
        .filter((d) => /sqlite/.test(d))
        .sort(),
    );
    expect(lines).toContain('ENTRYPOINT ["lockmgr"]');
    expect(lines).toContain('CMD ["daemon"]');
    // The healthcheck asks the HTTP listener the image turns on, with wget, which the image installs.
    const listen = /LOCKMGR_HTTP_LISTEN=(\S+)/.exec(build)?.[1];
    expect(listen).toBeDefined();
    const port = parseListenAddress(listen!).address!.port;
    const healthcheck = lines.slice(lines.findIndex((l) => l.startsWith('HEALTHCHECK'))).join(' ');
    const cmd = JSON.parse(/CMD (\[.*?\])/.exec(healthcheck)![1]!) as string[];
    expect(wgetCheck(cmd)?.url.toString()).toBe(`http://127.0.0.1:${port}/readyz`);
    const runtime = build.slice(build.lastIndexOf('FROM '));
    expect(runtime).toMatch(/apt-get install [^&]*\bwget\b/);
    expect(lines).toContain(`EXPOSE ${port}`);
    expect(lines.find((l) => l.includes('/usr/local/bin/lockmgr'))).toContain(`/app/daemon/${daemon.bin.lockmgr}`);
  });

  it('copies every source folder the build compiles', () => {
    const copied = lines.filter((l) => l.startsWith('COPY ') && !l.includes('--from')).join(' ');
    for (const dir of ['shared', 'client', 'daemon', 'cli']) expect(copied).toContain(`COPY ${dir} ${dir}`);
    expect(copied).toContain('package-lock.json');
  });
});

describe('config/prometheus.yml', () => {
  const doc = parseDocument(read('config/prometheus.yml'), { prettyErrors: true });
  const prom = doc.toJS() as {
    global: { scrape_interval: string; scrape_timeout: string };
    scrape_configs: { job_name: string; metrics_path?: string; dns_sd_configs?: { names: string[]; type: string; port: number }[] }[];
  };

  it('parses, and scrapes /metrics of every lockmgr replica of docker-compose.yml on the port its daemons listen on', () => {
    expect(doc.errors.map((e) => e.message)).toEqual([]);
    const job = prom.scrape_configs.find((j) => j.job_name === 'lockmgr')!;
    expect(job.metrics_path ?? '/metrics').toBe('/metrics');
    const compose = loadCompose();
    const port = parseListenAddress(compose.services.lockmgr!.environment!.LOCKMGR_HTTP_LISTEN!).address!.port;
    expect(job.dns_sd_configs).toEqual([expect.objectContaining({ names: ['lockmgr'], type: 'A', port })]);
    expect(Object.keys(compose.services)).toContain(job.dns_sd_configs![0]!.names[0]);
    // A scrape ends before the next one starts.
    expect(parseInt(prom.global.scrape_timeout, 10)).toBeLessThan(parseInt(prom.global.scrape_interval, 10));
  });
});

describe('example configuration files', () => {
  it('config/lockmgr.example.json lists every option with its default and loads', () => {
    const file = join(ROOT, 'config', 'lockmgr.example.json');
    const example = JSON.parse(readFileSync(file, 'utf8'));
    const keys = Object.keys(example).filter((k) => k !== '$comment');
    expect(keys.sort()).toEqual(Object.keys(OPTIONS).sort());
    for (const [k, spec] of Object.entries(OPTIONS)) expect([k, example[k]]).toEqual([k, spec.default]);
    const { sources } = loadConfig({ env: {}, file });
    expect(Object.values(sources).every((s) => s === 'file')).toBe(true);
  });

  it('config/lockmgr.postgres.json loads and selects PostgreSQL, with no password in it', () => {
    const file = join(ROOT, 'config', 'lockmgr.postgres.json');
    const { config } = loadConfig({ env: {}, file });
    expect(isPostgresUrl(config.db)).toBe(true);
    expect(config.logFormat).toBe('json');
    expect(config.db).not.toMatch(/:[^/@]+@/);
  });

  it('docs/configuration.md documents every option by flag and environment variable', () => {
    const doc = read('docs/configuration.md');
    for (const key of Object.keys(OPTIONS)) {
      expect([key, doc.includes(envName(key))]).toEqual([key, true]);
      expect([key, doc.includes(`--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`)]).toEqual([key, true]);
    }
  });
});
