/**
 * LockDaemon owns every part of a running daemon and starts and stops them in order:
 * database -> migrations -> NATS -> event relay -> service endpoints -> sweeper, and back.
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { connect, credsAuthenticator, type NatsConnection, type Service, type Subscription } from 'nats';
import { readFileSync } from 'node:fs';
import { maskNatsUrls, natsServerOptions } from '../shared/nats-url';
import { ENDPOINTS, requestSubject } from '../shared/protocol';
import type { LockEvent } from '../shared/events';
import { loadConfig, maskedConfig, type DaemonConfig } from './config';
import { DAEMON_HEADER, EventRelay } from './event-relay';
import { LockService } from './lock-service';
import { createLogger, type Logger, type LogLevel } from './logger';
import { Database } from './store/database';
import { EXPIRED_PAGE, deleteExpired, type Requester } from './store/lock-ops';
import { migrate } from './store/migrations';
import { Batcher, type CommittedEvent } from './store/transaction';
import { WaitQueue } from './waiters';

export const SERVICE_NAME = 'lockmgr';
export const SERVICE_VERSION: string = (() => {
  try {
    return JSON.parse(readFileSync(require.resolve('../../package.json'), 'utf8')).version;
  } catch {
    return JSON.parse(readFileSync(require.resolve('../package.json'), 'utf8')).version;
  }
})();

export interface LockDaemonOptions {
  config?: Partial<DaemonConfig>;
  logger?: Logger;
  /** An existing NATS connection to serve on (the daemon then does not close it). */
  nc?: NatsConnection;
}

const RELEASE_TYPES = new Set(['released', 'expired', 'reset']);
/** After each full page of expired locks, the sweeper pauses this fraction of the page's time. */
const SWEEP_PAUSE = 1;

export class LockDaemon {
  readonly config: DaemonConfig;
  readonly logger: Logger;
  /** Identifies this daemon in events: host, pid and a random suffix. */
  readonly id = `${hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`;
  private db?: Database;
  private batcher?: Batcher;
  private nc?: NatsConnection;
  private ownsConnection = true;
  private service?: Service;
  private relay?: EventRelay;
  private lockService?: LockService;
  /** Per waited-for name: a subscription to its events, so releases by other daemons wake us. */
  private readonly wakeSubs = new Map<string, Subscription>();
  private sweepTimer?: NodeJS.Timeout;
  private sweeping?: Promise<void>;
  private readonly waiters = new WaitQueue({
    watch: (name) => this.watchReleases(name),
    unwatch: (name) => {
      this.wakeSubs.get(name)?.unsubscribe();
      this.wakeSubs.delete(name);
    },
  });
  private starting?: Promise<void>;
  private stopping?: Promise<void>;

  constructor(private readonly options: LockDaemonOptions = {}) {
    this.config = { ...loadConfig({ env: {} }).config, ...options.config };
    this.logger = options.logger ?? createLogger({ level: this.config.logLevel as LogLevel, format: this.config.logFormat as 'auto' });
  }

  /** Start everything; resolves once the endpoints answer. Safe to call twice. */
  start(): Promise<void> {
    this.starting ??= this.doStart();
    return this.starting;
  }

  /** The database, once started (for tools and tests). */
  get database(): Database {
    if (!this.db) throw new Error('daemon not started');
    return this.db;
  }

  get connection(): NatsConnection | undefined {
    return this.nc;
  }

  get eventDelivery(): 'jetstream' | 'core' | undefined {
    return this.relay?.deliveryMode;
  }

