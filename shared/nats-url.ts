/**
 * NATS server URLs as operators write them: `nats://user:pass@host:4222`, `nats://token@host`,
 * several separated by commas. nats.js ignores credentials inside a URL, so they are taken out
 * here and passed as connection options; and masked wherever a URL is shown.
 */

export interface NatsServerOptions {
  /** The URLs without credentials. */
  servers: string[];
  user?: string;
  pass?: string;
  token?: string;
}

const CREDENTIALS = /^(\s*[a-z][a-z0-9+.-]*:\/\/)([^@/]*)@/i;

function decode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** Split a comma-separated server list and lift `user:pass@` or `token@` out of the URLs. */
export function natsServerOptions(urls: string): NatsServerOptions {
  const out: NatsServerOptions = { servers: [] };
  for (const raw of urls
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)) {
    const m = CREDENTIALS.exec(raw);
    if (!m) {
      out.servers.push(raw);
      continue;
    }
    const auth = m[2]!;
    out.servers.push(m[1] + raw.slice(m[0].length));
    const colon = auth.indexOf(':');
    if (colon >= 0) {
      out.user ??= decode(auth.slice(0, colon));
      out.pass ??= decode(auth.slice(colon + 1));
    } else if (auth) {
      out.token ??= decode(auth);
    }
  }
  return out;
}

/** The server list with any credentials replaced by `***`, for logs and `lockmgr config`. */
export function maskNatsUrls(urls: string): string {
  return urls
    .split(',')
    .map((raw) => raw.replace(CREDENTIALS, (_m, scheme: string) => `${scheme}***@`))
    .join(',');
}
