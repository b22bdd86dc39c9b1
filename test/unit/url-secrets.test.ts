/**
 * Secrets in every form they are written: passwords in URLs (with a raw `@` too), tokens, query
 * parameters, lists of NATS URLs; as `lockmgr config` and the logs show them.
 */
import { maskDatabaseUrl } from '../../daemon/store';
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
