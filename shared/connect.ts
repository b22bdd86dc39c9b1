/**
 * One way to connect to NATS for the daemon, the CLI and the client, honouring the same options:
 * server URLs as operators write them (credentials inside, several comma-separated, `tls://`), a
 * login (credentials file, NKey seed file, token, user and password) and TLS (a CA to trust the
 * server by, a client certificate for servers that verify clients). Anything else nats.js accepts
 * passes through.
 */
import { readFileSync } from 'node:fs';
import { isIP, connect as netConnect } from 'node:net';
import { checkServerIdentity, connect as tlsConnect, type ConnectionOptions as TlsConnectOptions, type PeerCertificate } from 'node:tls';
import {
  connect,
  credsAuthenticator,
  ErrorCode,
  NatsError,
  nkeyAuthenticator,
  nkeys,
  type Authenticator,
  type ConnectionOptions,
  type NatsConnection,
  type TlsOptions,
} from 'nats';
import { natsServerOptions } from './nats-url';

/** The default server, when neither the options nor LOCKMGR_NATS_URL name one. */
export const DEFAULT_NATS_URL = 'nats://127.0.0.1:4222';

/** How the daemon, the CLI and the client log in to NATS and secure the connection. Files are paths. */
export interface NatsSecurity {
  /** A NATS credentials file (.creds: a user JWT and its NKey seed), for servers in operator mode. */
  creds?: string;
  /** A file holding a user NKey seed (`SU…`), for servers that list NKey users. */
  nkey?: string;
  /** A token, for servers with `authorization { token }`. */
  token?: string;
  user?: string;
  password?: string;
  /** PEM file of the CA(s) that signed the server's certificate; asks for TLS. */
  tlsCa?: string;
  /** PEM files of a client certificate and its key, for servers that verify clients (mutual TLS). */
  tlsCert?: string;
  tlsKey?: string;
}

/**
 * Each setting's configuration key: the daemon's option name, from which its flag (`--tls-ca`) and
 * environment variable (`LOCKMGR_TLS_CA`) derive.
 */
export const NATS_SECURITY_KEYS = {
  creds: 'natsCreds',
  nkey: 'natsNkey',
  token: 'natsToken',
  user: 'natsUser',
  password: 'natsPassword',
  tlsCa: 'tlsCa',
  tlsCert: 'tlsCert',
  tlsKey: 'tlsKey',
} as const satisfies Record<keyof NatsSecurity, string>;

/** LOCKMGR_NATS_URL for natsUrl, and so on. */
export function envName(key: string): string {
  return `LOCKMGR_${key.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase()}`;
}

/** A setting's configuration key (`natsCreds`, `tlsCa`...). */
export type NatsSecurityKey = (typeof NATS_SECURITY_KEYS)[keyof NatsSecurity];

/**
 * The settings one source gives (a config, the environment, options): `get` is asked for each, by
 * its configuration key and its field; a setting it answers undefined for is left out.
 */
export function pickSecurity(get: (key: NatsSecurityKey, field: keyof NatsSecurity) => string | undefined): NatsSecurity {
  const out: NatsSecurity = {};
  for (const [field, key] of Object.entries(NATS_SECURITY_KEYS) as [keyof NatsSecurity, NatsSecurityKey][]) {
    const value = get(key, field);
    if (value !== undefined) out[field] = value;
  }
  return out;
}

/** The settings given by LOCKMGR_* variables (an empty one counts as unset). */
export function natsSecurityFromEnv(env: NodeJS.ProcessEnv = process.env): NatsSecurity {
  return pickSecurity((key) => env[envName(key)] || undefined);
}

export interface NatsConnectOptions extends NatsSecurity {
  /** Server URL(s): a comma-separated string or a list; `user:pass@` or `token@` in a URL is used to log in. */
  servers?: string | readonly string[];
  /** How the connection is named on the server (`nats server report connections`). */
  name: string;
  /** Anything else for nats.js (reconnect policy, timeouts...); what it sets wins. */
  nats?: Omit<ConnectionOptions, 'servers' | 'name'>;
}

