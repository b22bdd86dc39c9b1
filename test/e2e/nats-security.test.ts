/**
 * Transport security against real nats-servers that demand it: mutual TLS, a token, an NKey, a user
 * and password, and a `.creds` file (operator mode). For each, a daemon (the built CLI as a child
 * process), a LockClient and the lock commands connect with the same settings, and the secrets
 * appear in no log or output; a connection refused for its certificate or login says so at once.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { nkeys } from 'nats';
import { LockClient, InvalidRequest, PermissionDenied, type ConnectOptions } from '../../client/index';
import { envName } from '../../shared/connect';
import { runCli, startCli, until } from '../helpers/cli';
import { createTestDatabase, STORES, type StoreKind } from '../helpers/databases';
import { startDaemon, tryStartDaemon } from '../helpers/daemon-process';
import { operatorSetup } from '../helpers/nats-jwt';
import { startNatsServer, type NatsServer, type NatsServerOptions } from '../helpers/nats-server';
import { makeTestCerts, type TestCerts } from '../helpers/tls-certs';

interface Files {
  certs: TestCerts;
  dir: string;
}

/** How one kind of server is secured, and the same settings as flags, LOCKMGR_* and client options. */
interface Setup {
  server: NatsServerOptions;
  /** The URL clients use (`tls://` for the TLS server). */
  url: (nats: NatsServer) => string;
  env: Record<string, string>;
  flags: string[];
  client: Partial<ConnectOptions>;
  /** What must never be printed. */
  secrets: string[];
}

const TOKEN = 'tok-S3cret-4d2f';
const PASSWORD = 'p@ss:w0rd-S3cret';
const userKey = nkeys.createUser();

function write(files: Files, name: string, text: string): string {
  const path = join(files.dir, name);
  writeFileSync(path, text, { mode: 0o600 });
  return path;
}

const SETUPS: [string, (files: Files) => Setup][] = [
  [
    'mutual TLS',
    ({ certs }) => ({
      server: { args: ['--tlsverify', '--tlscert', certs.serverCert, '--tlskey', certs.serverKey, '--tlscacert', certs.ca] },
      url: (nats) => `tls://127.0.0.1:${nats.port}`,
      env: { LOCKMGR_TLS_CA: certs.ca, LOCKMGR_TLS_CERT: certs.clientCert, LOCKMGR_TLS_KEY: certs.clientKey },
      flags: ['--tls-ca', certs.ca, '--tls-cert', certs.clientCert, '--tls-key', certs.clientKey],
      client: { tlsCa: certs.ca, tlsCert: certs.clientCert, tlsKey: certs.clientKey },
      secrets: [],
    }),
  ],
  [
    'a token',
    () => ({
      server: { config: `authorization { token: "${TOKEN}" }\n` },
      url: (nats) => nats.url,
      env: { LOCKMGR_NATS_TOKEN: TOKEN },
      flags: ['--nats-token', TOKEN],
      client: { token: TOKEN },
      secrets: [TOKEN],
    }),
  ],
  [
    'an NKey seed file',
    (files) => {
      const seed = write(files, 'user.nk', `${new TextDecoder().decode(userKey.getSeed())}\n`);
      return {
        server: { config: `authorization { users: [ { nkey: ${userKey.getPublicKey()} } ] }\n` },
        url: (nats) => nats.url,
        env: { LOCKMGR_NATS_NKEY: seed },
        flags: ['--nats-nkey', seed],
        client: { nkey: seed },
        secrets: [new TextDecoder().decode(userKey.getSeed())],
      };
    },
  ],
  [
    'a user and password',
    () => ({
      server: { config: `authorization { users: [ { user: lockmgr, password: "${PASSWORD}" } ] }\n` },
      url: (nats) => nats.url,
      env: { LOCKMGR_NATS_USER: 'lockmgr', LOCKMGR_NATS_PASSWORD: PASSWORD },
      flags: ['--nats-user', 'lockmgr', '--nats-password', PASSWORD],
      client: { user: 'lockmgr', password: PASSWORD },
      secrets: [PASSWORD],
    }),
  ],
  [
    'a .creds file (operator mode)',
    (files) => {
      const { config, creds } = operatorSetup();
      const path = write(files, 'user.creds', creds);
      return {
        server: { config },
        url: (nats) => nats.url,
        env: { LOCKMGR_NATS_CREDS: path },
        flags: ['--nats-creds', path],
        client: { creds: path },
        secrets: [],
      };
    },
  ],
];

let files: Files;
beforeAll(() => {
  const certs = makeTestCerts();
  files = { certs, dir: mkdtempSync(join(tmpdir(), 'lockmgr-auth-')) };
});

let prefixes = 0;
const nextPrefix = () => `sec${process.pid}x${++prefixes}`;

