/**
 * What the client knows of its NATS connection: up, down (nats.js is reconnecting) or closed for
 * good, from the connection's status events. One watcher per connection, shared by every client
 * and call on it. Calls hold their copies while the connection is down (nats.js would drop them
 * at its next dial anyway) and send one as soon as it is back.
 */
import { Events, type NatsConnection } from 'nats';

export class NatsLink {
  private static readonly links = new WeakMap<NatsConnection, NatsLink>();

  /** The watcher of `nc` (made on first use). */
  static of(nc: NatsConnection): NatsLink {
    let link = NatsLink.links.get(nc);
    if (!link) {
      link = new NatsLink(nc);
      NatsLink.links.set(nc, link);
    }
    return link;
  }

  /** False while nats.js is reconnecting, and once closed. */
  connected: boolean;
  closed: boolean;
  /** What closed the connection, if it closed on an error (it gave up reconnecting). */
  closeError?: Error;
  /** The last error the server or the connection reported (an authorization error while reconnecting…). */
  lastError?: string;
  private readonly listeners = new Set<() => void>();

  private constructor(nc: NatsConnection) {
    this.closed = nc.isClosed();
    this.connected = !this.closed;
    if (this.closed) return;
    const status = nc.status();
    void (async () => {
      for await (const s of status) {
        if (s.type === Events.Disconnect) this.change(false);
        else if (s.type === Events.Reconnect) this.change(true);
        else if (s.type === Events.Error) this.lastError = String(s.data);
      }
    })().catch(() => undefined);
    void nc.closed().then((err) => {
      this.closed = true;
      if (err) this.closeError = err;
      this.change(false);
    });
  }

  /** Call `fn` on every change (down, back, closed); returns how to stop. */
  onChange(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private change(connected: boolean): void {
    this.connected = connected && !this.closed;
    if (this.connected) this.lastError = undefined;
    for (const fn of [...this.listeners]) fn();
  }
}