/**
 * A login or TLS setting that cannot be used (a file that cannot be read, a seed that is not one):
 * a configuration error, not a connection failure.
 */
export class NatsCredentialsError extends Error {
  readonly code = 'NATS_CREDENTIALS';
  constructor(
    /** The setting at fault (`creds`, `nkey`, `tlsCa`...). */
    readonly setting: keyof NatsSecurity,
    readonly problem: string,
    message: string,
    options?: { cause: unknown },
  ) {
    super(message, options);
    this.name = 'NatsCredentialsError';
  }
}

const FILES: Record<'creds' | 'nkey' | 'tlsCa' | 'tlsCert' | 'tlsKey', string> = {
  creds: 'NATS credentials file',
  nkey: 'NATS NKey seed file',
  tlsCa: 'TLS CA file',
  tlsCert: 'TLS client certificate file',
  tlsKey: 'TLS client key file',
};

function readSetting(setting: keyof typeof FILES, file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (cause) {
    throw new NatsCredentialsError(setting, 'cannot be read', `cannot read the ${FILES[setting]} ${file}: ${(cause as Error).message}`, {
      cause,
    });
  }
}

function nkeySeed(file: string): Uint8Array {
  const seed = new TextEncoder().encode(readSetting('nkey', file).toString('utf8').trim());
  try {
    if (!nkeys.fromSeed(seed).getPublicKey().startsWith('U')) throw new Error('it is not the seed of a user (SU…)');
  } catch (cause) {
    throw new NatsCredentialsError(
      'nkey',
      'not a user NKey seed',
      `the ${FILES.nkey} ${file} holds no user NKey seed: ${(cause as Error).message}`,
      {
        cause,
      },
    );
  }
  return seed;
}

/**
 * Host and port of a server URL as nats.js reads it (`nats://h:p`, `tls://h`, `h:p`, `[::1]:p`);
 * null for one it cannot read either (nats.js says so when connecting).
 */
function hostPort(server: string): { host: string; port: number } | null {
  try {
    const url = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(server) ? server : `nats://${server}`);
    return { host: url.hostname.replace(/^\[(.*)\]$/, '$1'), port: Number(url.port || 4222) };
  } catch {
    return null;
  }
}

/**
 * nats.js gives Node no server name for a server written as an IP address, so Node checks the
 * server's certificate against "localhost". Accept a certificate that is valid for one of the IP
 * addresses the URLs name (their subjectAltName `IP:`), as for a host name.
 */
function identityCheck(servers: readonly string[]): (host: string, cert: PeerCertificate) => Error | undefined {
  const ips = servers.map((s) => hostPort(s)?.host ?? '').filter((h) => isIP(h) !== 0);
  return (host, cert) => {
    const err = checkServerIdentity(host, cert);
    if (err && ips.some((ip) => checkServerIdentity(ip, cert) === undefined)) return undefined;
    return err;
  };
}

/**
 * The TLS options: ours, with what `nats.tls` adds; files are read here (nats.js's `caFile`... too)
 * so that one that cannot be read is a clear error. Undefined when nothing asks for TLS.
 */