describe.each(SETUPS)('NATS with %s', (_title, make) => {
  let setup: Setup;
  let nats: NatsServer;
  beforeAll(async () => {
    setup = make(files);
    nats = await startNatsServer(setup.server);
  });
  afterAll(async () => {
    await nats?.stop();
  });

  it.each(STORES)('a daemon on %s, a LockClient and the lock commands connect; no secret is printed', async (store: StoreKind) => {
    const db = await createTestDatabase(store);
    const prefix = nextPrefix();
    const url = setup.url(nats);
    const daemon = await startDaemon({ natsUrl: url, db: db.url, prefix, env: setup.env });
    const client = await LockClient.connect({ servers: url, prefix, reconnect: false, ...setup.client });
    try {
      expect((await client.setLock('sec.client', { locked_by: 'svc' })).counts.created).toBe(1);

      const set = await runCli(['set-lock', 'sec.cli', '--json', '--nats-url', url, '--prefix', prefix, ...setup.flags]);
      expect(set.stderr).toBe('');
      expect(set.code).toBe(0);
      expect(JSON.parse(set.stdout).counts.created).toBe(1);

      // The same settings from the environment.
      const env = { LOCKMGR_NATS_URL: url, LOCKMGR_PREFIX: prefix, ...setup.env };
      const list = await runCli(['list-locks', '--json'], { env });
      expect(list.code).toBe(0);
      expect(JSON.parse(list.stdout).locks.map((l: { name: string }) => l.name)).toEqual(['sec.cli', 'sec.client']);

      const config = await runCli(['config', '--json'], { env });
      expect(config.code).toBe(0);
      const shown = JSON.parse(config.stdout) as Record<string, { value: unknown; source: string }>;
      // Each setting from its variable; secrets masked.
      for (const [variable, value] of Object.entries(setup.env)) {
        const key = Object.keys(shown).find((k) => envName(k) === variable)!;
        expect({ key, ...shown[key] }).toEqual({ key, value: setup.secrets.includes(value) ? '***' : value, source: 'env' });
      }
      for (const secret of setup.secrets) {
        expect(config.stdout).not.toContain(secret);
        expect(daemon.output()).not.toContain(secret);
        expect(set.stdout + list.stdout).not.toContain(secret);
      }
    } finally {
      await client.close();
      await daemon.stop();
      await db.drop();
    }
  });
});

