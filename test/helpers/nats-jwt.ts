/**
 * A NATS server in operator mode for tests of `.creds` files: an operator, a system account and an
 * account with JetStream, their JWTs signed here with the nkeys that nats.js bundles, preloaded
 * into the server's memory resolver; and a user's credentials file.
 */
import { createHash } from 'node:crypto';
import { nkeys } from 'nats';

type KeyPair = ReturnType<typeof nkeys.createOperator>;

const b64url = (data: string | Uint8Array) => Buffer.from(data).toString('base64url');

/** A NATS JWT: `claims` about `subject`, issued and signed by `issuer`. */
function jwt(issuer: KeyPair, subject: KeyPair, name: string, nats: Record<string, unknown>): string {
  const header = b64url(JSON.stringify({ typ: 'JWT', alg: 'ed25519-nkey' }));
  const claims: Record<string, unknown> = {
    iat: Math.floor(Date.now() / 1000),
    iss: issuer.getPublicKey(),
    sub: subject.getPublicKey(),
    name,
    nats: { version: 2, ...nats },
  };
  claims.jti = createHash('sha256').update(JSON.stringify(claims)).digest('base64url');
  const body = b64url(JSON.stringify(claims));
  return `${header}.${body}.${b64url(issuer.sign(Buffer.from(`${header}.${body}`)))}`;
}

const UNLIMITED = { subs: -1, data: -1, payload: -1, imports: -1, exports: -1, wildcards: true, conn: -1, leaf: -1 };

export interface OperatorSetup {
  /** The nats-server configuration (operator, system account, resolver with the accounts). */
  config: string;
  /** The text of a `.creds` file for a user of the account. */
  creds: string;
}

export function operatorSetup(): OperatorSetup {
  const operator = nkeys.createOperator();
  const system = nkeys.createAccount();
  const account = nkeys.createAccount();
  const user = nkeys.createUser();
  const operatorJwt = jwt(operator, operator, 'test operator', { type: 'operator' });
  const systemJwt = jwt(operator, system, 'SYS', { type: 'account', limits: UNLIMITED });
  const accountJwt = jwt(operator, account, 'lockmgr', {
    type: 'account',
    limits: { ...UNLIMITED, mem_storage: -1, disk_storage: -1, streams: -1, consumer: -1 },
  });
  const userJwt = jwt(account, user, 'lockmgr user', { type: 'user', pub: {}, sub: {}, subs: -1, data: -1, payload: -1 });
  const config = [
    `operator: ${operatorJwt}`,
    `system_account: ${system.getPublicKey()}`,
    'resolver: MEMORY',
    'resolver_preload: {',
    `  ${system.getPublicKey()}: ${systemJwt}`,
    `  ${account.getPublicKey()}: ${accountJwt}`,
    '}',
    '',
  ].join('\n');
  const creds = [
    '-----BEGIN NATS USER JWT-----',
    userJwt,
    '------END NATS USER JWT------',
    '',
    '-----BEGIN USER NKEY SEED-----',
    new TextDecoder().decode(user.getSeed()),
    '------END USER NKEY SEED------',
    '',
  ].join('\n');
  return { config, creds };
}
