/**
 * A loopback TCP proxy that can "blackhole" the path: while blackholed it forwards nothing in
 * either direction and opens no upstream connection, yet closes no socket, as a network that
 * silently drops packets would. Restored, it delivers what was held back, in order (what TCP's
 * retransmissions do once a short partition heals).
 */
import { connect, createServer, type Server, type Socket } from 'node:net';

export interface TcpProxy {
  port: number;
  blackhole(): void;
  restore(): void;
  readonly blackholed: boolean;
  /** Connections accepted so far. */
  readonly accepted: number;
  close(): Promise<void>;
}

interface Pair {
  down: Socket;
  up?: Socket;
  /** Bytes held back while blackholed, per direction, in arrival order. */
  toUp: Buffer[];
  toDown: Buffer[];
  /** A side closed while blackholed: the close is delivered on restore. */
  closing: boolean;
}

/** `listenPort`: a port of our choosing (one a client was already told of); a free one by default. */
export async function startTcpProxy(target: { host: string; port: number }, listenPort = 0): Promise<TcpProxy> {
  let blackholed = false;
  let accepted = 0;
  const pairs = new Set<Pair>();

  const end = (p: Pair) => {
    pairs.delete(p);
    p.down.destroy();
    p.up?.destroy();
  };
  const openUpstream = (p: Pair) => {
    const up = connect(target.port, target.host);
    p.up = up;
    up.setNoDelay(true);
    up.on('data', (d: Buffer) => {
      if (blackholed) p.toDown.push(d);
      else p.down.write(d);
    });
    const close = () => {
      if (blackholed) p.closing = true;
      else end(p);
    };
    up.on('error', close);
    up.on('close', close);
  };
  const flush = (p: Pair) => {
    if (!p.up) openUpstream(p);
    for (const d of p.toUp.splice(0)) p.up!.write(d);
    for (const d of p.toDown.splice(0)) p.down.write(d);
    if (p.closing) end(p);
  };

  const server: Server = createServer((down) => {
    accepted++;
    down.setNoDelay(true);
    const p: Pair = { down, toUp: [], toDown: [], closing: false };
    pairs.add(p);
    down.on('data', (d: Buffer) => {
      if (blackholed || !p.up) p.toUp.push(d);
      else p.up.write(d);
    });
    const close = () => {
      if (blackholed) p.closing = true;
      else end(p);
    };
    down.on('error', close);
    down.on('close', close);
    // A connection made during a blackhole waits for the upstream until it is restored.
    if (!blackholed) flush(p);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(listenPort, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as { port: number }).port;
  return {
    port,
    blackhole: () => {
      blackholed = true;
    },
    restore: () => {
      blackholed = false;
      for (const p of [...pairs]) flush(p);
    },
    get blackholed() {
      return blackholed;
    },
    get accepted() {
      return accepted;
    },
    close: async () => {
      blackholed = false;
      for (const p of [...pairs]) end(p);
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
