/**
 * Delivers events from the outbox table to NATS. With JetStream, each event is published with
 * its id as Nats-Msg-Id and removed from the outbox only after the stream acknowledged it; the
 * stream drops re-sends, so after an outage every event arrives once, in order. Without
 * JetStream, events go out on core NATS (at most once) and the daemon says so once.
 */
import { headers, type JetStreamClient, type NatsConnection, RetentionPolicy, StorageType, nanos } from 'nats';
import { eventSubject, type EventType, type LockEvent } from '../shared/events';
import type { Database, Row, SqlConnection } from './store/database';
import type { Batcher } from './store/transaction';
import type { Logger } from './logger';

export interface EventRelayOptions {
  prefix: string;
  jetstream: 'auto' | 'off';
  stream: string;
  retention: 'limits' | 'interest' | 'workqueue';
  replicas: number;
  maxAgeSeconds: number;
  duplicateWindowSeconds: number;
}

const PAGE = 1000;
/** Header naming the daemon that made a change, so it can skip its own events cheaply. */
export const DAEMON_HEADER = 'Lockmgr-Daemon';
/** Arbitrary constant naming the PostgreSQL advisory lock held by the one relaying daemon. */
const RELAY_LOCK_KEY = 7735342102;

export function outboxRowToEvent(row: Row): LockEvent {
  return {
    id: String(row.event_id),
    type: String(row.type) as EventType,
    seq: Number(row.seq),
    lock: JSON.parse(String(row.lock)),
    cause: JSON.parse(String(row.cause)),
    daemon: String(row.daemon),
    at: new Date(Number(row.at)).toISOString(),
  };
}

export class EventRelay {
  private mode: 'jetstream' | 'core' = 'core';
  private js?: JetStreamClient;
  private running?: Promise<void>;
  private again = false;
  private retryTimer?: NodeJS.Timeout;
  private failing = false;
  private stopped = false;
  private leaderConn?: SqlConnection;
  private readonly encoder = new TextEncoder();

  constructor(
    private readonly db: Database,
    private readonly batcher: Batcher,
    private readonly nc: NatsConnection,
    private readonly options: EventRelayOptions,
    private readonly logger: Logger,
  ) {}

  get deliveryMode(): 'jetstream' | 'core' {
    return this.mode;
  }

  /** Find JetStream and make sure the events stream exists. */
  async start(): Promise<void> {
    if (this.options.jetstream === 'off') {
      this.logger.warn('events go out on core NATS only (eventsJetstream=off): subscribers that are away miss them');
    } else {
      try {
        const jsm = await this.nc.jetstreamManager({ timeout: 5000 });
        await this.ensureStream(jsm);
        this.js = this.nc.jetstream();
        this.mode = 'jetstream';
        this.logger.info('events delivered to JetStream', { stream: this.options.stream, subjects: `${this.options.prefix}.events.>` });
      } catch (err) {
        this.logger.warn(
          `JetStream is not available (${(err as Error).message}): events go out on core NATS only and are not kept; start nats-server with -js to keep an audit trail`,
        );
      }
    }
    this.kick();
  }

  private async ensureStream(jsm: Awaited<ReturnType<NatsConnection['jetstreamManager']>>): Promise<void> {
    const o = this.options;
    const config = {
      name: o.stream,
      subjects: [`${o.prefix}.events.>`],
      retention: { limits: RetentionPolicy.Limits, interest: RetentionPolicy.Interest, workqueue: RetentionPolicy.Workqueue }[o.retention],
      storage: StorageType.File,
      num_replicas: o.replicas,
      max_age: nanos(o.maxAgeSeconds * 1000),
      duplicate_window: nanos(o.duplicateWindowSeconds * 1000),
    };
    try {
      await jsm.streams.info(o.stream);
    } catch {
      await jsm.streams.add(config);
      this.logger.info('created events stream', { stream: o.stream });
    }
  }

  /** New events were committed: deliver them soon. */
  kick(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = this.deliverAll().finally(() => {
      this.running = undefined;
      if (this.again) {
        this.again = false;
        this.kick();
      }
    });
  }

