/**
 * Server URLs as operators write them: `nats://user:pass@host:4222`, `nats://token@host`, several
 * separated by commas, and `postgres://user:pass@host/db?sslpassword=…`. nats.js ignores
 * credentials inside a URL, so they are taken out here and passed as connection options; and every
 * secret in a URL is masked wherever the URL is shown.
 */

export interface NatsServerOptions {
  /** The URLs without credentials. */
  servers: string[];
  user?: string;
  pass?: string;
  token?: string;
}

const SCHEME = /^\s*[a-z][a-z0-9+.-]*:\/\//i;

/**
 * A URL cut around its user information: everything before the last `@` that follows the scheme
 * (a password may hold a raw `@`, as the WHATWG parser that pg uses reads it). Null without `@`.
 */
function splitUserinfo(url: string): { scheme: string; userinfo: string; rest: string } | null {
  const scheme = SCHEME.exec(url)?.[0] ?? '';
  const at = url.lastIndexOf('@');
  if (at < scheme.length) return null;
  return { scheme, userinfo: url.slice(scheme.length, at), rest: url.slice(at + 1) };
}

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
    const parts = splitUserinfo(raw);
    if (!parts) {
      out.servers.push(raw);
      continue;
    }
    const { scheme, userinfo, rest } = parts;
    out.servers.push(scheme + rest);
    const colon = userinfo.indexOf(':');
    if (colon >= 0) {
      out.user ??= decode(userinfo.slice(0, colon));
      out.pass ??= decode(userinfo.slice(colon + 1));
    } else if (userinfo) {
      out.token ??= decode(userinfo);
    }
  }
  return out;
}

/** Query parameters whose value is a secret: `password`, `sslpassword`, `token`… */
const SECRET_PARAM = /([?&][^=&#]*(?:password|passwd|secret|token)[^=&#]*=)[^&#]*/gi;
/** Schemes where a user name alone (no `:`) is a name, not a token. */
const NAMED_USER = /^\s*postgres(?:ql)?:\/\//i;

/**
 * One URL with every secret replaced by `***`, for logs and `lockmgr config`: the password of
 * `user:pass@` (all of the user information for NATS, where `token@` is a secret too; PostgreSQL
 * keeps the user name) and secret query parameters.
 */
export function maskUrlSecrets(url: string): string {
  // Parameters first: an `@` inside their value must not be taken for the end of the user information.
  const masked = url.replace(SECRET_PARAM, '$1***');
  const parts = splitUserinfo(masked);
  if (!parts || parts.userinfo === '') return masked;
  const { scheme, userinfo, rest } = parts;
  const colon = userinfo.indexOf(':');
  let shown = '***';
  if (NAMED_USER.test(scheme)) shown = colon >= 0 ? `${userinfo.slice(0, colon)}:***` : userinfo;
  return `${scheme}${shown}@${rest}`;
}

/** A comma-separated server list with the secrets of each URL masked. */
export function maskNatsUrls(urls: string): string {
  return urls.split(',').map(maskUrlSecrets).join(',');
}