  private async doStart(): Promise<void> {
    const c = this.config;
    this.logger.info('starting lockmgr daemon', { version: SERVICE_VERSION, id: this.id, config: maskedConfig(c) });

    this.db = new Database({ url: c.db, poolSize: c.dbPoolSize, sqliteSynchronous: c.sqliteSynchronous as 'FULL' | 'NORMAL', checkpointIntervalMs: c.sqliteCheckpointInterval });
    if (c.migrate) {
      const applied = await migrate({ sequelize: this.db.sequelize, dialect: this.db.dialect });
      this.logger.info(applied.length ? `applied migrations: ${applied.join(', ')}` : 'schema is up to date', { store: this.db.describe() });
    }
    this.logger.info('store ready', { store: this.db.describe(), dialect: this.db.dialect });

    this.batcher = new Batcher(this.db, {
      maxBatch: c.maxBatch,
      // One PostgreSQL connection stays free for the event relay.
      concurrency: Math.max(1, c.dbPoolSize - 1),
      daemonId: this.id,
      onCommit: (events) => this.committed(events),
      housekeeping: async (tx) => this.relay?.housekeeping(tx),
    });

    if (this.options.nc) {
      this.nc = this.options.nc;
      this.ownsConnection = false;
    } else {
      this.nc = await this.connectNats();
    }
    this.watchNats(this.nc);

    this.relay = new EventRelay(
      this.db,
      this.batcher,
      this.nc,
      {
        prefix: c.prefix,
        jetstream: c.eventsJetstream as 'auto' | 'off',
        stream: c.eventsStream,
        retention: c.eventsRetention as 'limits',
        replicas: c.eventsReplicas,
        maxAgeSeconds: c.eventsMaxAge,
        duplicateWindowSeconds: c.eventsDuplicateWindow,
      },
      this.logger,
    );
    await this.relay.start();

    this.lockService = new LockService(this.batcher, this.waiters, this.logger);
    this.service = await this.nc.services.add({
      name: SERVICE_NAME,
      version: SERVICE_VERSION,
      description: 'lock coordinator: django-lockmgr semantics over NATS request/reply',
      queue: SERVICE_NAME,
      metadata: { prefix: c.prefix, store: this.db.dialect, daemon: this.id },
    });
    const svc = this.lockService;
    for (const endpoint of ENDPOINTS) {
      this.service.addEndpoint(endpoint, {
        subject: requestSubject(c.prefix, endpoint),
        handler: (err, msg) => {
          if (err) {
            this.logger.error(`endpoint ${endpoint} stopped: ${err.message}`);
            return;
          }
          svc.handle(endpoint, msg);
        },
      });
    }
    // The endpoint subscriptions reach the server asynchronously: "ready" (and start() resolving)
    // must mean a request sent now finds a responder, not "no responders".
    await this.nc.flush();
    this.logger.info('serving', { subjects: ENDPOINTS.map((e) => requestSubject(c.prefix, e)), queue: SERVICE_NAME });

    this.scheduleSweep();
    this.logger.info('ready');
  }

