/**
 * Secrets in every form they are written: passwords in URLs (with a raw `@` too), tokens, query
 * parameters, lists of NATS URLs; as `lockmgr config` and the logs show them, and as the NATS
 * connection options take them.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { nkeys } from 'nats';
import { loadConfig, maskedConfig, natsSecurity } from '../../daemon/config';
import { maskDatabaseUrl } from '../../daemon/store';
import { connectionOptions, NATS_SECURITY_KEYS, NatsCredentialsError, natsSecurityFromEnv, pickSecurity } from '../../shared/connect';
import { maskNatsUrls, maskUrlSecrets, natsServerOptions } from '../../shared/nats-url';

describe('maskUrlSecrets', () => {
  it.each([
    ['postgres://u:S3cret@h/db', 'postgres://u:***@h/db'],
    ['postgresql://u:S3cret@h:5432/db?sslmode=require', 'postgresql://u:***@h:5432/db?sslmode=require'],
    // A raw `@` in the password: everything up to the last `@` before the host is user information.
    ['postgres://u:p@ss@w0rd@h/db', 'postgres://u:***@h/db'],
    ['postgres://u:pa/ss@h/db', 'postgres://u:***@h/db'],
    ['postgres://h/db?password=S3cret', 'postgres://h/db?password=***'],
    [
      'postgres://u@h/db?sslmode=verify-full&sslpassword=S3cret&application_name=x',
      'postgres://u@h/db?sslmode=verify-full&sslpassword=***&application_name=x',
    ],
    ['postgres://u:S3cret@h/db?password=Other%40S3cret', 'postgres://u:***@h/db?password=***'],
    // A parameter's `@` is not taken for the end of the user information.
    ['postgres://h/db?password=a@S3cret', 'postgres://h/db?password=***'],
    ['postgres://u@h/db', 'postgres://u@h/db'],
    ['nats://alice:S3cret@n1:4222', 'nats://***@n1:4222'],
    ['nats://S3cret@n1:4222', 'nats://***@n1:4222'],
    ['tls://alice:p@ss@S3cret@n1:4222', 'tls://***@n1:4222'],
    ['alice:S3cret@n1:4222', '***@n1:4222'],
    ['nats://n1:4222', 'nats://n1:4222'],
    ['./data/lockmgr.sqlite', './data/lockmgr.sqlite'],
  ])('%s -> %s', (url, masked) => {
    expect(maskUrlSecrets(url)).toBe(masked);
    expect(maskUrlSecrets(url)).not.toContain('S3cret');
  });

  it('masks each URL of a NATS list, keeping the list as written', () => {
    expect(maskNatsUrls('nats://a:S3cret@n1:4222, nats://T0kenS3cret@n2:4222,n3:4222,tls://u:p@S3cret@n4')).toBe(
      'nats://***@n1:4222, nats://***@n2:4222,n3:4222,tls://***@n4',
    );
  });

  it('masks only PostgreSQL URLs as database URLs (a SQLite path may hold an `@`)', () => {
    expect(maskDatabaseUrl('postgres://u:p@ss@w0rd@h/db')).toBe('postgres://u:***@h/db');
    expect(maskDatabaseUrl('/var/lib/lockmgr/a@b.sqlite')).toBe('/var/lib/lockmgr/a@b.sqlite');
  });
});

describe('natsServerOptions', () => {
  it('lifts credentials out of each URL, a raw `@` in the password included', () => {
    expect(natsServerOptions('nats://alice:p@ss@n1:4222,tls://n2:4222')).toEqual({
      servers: ['nats://n1:4222', 'tls://n2:4222'],
      user: 'alice',
      pass: 'p@ss',
    });
    expect(natsServerOptions('bob:pw@127.0.0.1:4222')).toEqual({ servers: ['127.0.0.1:4222'], user: 'bob', pass: 'pw' });
  });
});

describe('lockmgr config and the logs', () => {
  it('show the token and the password as ***, files and the user as they are, empty settings empty', () => {
    const { config } = loadConfig({
      env: { LOCKMGR_NATS_TOKEN: 'T0ken-S3cret', LOCKMGR_NATS_PASSWORD: 'Pw-S3cret', LOCKMGR_NATS_USER: 'alice' },
      flags: { tlsCa: '/etc/lockmgr/ca.pem', db: 'postgres://u:p@ss@S3cret@db/locks?sslpassword=S3cret' },
    });
    const masked = maskedConfig(config);
    expect(JSON.stringify(masked)).not.toContain('S3cret');
    expect(masked).toMatchObject({
      natsToken: '***',
      natsPassword: '***',
      natsUser: 'alice',
      tlsCa: '/etc/lockmgr/ca.pem',
      tlsCert: '',
      natsNkey: '',
      db: 'postgres://u:***@db/locks?sslpassword=***',
    });
  });

  it('take every login and TLS setting from LOCKMGR_* variables, as the client does', () => {
    const env = {
      LOCKMGR_NATS_CREDS: '/c',
      LOCKMGR_NATS_NKEY: '/n',
      LOCKMGR_NATS_TOKEN: 't',
      LOCKMGR_NATS_USER: 'u',
      LOCKMGR_NATS_PASSWORD: 'p',
      LOCKMGR_TLS_CA: '/ca',
      LOCKMGR_TLS_CERT: '/cert',
      LOCKMGR_TLS_KEY: '/key',
    };
    expect(natsSecurityFromEnv(env)).toEqual({
      creds: '/c',
      nkey: '/n',
      token: 't',
      user: 'u',
      password: 'p',
      tlsCa: '/ca',
      tlsCert: '/cert',
      tlsKey: '/key',
    });
    const { config, sources } = loadConfig({ env });
    expect([
      config.natsCreds,
      config.natsNkey,
      config.natsToken,
      config.natsUser,
      config.natsPassword,
      config.tlsCa,
      config.tlsCert,
      config.tlsKey,
    ]).toEqual(Object.values(env));
    expect(sources.tlsKey).toBe('env');
    expect(natsSecurityFromEnv({ LOCKMGR_NATS_TOKEN: '' })).toEqual({});
  });

  it('pick each setting by its key and field, leaving out only those the source does not give', () => {
    const asked: [string, string][] = [];
    const given: Record<string, string> = { natsToken: 't', tlsCa: '', natsUser: 'u' };
    const picked = pickSecurity((key, field) => {
      asked.push([key, field]);
      return given[key];
    });
    expect(asked).toEqual(Object.entries(NATS_SECURITY_KEYS).map(([field, key]) => [key, field]));
    // An empty string is a value: connect() options given empty override their LOCKMGR_* variable.
    expect(picked).toEqual({ token: 't', tlsCa: '', user: 'u' });
    expect(pickSecurity((_key, field) => (field === 'tlsKey' ? '/key' : undefined))).toEqual({ tlsKey: '/key' });
  });

  it("take a config's settings that are not empty, wherever they were set", () => {
    const { config } = loadConfig({ env: { LOCKMGR_NATS_TOKEN: 't' }, flags: { tlsCa: '/ca', natsUser: '' } });
    expect(natsSecurity(config)).toEqual({ token: 't', tlsCa: '/ca' });
    expect(natsSecurity(loadConfig({ env: {} }).config)).toEqual({});
  });
});

describe('connectionOptions', () => {
  const dir = mkdtempSync(join(tmpdir(), 'lockmgr-conn-'));
  const file = (name: string, text: string) => {
    const path = join(dir, name);
    writeFileSync(path, text);
    return path;
  };

  it('passes a token, a user and password, the settings winning over the URL', () => {
    const opts = connectionOptions({ name: 'x', servers: 'nats://url-user:url-pass@n1:4222', user: 'alice', password: 'pw', token: 'tok' });
    expect(opts).toMatchObject({ servers: ['nats://n1:4222'], user: 'alice', pass: 'pw', token: 'tok' });
    expect(opts.tls).toBeUndefined();
  });

  it('reads the TLS files into the options; a tls:// URL alone asks for TLS', () => {
    const ca = file('ca.pem', 'CA PEM');
    const cert = file('cert.pem', 'CERT PEM');
    const key = file('key.pem', 'KEY PEM');
    const opts = connectionOptions({ name: 'x', servers: 'nats://127.0.0.1:4222', tlsCa: ca, tlsCert: cert, tlsKey: key });
    expect(opts.tls).toMatchObject({ ca: 'CA PEM', cert: 'CERT PEM', key: 'KEY PEM' });
    expect(connectionOptions({ name: 'x', servers: 'tls://127.0.0.1:4222' }).tls).toBeInstanceOf(Object);
    // nats.js's own file options are read here too, so that a missing file is the same clear error.
    expect(connectionOptions({ name: 'x', nats: { tls: { caFile: ca } } }).tls).toMatchObject({ ca: 'CA PEM' });
    expect(connectionOptions({ name: 'x', tlsCa: ca, nats: { tls: null } }).tls).toBeNull();
  });

  it('accepts a server certificate valid for the IP address a URL names (nats.js has Node check "localhost")', () => {
    const { checkServerIdentity } = connectionOptions({ name: 'x', servers: 'tls://127.0.0.1:4222' }).tls as {
      checkServerIdentity: (host: string, cert: object) => Error | undefined;
    };
    const cert = (san: string) => ({ subject: { CN: 'x' }, subjectaltname: san });
    expect(checkServerIdentity('localhost', cert('IP Address:127.0.0.1'))).toBeUndefined();
    expect(checkServerIdentity('localhost', cert('IP Address:10.1.1.1'))).toHaveProperty('code', 'ERR_TLS_CERT_ALTNAME_INVALID');
    expect(checkServerIdentity('localhost', cert('DNS:localhost'))).toBeUndefined();
  });

  it('signs with an NKey seed file; a file that holds no user seed, or a missing file, is a NatsCredentialsError naming it', () => {
    const user = nkeys.createUser();
    const seed = file('user.nk', `${new TextDecoder().decode(user.getSeed())}\n`);
    expect(typeof connectionOptions({ name: 'x', nkey: seed }).authenticator).toBe('function');

    const account = file('account.nk', new TextDecoder().decode(nkeys.createAccount().getSeed()));
    const notSeed = file('not-a-seed', 'hello');
    const missing = join(dir, 'missing');
    const cases: [Parameters<typeof connectionOptions>[0], string, string, RegExp][] = [
      [{ name: 'x', nkey: account }, 'nkey', 'not a user NKey seed', /account\.nk holds no user NKey seed/],
      [{ name: 'x', nkey: notSeed }, 'nkey', 'not a user NKey seed', /not-a-seed holds no user NKey seed/],
      [{ name: 'x', nkey: missing }, 'nkey', 'cannot be read', /cannot read the NATS NKey seed file .*missing: ENOENT/],
      [{ name: 'x', creds: missing }, 'creds', 'cannot be read', /cannot read the NATS credentials file .*missing/],
      [{ name: 'x', tlsCa: missing }, 'tlsCa', 'cannot be read', /cannot read the TLS CA file .*missing/],
      [{ name: 'x', tlsCert: missing, tlsKey: seed }, 'tlsCert', 'cannot be read', /cannot read the TLS client certificate file/],
      [{ name: 'x', tlsCert: seed }, 'tlsKey', 'missing', /needs its key: give both tlsCert and tlsKey \(tlsKey is missing\)/],
      [{ name: 'x', creds: seed, nkey: seed }, 'nkey', 'conflicts with creds', /not both/],
    ];
    for (const [options, setting, problem, message] of cases) {
      let err: unknown;
      try {
        connectionOptions(options);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(NatsCredentialsError);
      expect({ setting: (err as NatsCredentialsError).setting, problem: (err as NatsCredentialsError).problem }).toEqual({
        setting,
        problem,
      });
      expect((err as Error).message).toMatch(message);
    }
  });
});
