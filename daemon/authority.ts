/**
 * One authority per prefix: the daemons serving a prefix must all answer from one store, or two
 * of them could grant the same lock. Daemons sharing one PostgreSQL database are one authority;
 * a SQLite store has one daemon. Every daemon advertises its store's identity in its service
 * metadata; before serving, and every `intervalMs` while it serves, it asks the daemons on NATS
 * (`$SRV.PING.lockmgr`) and looks for a conflicting peer on its prefix. At start that refuses the
 * start; later it makes this daemon refuse lock requests (AUTHORITY_CONFLICT) until the peer is gone.
 */
import { Empty, RequestStrategy, type NatsConnection } from 'nats';
import { ErrorCode, servicePingSubject, type DaemonMetadata, type WireError } from '../shared/protocol';
import type { Cancel, Clock } from './clock';
import type { Logger } from './logger';

/** Another authority serves the prefix: this daemon must not. */
export class AuthorityConflict extends Error {
  readonly code = ErrorCode.AUTHORITY_CONFLICT;
  constructor(message: string) {
    super(message);
    this.name = 'AuthorityConflict';
  }
}

/** A daemon that answered the ping. */
interface Peer {
  /** Its service instance id. */
  id: string;
  metadata: Partial<DaemonMetadata>;
}

/** True if `peer` may serve `ours.prefix` beside us: only daemons sharing one multi-writer store may. */
export function conflicts(ours: DaemonMetadata, peer: Partial<DaemonMetadata>): boolean {
  if (peer.prefix !== ours.prefix || peer.daemon === ours.daemon) return false;
  // A daemon of an earlier version does not say its store: beside another PostgreSQL daemon it is
  // taken to share the database (a rolling upgrade), as before identities existed.
  if (peer.store_id === undefined) return !(ours.writers === 'many' && peer.store === ours.store);
  return !(ours.writers === 'many' && peer.writers === 'many' && peer.store_id === ours.store_id);
}

function describe(peer: Peer): string {
  const m = peer.metadata;
  return `daemon ${m.daemon ?? peer.id} (${m.store ?? '?'} store ${m.store_id ?? 'of an earlier version'})`;
}

export class Authority {
  private conflict: WireError | null = null;
  private cancelTimer?: Cancel;
  private stopped = false;
  private readonly decoder = new TextDecoder();

  constructor(
    private readonly nc: NatsConnection,
    private readonly ours: DaemonMetadata,
    private readonly logger: Logger,
    private readonly clock: Clock,
    private readonly options: { intervalMs: number; waitMs: number },
  ) {}

  /** Throws AuthorityConflict if another authority serves the prefix now. */
  async ensureAlone(): Promise<void> {
    const peers = await this.conflictingPeers();
    if (peers.length > 0) throw new AuthorityConflict(this.explain(peers));
  }

  /** Look for conflicting peers every intervalMs from now on. */
  start(): void {
    this.schedule();
  }

  stop(): void {
    this.stopped = true;
    this.cancelTimer?.();
  }

  /** Why lock requests are refused now, or null. */
  refusal(): WireError | null {
    return this.conflict;
  }

  private schedule(): void {
    if (this.stopped) return;
    this.cancelTimer = this.clock.schedule(() => void this.check().finally(() => this.schedule()), this.options.intervalMs);
  }

  private async check(): Promise<void> {
    let peers: Peer[];
    try {
      peers = await this.conflictingPeers();
    } catch (err) {
      this.logger.debug(`could not ask the daemons on NATS: ${(err as Error).message}`);
      return;
    }
    if (peers.length > 0) {
      const message = this.explain(peers);
      if (!this.conflict) this.logger.error(`${message}; refusing lock requests until it is gone`);
      this.conflict = { code: ErrorCode.AUTHORITY_CONFLICT, message };
    } else if (this.conflict) {
      this.conflict = null;
      this.logger.info(`no other authority serves prefix "${this.ours.prefix}" any more: serving again`);
    }
  }

  private explain(peers: Peer[]): string {
    const m = this.ours;
    return (
      `${peers.map(describe).join(', ')} also serves prefix "${m.prefix}", but not from this daemon's ${m.store} store ${m.store_id}: ` +
      `two stores would grant the same locks. Stop one of them, or give it another prefix` +
      (m.writers === 'one' ? ' (a SQLite store has one daemon; several daemons share a PostgreSQL database)' : '')
    );
  }

  private async conflictingPeers(): Promise<Peer[]> {
    const peers: Peer[] = [];
    try {
      const replies = await this.nc.requestMany(servicePingSubject(), Empty, {
        maxWait: this.options.waitMs,
        strategy: RequestStrategy.JitterTimer,
        jitter: Math.min(300, this.options.waitMs),
      });
      for await (const m of replies) {
        let info: { id?: string; metadata?: Partial<DaemonMetadata> };
        try {
          info = JSON.parse(this.decoder.decode(m.data)) as typeof info;
        } catch {
          continue; // not a daemon's answer
        }
        const peer = { id: info.id ?? '?', metadata: info.metadata ?? {} };
        if (conflicts(this.ours, peer.metadata)) peers.push(peer);
      }
    } catch (err) {
      if ((err as { code?: unknown }).code !== '503') throw err; // 503: no daemon answers at all
    }
    return peers;
  }
}
