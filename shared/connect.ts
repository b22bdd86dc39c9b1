/**
 * One way to connect to NATS for the daemon, the CLI and the client, honouring the same options:
 * server URLs as operators write them (credentials inside, several comma-separated) and a
 * credentials file. Anything else nats.js accepts passes through.
 */
import { readFileSync } from 'node:fs';
import { connect, credsAuthenticator, type ConnectionOptions, type NatsConnection } from 'nats';
import { natsServerOptions } from './nats-url';

/** The default server, when neither the options nor LOCKMGR_NATS_URL name one. */
export const DEFAULT_NATS_URL = 'nats://127.0.0.1:4222';

export interface NatsConnectOptions {
  /** Server URL(s): a comma-separated string or a list; `user:pass@` or `token@` in a URL is used to log in. */
  servers?: string | readonly string[];
  /** Path of a NATS credentials file (.creds). */
  creds?: string;
  /** How the connection is named on the server (`nats server report connections`). */
  name: string;
  /** Anything else for nats.js (TLS, reconnect policy, timeouts...). */
  nats?: Omit<ConnectionOptions, 'servers' | 'name'>;
}

/** A credentials file that cannot be read: a configuration error, not a connection failure. */
export class NatsCredentialsError extends Error {
  readonly code = 'NATS_CREDENTIALS';
  constructor(file: string, options: { cause: unknown }) {
    super(`cannot read the NATS credentials file ${file}: ${(options.cause as Error).message}`, options);
    this.name = 'NatsCredentialsError';
  }
}

export function connectionOptions(options: NatsConnectOptions): ConnectionOptions {
  const urls = typeof options.servers === 'string' ? options.servers : (options.servers ?? [DEFAULT_NATS_URL]).join(',');
  const { servers, ...urlAuth } = natsServerOptions(urls);
  let authenticator: ConnectionOptions['authenticator'];
  if (options.creds) {
    let creds: Uint8Array;
    try {
      creds = readFileSync(options.creds);
    } catch (cause) {
      throw new NatsCredentialsError(options.creds, { cause });
    }
    authenticator = credsAuthenticator(creds);
  }
  return {
    // A stack capture per request costs more than the rest of a lock request's work.
    noAsyncTraces: true,
    ...urlAuth,
    ...(authenticator ? { authenticator } : {}),
    ...options.nats,
    servers,
    name: options.name,
  };
}

export function connectNats(options: NatsConnectOptions): Promise<NatsConnection> {
  return connect(connectionOptions(options));
}
