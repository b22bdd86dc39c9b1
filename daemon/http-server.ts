/**
 * The daemon's HTTP listener (option httpListen): Prometheus metrics on /metrics, liveness on
 * /healthz, readiness on /readyz. It serves nothing else, and only GET and HEAD.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface ListenAddress {
  host: string;
  port: number;
}

/** `host:port`, `[v6]:port`; port 0 picks a free one. */
export function parseListenAddress(value: string): { address?: ListenAddress; problem?: string } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s[\]/]+)):(\d{1,5})$/.exec(value);
  if (!m) return { problem: 'must be host:port (127.0.0.1:9464, [::1]:9464, 0.0.0.0:9464)' };
  const port = Number(m[3]);
  if (port > 65535) return { problem: 'must have a port from 0 to 65535' };
  return { address: { host: m[1] ?? m[2]!, port } };
}

export interface HttpRoutes {
  /** The Prometheus text exposition. */
  metrics(): Promise<{ contentType: string; body: string }>;
  /** Null when ready, else why not (one line). */
  notReady(): Promise<string | null>;
}

export interface RunningHttpServer {
  /** `http://host:port`, with the port actually bound. */
  readonly url: string;
  readonly port: number;
  close(): Promise<void>;
}

export async function startHttpServer(address: ListenAddress, routes: HttpRoutes): Promise<RunningHttpServer> {
  const server = createServer((req, res) => void serve(req, res, routes));
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) =>
      reject(new Error(`cannot listen for HTTP on ${address.host}:${address.port} (httpListen): ${err.message}`)),
    );
    server.listen(address.port, address.host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const host = address.host.includes(':') ? `[${address.host}]` : address.host;
  return {
    url: `http://${host}:${port}`,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        // A scraper's kept-alive connection must not hold the stop up.
        server.closeAllConnections();
      }),
  };
}

async function serve(req: IncomingMessage, res: ServerResponse, routes: HttpRoutes): Promise<void> {
  const send = (status: number, body: string, contentType = 'text/plain; charset=utf-8') => {
    res.writeHead(status, { 'Content-Type': contentType, 'Cache-Control': 'no-store' });
    res.end(req.method === 'HEAD' ? undefined : body);
  };
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.setHeader('Allow', 'GET, HEAD');
    return send(405, 'method not allowed\n');
  }
  const path = (req.url ?? '/').split('?')[0];
  try {
    switch (path) {
      case '/metrics': {
        const { contentType, body } = await routes.metrics();
        return send(200, body, contentType);
      }
      case '/healthz':
        return send(200, 'ok\n');
      case '/readyz': {
        const why = await routes.notReady();
        return why === null ? send(200, 'ready\n') : send(503, `not ready: ${why}\n`);
      }
      default:
        return send(404, 'not found: try /metrics, /healthz or /readyz\n');
    }
  } catch (err) {
    if (!res.headersSent) send(500, `error: ${(err as Error).message}\n`);
    else res.destroy();
  }
}