describe('refusals and bad settings say what is wrong at once', () => {
  let tlsServer: NatsServer;
  let tokenServer: NatsServer;
  let certs: TestCerts;
  beforeAll(async () => {
    certs = files.certs;
    tlsServer = await startNatsServer({
      args: ['--tlsverify', '--tlscert', certs.serverCert, '--tlskey', certs.serverKey, '--tlscacert', certs.ca],
    });
    tokenServer = await startNatsServer({ config: `authorization { token: "${TOKEN}" }\n` });
  });
  afterAll(async () => {
    await tlsServer?.stop();
    await tokenServer?.stop();
  });
  const tlsUrl = () => `tls://127.0.0.1:${tlsServer.port}`;
  // Far above nats.js's own connect timeout: an answer that waited for a timeout would say TIMEOUT.
  const cli = (args: string[], env: Record<string, string> = {}) => runCli([...args, '--timeout-ms', '60000'], { env, timeoutMs: 90_000 });

  it('a client without a client certificate, or with one from another CA, is refused for its certificate', async () => {
    for (const extra of [[], ['--tls-cert', certs.strangerCert, '--tls-key', certs.strangerKey]]) {
      const r = await cli(['ping', '--nats-url', tlsUrl(), '--tls-ca', certs.ca, ...extra]);
      expect(r.code).toBe(69);
      expect(r.stderr).toMatch(
        /^lockmgr: NATS at 127\.0\.0\.1:\d+ refused this client's TLS certificate \(.*certificate.*\): .*--tls-cert/,
      );
      expect(r.stderr).not.toMatch(/TIMEOUT/i);
    }
    const json = await cli(['ping', '--json', '--nats-url', tlsUrl(), '--tls-ca', certs.ca]);
    expect(json.code).toBe(69);
    expect(JSON.parse(json.stdout).error.code).toBe('NATS_TLS');

    const err = await LockClient.connect({ servers: tlsUrl(), tlsCa: certs.ca, reconnect: false, nats: { timeout: 60_000 } }).catch(
      (e) => e,
    );
    expect(err).toBeInstanceOf(PermissionDenied);
    expect(err.message).toMatch(/refused this client's TLS certificate/);
  });

  it('a server whose certificate is not trusted, or that offers no TLS for a tls:// URL, is named', async () => {
    const untrusted = await cli(['ping', '--nats-url', tlsUrl(), '--tls-cert', certs.clientCert, '--tls-key', certs.clientKey]);
    expect(untrusted.code).toBe(69);
    expect(untrusted.stderr).toMatch(/the TLS certificate of NATS at 127\.0\.0\.1:\d+ is not trusted \(.+\): give the CA/);

    const plain = await cli(['ping', '--nats-url', `tls://127.0.0.1:${tokenServer.port}`, '--nats-token', TOKEN]);
    expect(plain.code).toBe(69);
    expect(plain.stderr).toMatch(/NATS at 127\.0\.0\.1:\d+ does not offer TLS/);
  });

  it.each(STORES)('a daemon on %s without a client certificate logs the refusal and keeps retrying', async (store: StoreKind) => {
    const db = await createTestDatabase(store);
    const daemon = startCli(['daemon'], {
      env: {
        LOCKMGR_NATS_URL: tlsUrl(),
        LOCKMGR_TLS_CA: certs.ca,
        LOCKMGR_DB: db.url,
        LOCKMGR_PREFIX: nextPrefix(),
        LOCKMGR_LOG_FORMAT: 'json',
      },
      timeoutMs: 120_000,
    });
    try {
      await until(() => /refused this client's TLS certificate/.test(daemon.stdout()), 60_000, 'the refusal in the log');
      const line = JSON.parse(
        daemon
          .stdout()
          .split('\n')
          .find((l) => l.includes('refused this client'))!,
      );
      expect(line.level).toBe('error');
      expect(line.message).toMatch(/check tlsCa, tlsCert and tlsKey; retrying in/);
      expect(daemon.stdout()).not.toMatch(/"message":"ready"/);
      expect(daemon.child.exitCode).toBeNull();
    } finally {
      daemon.child.kill('SIGTERM');
      await daemon.done;
      await db.drop();
    }
  });

  it('a file that cannot be read is a configuration error naming it: CLI and client', async () => {
    const missing = join(files.dir, 'missing.pem');
    const cases: [string[], RegExp][] = [
      [['--tls-ca', missing], /cannot read the TLS CA file .*missing\.pem: ENOENT/],
      [['--tls-ca', certs.ca, '--tls-cert', certs.clientCert, '--tls-key', missing], /cannot read the TLS client key file .*missing\.pem/],
      [['--tls-ca', certs.ca, '--tls-cert', certs.clientCert], /a TLS client certificate needs its key/],
      [['--nats-creds', missing], /cannot read the NATS credentials file .*missing\.pem/],
      [['--nats-nkey', missing], /cannot read the NATS NKey seed file .*missing\.pem/],
      [['--nats-nkey', certs.ca], /NKey seed file .*ca\.pem holds no user NKey seed/],
    ];
    for (const [flags, message] of cases) {
      const r = await cli(['ping', '--nats-url', tlsUrl(), ...flags]);
      expect({ flags, code: r.code }).toEqual({ flags, code: 78 });
      expect(r.stderr).toMatch(message);
    }
    const err = await LockClient.connect({ servers: tlsUrl(), tlsCa: certs.ca, tlsCert: certs.clientCert, tlsKey: missing }).catch(
      (e) => e,
    );
    expect(err).toBeInstanceOf(InvalidRequest);
    expect(err.details).toEqual([{ field: 'tlsKey', problem: 'cannot be read' }]);
    expect(err.message).toContain(missing);
  });

  it.each(STORES)('a daemon on %s with a file that cannot be read exits 78 naming it', async (store: StoreKind) => {
    const db = await createTestDatabase(store);
    try {
      const missing = join(files.dir, 'absent-ca.pem');
      const r = await tryStartDaemon({ natsUrl: tlsUrl(), db: db.url, prefix: nextPrefix(), env: { LOCKMGR_TLS_CA: missing } });
      expect(r.ready).toBe(false);
      if (r.ready) return;
      expect(r.code).toBe(78);
      expect(r.message).toContain(`cannot read the TLS CA file ${missing}`);
    } finally {
      await db.drop();
    }
  });

  it('a wrong token is refused as a login, and the token is not printed', async () => {
    const r = await cli(['ping', '--nats-url', tokenServer.url, '--nats-token', 'not-the-S3cret']);
    expect(r.code).toBe(69);
    expect(r.stderr).toMatch(
      /refused the connection \(.*Authorization Violation.*\): give credentials with --nats-creds, --nats-nkey, --nats-token/,
    );
    expect(r.stderr).not.toContain('not-the-S3cret');
    const err = await LockClient.connect({ servers: tokenServer.url, token: 'not-the-S3cret', reconnect: false }).catch((e) => e);
    expect(err).toBeInstanceOf(PermissionDenied);
  });
});
