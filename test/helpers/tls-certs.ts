/**
 * Certificates for TLS tests, made with the openssl command into a temporary folder: a CA, a server
 * certificate for 127.0.0.1 (subjectAltName IP:127.0.0.1), a client certificate the CA signed, and
 * a client certificate from another CA (which a server that trusts the first must refuse).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TestCerts {
  dir: string;
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  /** Signed by a CA the server does not trust. */
  strangerCert: string;
  strangerKey: string;
}

function openssl(dir: string, args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
}

/** A P-256 key and a request for it, signed by `ca` (or self-signed when `ca` is absent). */
function issue(dir: string, name: string, subject: string, extensions: string, ca?: { cert: string; key: string }): void {
  openssl(dir, ['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', `${name}.key`]);
  if (!ca) {
    openssl(dir, ['req', '-x509', '-new', '-key', `${name}.key`, '-out', `${name}.pem`, '-days', '2', '-subj', subject]);
    return;
  }
  openssl(dir, ['req', '-new', '-key', `${name}.key`, '-out', `${name}.csr`, '-subj', subject]);
  writeFileSync(join(dir, `${name}.ext`), extensions);
  openssl(dir, [
    'x509',
    '-req',
    '-in',
    `${name}.csr`,
    '-CA',
    ca.cert,
    '-CAkey',
    ca.key,
    '-CAcreateserial',
    '-out',
    `${name}.pem`,
    '-days',
    '2',
    '-extfile',
    `${name}.ext`,
  ]);
}

export function makeTestCerts(): TestCerts {
  const dir = mkdtempSync(join(tmpdir(), 'lockmgr-tls-'));
  issue(dir, 'ca', '/CN=lockmgr test CA', '');
  const ca = { cert: 'ca.pem', key: 'ca.key' };
  issue(dir, 'server', '/CN=lockmgr test server', 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n', ca);
  issue(dir, 'client', '/CN=lockmgr test client', 'extendedKeyUsage=clientAuth\n', ca);
  issue(dir, 'stranger-ca', '/CN=another CA', '');
  issue(dir, 'stranger', '/CN=lockmgr stranger', 'extendedKeyUsage=clientAuth\n', { cert: 'stranger-ca.pem', key: 'stranger-ca.key' });
  const at = (f: string) => join(dir, f);
  return {
    dir,
    ca: at('ca.pem'),
    serverCert: at('server.pem'),
    serverKey: at('server.key'),
    clientCert: at('client.pem'),
    clientKey: at('client.key'),
    strangerCert: at('stranger.pem'),
    strangerKey: at('stranger.key'),
  };
}