function tlsOptions(security: NatsSecurity, servers: readonly string[], extra: TlsOptions | undefined): TlsOptions | undefined {
  const wanted = security.tlsCa || security.tlsCert || security.tlsKey || extra || servers.some((s) => /^\s*tls:\/\//i.test(s));
  if (!wanted) return undefined;
  const { caFile, certFile, keyFile, ...given } = extra ?? {};
  const ca = security.tlsCa ?? caFile;
  const cert = security.tlsCert ?? certFile;
  const key = security.tlsKey ?? keyFile;
  if (!cert !== !key) {
    const missing = cert ? 'tlsKey' : 'tlsCert';
    throw new NatsCredentialsError(
      missing,
      'missing',
      `a TLS client certificate needs its key: give both tlsCert and tlsKey (${missing} is missing)`,
    );
  }
  const tls: TlsOptions & Pick<TlsConnectOptions, 'checkServerIdentity'> = { checkServerIdentity: identityCheck(servers), ...given };
  if (ca) tls.ca = readSetting('tlsCa', ca).toString('utf8');
  if (cert) tls.cert = readSetting('tlsCert', cert).toString('utf8');
  if (key) tls.key = readSetting('tlsKey', key).toString('utf8');
  return tls;
}

/** nats.js connection options for these settings: URL credentials first, then the explicit ones. */
export function connectionOptions(options: NatsConnectOptions): ConnectionOptions {
  const urls = typeof options.servers === 'string' ? options.servers : (options.servers ?? [DEFAULT_NATS_URL]).join(',');
  const { servers, ...login } = natsServerOptions(urls);
  if (options.token) login.token = options.token;
  if (options.user) login.user = options.user;
  if (options.password) login.pass = options.password;
  if (options.creds && options.nkey) {
    throw new NatsCredentialsError(
      'nkey',
      'conflicts with creds',
      'give a NATS credentials file or an NKey seed file, not both (a .creds file holds its own seed)',
    );
  }
  let authenticator: Authenticator | undefined;
  if (options.creds) authenticator = credsAuthenticator(readSetting('creds', options.creds));
  else if (options.nkey) authenticator = nkeyAuthenticator(nkeySeed(options.nkey));
  // `tls: null` tells nats.js not to use TLS even where the server offers it.
  const { tls: extraTls, ...nats } = options.nats ?? {};
  const tls = extraTls === null ? null : tlsOptions(options, servers, extraTls);
  return {
    // A stack capture per request costs more than the rest of a lock request's work.
    noAsyncTraces: true,
    ...login,
    ...(authenticator ? { authenticator } : {}),
    ...(tls !== undefined ? { tls } : {}),
    ...nats,
    servers,
    name: options.name,
  };
}

/** The TLS handshake failed, or the server refused this client's certificate. */
export class NatsTlsError extends Error {
  readonly code = 'NATS_TLS';
  constructor(message: string, options?: { cause: unknown }) {
    super(message, options);
    this.name = 'NatsTlsError';
  }
}

/** Node's codes for a server certificate that cannot be trusted (no CA, wrong name, expired...). */
const UNTRUSTED = /CERT|SIGNATURE|ISSUER|SELF_SIGNED|ALTNAME/;

/**
 * What a TLS error means, said in one line: OpenSSL's message is long; its `reason` is the part
 * that says what happened ("sslv3 alert bad certificate").
 */
function tlsError(err: Error, where: string, afterHandshake: boolean): NatsTlsError {
  const { code = '', reason } = err as NodeJS.ErrnoException & { reason?: string };
  const why = reason ?? err.message.split('\n')[0];
  if (afterHandshake) {
    return new NatsTlsError(
      `NATS at ${where} refused this client's TLS certificate (${why}): it verifies clients; give a client certificate and key signed by a CA it trusts`,
      { cause: err },
    );
  }
  if (UNTRUSTED.test(code)) {
    return new NatsTlsError(
      `the TLS certificate of NATS at ${where} is not trusted (${why}): give the CA that signed it, and name the server as its certificate does`,
      { cause: err },
    );
  }
  return new NatsTlsError(`the TLS handshake with NATS at ${where} failed (${why})`, { cause: err });
}

function isTlsError(err: unknown): err is Error {
  const code = (err as { code?: unknown } | null)?.code;
  return err instanceof Error && typeof code === 'string' && (UNTRUSTED.test(code) || code.startsWith('ERR_SSL'));
}

type Verdict = 'ok' | 'unreachable' | Error;

/** One server: read its INFO, make the TLS handshake, and hear whether it accepts this client. */
function checkServerTls(server: string, tls: TlsOptions, deadline: number): Promise<Verdict> {
  const address = hostPort(server);
  if (!address) return Promise.resolve('unreachable');
  const { host, port } = address;
  const where = `${host.includes(':') ? `[${host}]` : host}:${port}`;
  return new Promise<Verdict>((resolve) => {
    const socket = netConnect(port, host);
    let done = false;
    const finish = (verdict: Verdict) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(verdict);
    };
    const timer = setTimeout(
      () => finish(NatsError.errorForCode(ErrorCode.ConnectionTimeout, new Error(`no TLS handshake with ${where} in time`))),
      Math.max(0, deadline - Date.now()),
    );
    let tlsStarted = false;
    let handshaken = false;
    // Before TLS: the server is not there. After: the TLS socket's own error says more, and wins.
    socket.on('error', (err) => finish(tlsStarted ? tlsError(err, where, handshaken) : 'unreachable'));
    let info = '';
    const onInfo = (chunk: Buffer) => {
      info += chunk.toString('latin1');
      const end = info.indexOf('\r\n');
      if (end < 0) return;
      socket.off('data', onInfo);
      let parsed: { tls_required?: boolean; tls_available?: boolean; tls_verify?: boolean };
      try {
        parsed = JSON.parse(info.slice(0, end).replace(/^INFO\s+/, ''));
      } catch {
        return finish('ok'); // not a NATS server as we know it: nats.js says what is wrong
      }
      if (!parsed.tls_required && !parsed.tls_available) {
        return finish(new NatsTlsError(`NATS at ${where} does not offer TLS, which a tls:// URL or a TLS setting asks for`));
      }
      tlsStarted = true;
      const secure = tlsConnect({ ...(tls as TlsConnectOptions), socket, servername: isIP(host) ? undefined : host });
      let ticket = false;
      secure.on('secureConnect', () => {
        handshaken = true;
        // TLS 1.2 checks the client's certificate within the handshake; with TLS 1.3 the server
        // checks it afterwards, and sends its session ticket only once it accepted it (or an
        // alert instead). A server that does not verify clients has nothing to refuse.
        if (secure.getProtocol() !== 'TLSv1.3' || !parsed.tls_verify || ticket) finish('ok');
      });
      secure.on('session', () => {
        ticket = true;
        if (handshaken) finish('ok');
      });
      secure.on('error', (err) => finish(tlsError(err, where, handshaken)));
      secure.on('close', () =>
        finish(new NatsTlsError(`NATS at ${where} closed the connection ${handshaken ? 'after' : 'during'} the TLS handshake`)),
      );
    };
    socket.on('data', onInfo);
  });
}

/**
 * A server that verifies clients refuses a certificate after a TLS 1.3 handshake, which nats.js
 * sees as a closed socket: its connect() then waits for its whole timeout. So before connecting
 * with TLS, the first server that answers is asked here, and a refusal is reported at once, with
 * the server's reason. Servers that cannot be reached are left to nats.js.
 */
async function checkTls(options: ConnectionOptions): Promise<void> {
  const tls = options.tls;
  if (!tls || tls.handshakeFirst) return;
  const deadline = Date.now() + (options.timeout ?? 20_000);
  for (const server of (options.servers ?? []) as string[]) {
    const verdict = await checkServerTls(server, tls, deadline);
    if (verdict === 'unreachable') continue;
    if (verdict instanceof Error) throw verdict;
    return;
  }
}

export async function connectNats(options: NatsConnectOptions): Promise<NatsConnection> {
  const opts = connectionOptions(options);
  await checkTls(opts);
  try {
    return await connect(opts);
  } catch (err) {
    // A server that asks for TLS when no TLS setting was given: nats.js tried with the system's CAs.
    throw isTlsError(err) ? tlsError(err, (opts.servers as string[]).join(','), false) : err;
  }
}