  /** Deliver what is in the outbox; resolves when it is empty or `timeoutMs` has passed. */
  async flush(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      this.kick();
      await this.running;
      if ((await this.countPending()) === 0) return true;
      await new Promise((r) => setTimeout(r, 100));
    }
    return false;
  }

  async countPending(): Promise<number> {
    const [row] = await this.batcher.run((tx) => tx.query('SELECT COUNT(*) AS n FROM lockmgr_outbox'));
    return Number(row?.n ?? 0);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    await this.running;
    if (this.leaderConn) {
      await this.leaderConn.query('SELECT pg_advisory_unlock(?)', [RELAY_LOCK_KEY]).catch(() => undefined);
      this.leaderConn.release();
      this.leaderConn = undefined;
    }
  }

  private async deliverAll(): Promise<void> {
    try {
      for (;;) {
        const rows = await this.fetch();
        if (rows.length === 0) break;
        await this.publish(rows);
        await this.remove(rows.map((r) => Number(r.seq)));
        if (rows.length < PAGE) break;
      }
      if (this.failing) {
        this.failing = false;
        this.logger.info('event delivery resumed');
      }
    } catch (err) {
      if (!this.failing) {
        this.failing = true;
        this.logger.warn(`event delivery paused, events wait in the outbox: ${(err as Error).message}`);
      }
      if (!this.stopped) {
        clearTimeout(this.retryTimer);
        this.retryTimer = setTimeout(() => this.kick(), 1000);
      }
    }
  }

  /** On PostgreSQL only one daemon relays at a time, so the stream keeps the outbox's order. */
  private async leader(): Promise<SqlConnection | null> {
    if (this.leaderConn) return this.leaderConn;
    const conn = await this.db.connect();
    try {
      const [row] = await conn.query('SELECT pg_try_advisory_lock(?) AS got', [RELAY_LOCK_KEY]);
      if (row?.got === true) {
        this.leaderConn = conn;
        return conn;
      }
    } catch (err) {
      conn.release();
      throw err;
    }
    conn.release();
    return null;
  }

  private async fetch(): Promise<Row[]> {
    const sql = `SELECT seq, event_id, type, name, lock, cause, daemon, at FROM lockmgr_outbox ORDER BY seq LIMIT ${PAGE}`;
    if (this.db.dialect === 'sqlite') return this.batcher.run((tx) => tx.query(sql));
    const conn = await this.leader();
    if (!conn) {
      // Another daemon relays; look again later in case it goes away.
      if (!this.stopped) this.retryTimer = setTimeout(() => this.kick(), 2000);
      return [];
    }
    try {
      return await conn.query(sql);
    } catch (err) {
      this.leaderConn = undefined;
      conn.release();
      throw err;
    }
  }

  private async remove(seqs: number[]): Promise<void> {
    const sql = `DELETE FROM lockmgr_outbox WHERE seq IN (${seqs.map(() => '?').join(', ')})`;
    if (this.db.dialect === 'sqlite') {
      await this.batcher.run((tx) => tx.query(sql, seqs));
    } else {
      await this.leaderConn!.query(sql, seqs);
    }
  }

  private async publish(rows: Row[]): Promise<void> {
    const events = rows.map(outboxRowToEvent);
    if (this.mode === 'jetstream' && this.js) {
      const js = this.js;
      // Published in order on one connection, so the stream stores them in order.
      await Promise.all(
        events.map((e) =>
          js.publish(eventSubject(this.options.prefix, e.type, e.lock.name), this.encoder.encode(JSON.stringify(e)), {
            msgID: e.id,
            expect: { streamName: this.options.stream },
            timeout: 5000,
            headers: this.headersFor(e),
          }),
        ),
      );
      return;
    }
    if (this.nc.isClosed()) throw new Error('NATS connection closed');
    for (const e of events) {
      const h = this.headersFor(e);
      h.set('Nats-Msg-Id', e.id);
      this.nc.publish(eventSubject(this.options.prefix, e.type, e.lock.name), this.encoder.encode(JSON.stringify(e)), { headers: h });
    }
    await this.nc.flush();
  }

  private headersFor(e: LockEvent) {
    const h = headers();
    h.set(DAEMON_HEADER, e.daemon);
    return h;
  }
}