  private async connectNats(): Promise<NatsConnection> {
    const c = this.config;
    const { servers, ...urlAuth } = natsServerOptions(c.natsUrl);
    const auth = c.natsCreds ? { ...urlAuth, authenticator: credsAuthenticator(readFileSync(c.natsCreds)) } : urlAuth;
    let delay = 1000;
    for (let attempt = 1; ; attempt++) {
      if (this.stopping) throw new Error('stopped before NATS was reached');
      try {
        return await connect({
          servers,
          name: `lockmgr-daemon ${this.id}`,
          maxReconnectAttempts: -1,
          // No stack capture per request: the daemon publishes one JetStream request per event.
          noAsyncTraces: true,
          reconnectTimeWait: 1000,
          ...auth,
        });
      } catch (err) {
        this.logger.error(
          `cannot reach NATS at ${maskNatsUrls(c.natsUrl)} (${(err as Error).message}): start nats-server (with -js for the audit trail) or set LOCKMGR_NATS_URL; retrying in ${delay / 1000}s (attempt ${attempt})`,
        );
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 15_000);
      }
    }
  }

  private watchNats(nc: NatsConnection): void {
    void (async () => {
      for await (const s of nc.status()) {
        if (s.type === 'disconnect') this.logger.warn('NATS disconnected; reconnecting', { server: s.data });
        else if (s.type === 'reconnect') this.logger.info('NATS reconnected', { server: s.data });
        else if (s.type === 'error') this.logger.error(`NATS error: ${String(s.data)}`);
      }
    })();
  }

  /** Releases of `name` made by other daemons sharing the database wake our waiters too. */
  private async watchReleases(name: string): Promise<void> {
    if (!this.nc || this.nc.isClosed()) return;
    const prefix = this.config.prefix;
    const sub = this.nc.subscribe(`${prefix}.events.*.${name}`, {
      callback: (_err, msg) => {
        if (msg.headers?.get(DAEMON_HEADER) === this.id) return; // ours: already woken at commit
        const type = msg.subject.slice(prefix.length + 8, msg.subject.length - name.length - 1);
        if (RELEASE_TYPES.has(type)) this.waiters.notify(name);
      },
    });
    this.wakeSubs.set(name, sub);
    // The waiter looks at the lock only once the server has the subscription: a release made
    // elsewhere after that look is then sure to reach us.
    await this.nc.flush();
  }

  /** After each commit: wake local waiters for released names and hand the events to the relay. */
  private committed(events: CommittedEvent[]): void {
    for (const e of events) if (RELEASE_TYPES.has(e.type)) this.waiters.notify(e.lock.name);
    this.relay?.committed(events);
  }

  private scheduleSweep(): void {
    const interval = this.config.sweepInterval * 1000;
    const tick = () => {
      this.sweeping = this.sweep().finally(() => {
        this.sweeping = undefined;
        if (!this.stopping) this.sweepTimer = setTimeout(tick, interval);
      });
    };
    this.sweepTimer = setTimeout(tick, interval);
  }

  /** Remove every expired lock, publishing `expired` for each, so expiries need no request. */
  private async sweep(): Promise<void> {
    const who: Requester = { lockedBy: hostname(), process: process.pid, client: null };
    try {
      for (;;) {
        const started = performance.now();
        const rows = await this.batcher!.run((tx) => deleteExpired(tx, EXPIRED_PAGE, who, 'sweeper'));
        if (rows.length > 0) this.logger.debug('swept expired locks', { count: rows.length });
        if (rows.length < EXPIRED_PAGE || this.stopping) return;
        // A long run of expiries (thousands at once): leave requests, and the relay publishing
        // the expiries, a share of the thread between pages.
        await new Promise((r) => setTimeout(r, (performance.now() - started) * SWEEP_PAUSE));
      }
    } catch (err) {
      this.logger.warn(`expiry sweep failed, will retry: ${(err as Error).message}`);
    }
  }

  /**
   * Stop: take no new requests, answer those in flight, deliver pending events, then close NATS
   * and the database. Resolves when done; `timeoutMs` bounds the graceful part.
   */
  stop(timeoutMs = this.config.drainTimeout * 1000): Promise<void> {
    this.stopping ??= this.doStop(timeoutMs);
    return this.stopping;
  }

  private async doStop(timeoutMs: number): Promise<void> {
    await this.starting?.catch(() => undefined);
    const deadline = Date.now() + timeoutMs;
    const remaining = () => Math.max(0, deadline - Date.now());
    const within = <T>(p: Promise<T>) => Promise.race([p, new Promise<void>((r) => setTimeout(r, remaining()).unref())]);
    this.logger.info('stopping: no new requests; finishing those in flight', { inFlight: this.lockService?.inFlight ?? 0 });
    clearTimeout(this.sweepTimer);
    if (this.service) await within(this.service.stop().then(() => undefined).catch(() => undefined));
    // Waiting `get`s answer LOCKED now rather than hold up the stop.
    this.waiters.close();
    if (this.lockService) await within(this.lockService.idle());
    if (this.sweeping) await within(this.sweeping);
    if (this.relay) {
      const flushed = await this.relay.flush(Math.min(remaining(), 5000)).catch(() => false);
      if (!flushed) this.logger.warn('stopping with events still in the outbox; the next daemon to start delivers them');
      await this.relay.stop();
    }
    for (const sub of this.wakeSubs.values()) sub.unsubscribe();
    this.wakeSubs.clear();
    if (this.nc && this.ownsConnection) await within(this.nc.drain().catch(() => undefined));
    await this.db?.close();
    this.logger.info('stopped');
  }
}

export type { LockEvent };
