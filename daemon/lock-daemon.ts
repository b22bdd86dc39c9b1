/**
 * LockDaemon owns every part of a running daemon and starts and stops them in order:
 * store -> migrations -> NATS -> event relay -> service endpoints -> sweeper, and back.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { ErrorCode as NatsErrorCode, type NatsConnection, type Service, type Subscription } from 'nats';
import { connectNats } from '../shared/connect';
import { DAEMON_HEADER, eventsStreamName, eventSubject, parseEventSubject, type EventType } from '../shared/events';
import { maskNatsUrls } from '../shared/nats-url';
import { ENDPOINTS, requestSubject, SERVICE_NAME, type DaemonMetadata } from '../shared/protocol';
import { Authority } from './authority';
import { retryUntilDone, type Backoff } from './backoff';
import { Batcher } from './batcher';
import { systemClock, within, type Clock } from './clock';
import { loadConfig, maskedConfig, natsSecurity, type DaemonConfig } from './config';
import { lockHandlers } from './handlers';
import { parseListenAddress, startHttpServer, type RunningHttpServer } from './http-server';
import { sharedInFlight } from './in-flight';
import { LockService } from './lock-service';
import { createLogger, type Logger, type LogLevel } from './logger';
import { DaemonMetrics } from './metrics';
import { startEventRelay, type RunningRelay } from './relay';
import { openStore } from './store';
import { rootCause, type CommittedEvent, type Store } from './store/store';
import { Sweeper } from './sweeper';
import { WaitQueue } from './waiters';

export { SERVICE_NAME };
export const SERVICE_VERSION: string = (() => {
  // dist/daemon/ in a build, daemon/ in the sources: the package's own package.json either way.
  for (const path of ['../../package.json', '../package.json']) {
    try {
      return (JSON.parse(readFileSync(require.resolve(path), 'utf8')) as { version: string }).version;
    } catch {
      // try the next
    }
  }
  return '0.0.0';
})();

export interface LockDaemonOptions {
  config?: Partial<DaemonConfig>;
  logger?: Logger;
  /** An existing NATS connection to serve on (the daemon then does not close it). */
  nc?: NatsConnection;
  /** Time for waits, sweeps, backoff and SQLite's expiry decisions (tests may drive it). */
  clock?: Clock;
}

/** How long the check for other authorities waits for daemons to answer (ms). */
const AUTHORITY_WAIT_MS = 500;
/** nats-server's default max_payload, when the server does not say. */
const DEFAULT_MAX_PAYLOAD = 1024 * 1024;
/**
 * How long a grant handed to a waiter waits for its answer. Only "no responders" (nobody listens
 * there any more) withdraws it: a client that is slow to answer keeps it.
 */
const HANDOVER_TIMEOUT_MS = 1000;
/** Room a reply leaves in a message for the headers of an error reply. */
const REPLY_HEADROOM = 1024;
/** How long /readyz waits for the database and NATS to answer. */
const READY_TIMEOUT_MS = 2000;

/** Waits between attempts to reach NATS at start (logged each time: nothing works without it). */
const NATS_BACKOFF: Backoff = { minMs: 1000, maxMs: 15_000 };
/** Waits between attempts to reach the database at start: short, a database often comes up just after us. */
const DATABASE_BACKOFF: Backoff = { minMs: 250, maxMs: 5000, jitter: 0.2 };

/** Event types after which a waiter of the name may find it free. */
const RELEASE_TYPES: ReadonlySet<EventType> = new Set(['released', 'expired', 'reset']);

/** What the driver said, under the store's wrappers (a connection refused by every address has only a code). */
function rootMessage(err: unknown): string {
  const root = rootCause(err) as { message?: unknown; code?: unknown } | null;
  return String(root?.message || root?.code || err);
}

export class LockDaemon {
  readonly config: DaemonConfig;
  readonly logger: Logger;
  /** Identifies this daemon in events: host, pid and a random suffix. */
  readonly id = `${hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`;
  private readonly clock: Clock;
  private db?: Store;
  private nc?: NatsConnection;
  private ownsConnection = true;
  private service?: Service;
  private relay?: RunningRelay;
  private lockService?: LockService;
  private sweeper?: Sweeper;
  private authority?: Authority;
  private http?: RunningHttpServer;
  /** The endpoints are registered and the sweeper runs. */
  private serving = false;
  /** Between a NATS disconnect and the reconnect: false. */
  private natsConnected = false;
  /** A readiness check of the store, shared by the checks that come while it runs. */
  private readonly storeCheck = sharedInFlight(() => within(this.clock, this.store.identity(), READY_TIMEOUT_MS, 'the database'));
  private natsStatus?: { stop?: () => void };
  private natsGone?: (err: Error) => void;
  /**
   * Settles if the NATS connection closes for good while the daemon is not stopping (it
   * reconnects forever, so only something unforeseen does this): the daemon then serves nobody,
   * and whoever runs it should stop it and start it again (the command exits 1).
   */
  readonly natsLost: Promise<Error> = new Promise((resolve) => (this.natsGone = resolve));
  /** Per waited-for name: a subscription to its events, so releases by other daemons wake us. */
  private readonly wakeSubs = new Map<string, Subscription>();
  private readonly waiters: WaitQueue;
  /** Prometheus metrics (served with httpListen) and the tallies behind $SRV.STATS. */
  readonly metrics: DaemonMetrics;
  private starting?: Promise<void>;
  private stopping?: Promise<void>;
  /** Aborted by stop(): a start still waiting for NATS or the database gives up at once. */
  private readonly stopRequested = new AbortController();

  constructor(private readonly options: LockDaemonOptions = {}) {
    this.config = { ...loadConfig({ env: {} }).config, ...options.config };
    this.logger = options.logger ?? createLogger({ level: this.config.logLevel as LogLevel, format: this.config.logFormat as 'auto' });
    this.clock = options.clock ?? systemClock;
    this.waiters = new WaitQueue(
      {
        watch: (name) => this.watchReleases(name),
        unwatch: (name) => {
          this.wakeSubs.get(name)?.unsubscribe();
          this.wakeSubs.delete(name);
        },
      },
      this.clock,
    );
    this.metrics = new DaemonMetrics(
      this.config.prefix,
      ENDPOINTS,
      {
        counts: () => this.db?.counts(),
        waiters: () => this.waiters.size,
        inFlight: () => this.requestsInFlight,
        sweeperLagMs: () => this.sweeper?.lagMs,
      },
      this.clock,
    );
  }

  /** Start everything; resolves once the endpoints answer. Safe to call twice. */
  start(): Promise<void> {
    this.starting ??= this.doStart();
    return this.starting;
  }

  /** The store, once started (for tools and tests). */
  get store(): Store {
    if (!this.db) throw new Error('daemon not started');
    return this.db;
  }

  /** Requests being handled right now (a get that waits counts until it is answered). */
  get requestsInFlight(): number {
    return this.lockService?.inFlight ?? 0;
  }

  get connection(): NatsConnection | undefined {
    return this.nc;
  }

  get eventDelivery(): 'jetstream' | 'core' | undefined {
    return this.relay?.relay.deliveryMode;
  }

  /** Where /metrics, /healthz and /readyz are served (`http://host:port`), once started with httpListen. */
  get httpUrl(): string | undefined {
    return this.http?.url;
  }

  /**
   * Why this daemon cannot serve requests now, or null when it can: for /readyz. It looks at this
   * process only — its own database connection and its own NATS connection, each asked now.
   */
  async notReady(): Promise<string | null> {
    if (this.stopping) return 'stopping';
    const nc = this.nc;
    if (!this.serving || !nc) return 'starting';
    if (nc.isClosed()) return 'the NATS connection is closed';
    if (nc.isDraining()) return 'the NATS connection is draining';
    if (!this.natsConnected) return 'NATS is disconnected (reconnecting)';
    const refused = this.authority?.refusal();
    if (refused) return refused.message;
    const failed = (what: string) => (err: unknown) => `${what}: ${(err as Error).message}`;
    const [db, natsRtt] = await Promise.all([
      this.storeCheck().then(() => null, failed('database unavailable')),
      within(this.clock, nc.rtt(), READY_TIMEOUT_MS, 'NATS').then(() => null, failed('NATS unavailable')),
    ]);
    return db ?? natsRtt;
  }

  private async doStart(): Promise<void> {
    const c = this.config;
    this.logger.info('starting lockmgr daemon', { version: SERVICE_VERSION, id: this.id, config: maskedConfig(c) });
    // First: /healthz answers (and /readyz says why not yet) while the rest starts, NATS awaited included.
    if (c.httpListen) await this.startHttp(c.httpListen);

    const store = openStore({
      url: c.db,
      daemonId: this.id,
      poolSize: c.dbPoolSize,
      sqliteSynchronous: c.sqliteSynchronous as 'FULL' | 'NORMAL',
      sqliteCheckpointInterval: c.sqliteCheckpointInterval,
      sqliteWalLimit: c.sqliteWalLimit,
      lockTimeoutMs: c.dbLockTimeout * 1000,
      statementTimeoutMs: c.dbStatementTimeout * 1000,
      idleInTransactionTimeoutMs: c.dbIdleInTransactionTimeout * 1000,
      clock: this.clock,
    });
    this.db = store;
    // Before anything else touches it: a SQLite file refuses a second daemon here.
    await store.claim();
    const storeId = await this.reachDatabase(store);
    this.logger.info('store ready', { store: store.describe(), dialect: store.kind, storeId });

    const batcher = new Batcher(store, {
      maxBatch: c.maxBatch,
      onCommit: (events) => this.committed(events),
      observer: this.metrics,
      clock: this.clock,
    });

    if (this.options.nc) {
      this.nc = this.options.nc;
      this.ownsConnection = false;
    } else {
      this.nc = await this.connectNats();
    }
    const nc = this.nc;
    this.watchNats(nc);

    const metadata: DaemonMetadata = {
      prefix: c.prefix,
      store: store.kind,
      store_id: storeId,
      writers: store.soleWriter ? 'one' : 'many',
      daemon: this.id,
    };
    const authority = new Authority(nc, metadata, this.logger, this.clock, {
      intervalMs: c.authorityCheckInterval * 1000,
      waitMs: AUTHORITY_WAIT_MS,
    });
    this.authority = authority;
    await authority.ensureAlone();

    this.relay = await startEventRelay(
      store,
      nc,
      {
        prefix: c.prefix,
        jetstream: c.eventsJetstream as 'auto' | 'off',
        stream: eventsStreamName(c.prefix, c.eventsStream),
        streamConfigured: c.eventsStream !== '',
        retention: c.eventsRetention as 'limits',
        replicas: c.eventsReplicas,
        maxAgeSeconds: c.eventsMaxAge,
        maxBytes: c.eventsMaxBytes,
        duplicateWindowSeconds: c.eventsDuplicateWindow,
        daemonId: this.id,
      },
      this.logger,
      this.clock,
    );

    const handlers = lockHandlers(batcher, this.waiters, this.clock, {
      requestWindowMs: c.requestWindow * 1000,
      // What a reply may take: the server's max_payload, less room for headers.
      maxReplyBytes: () => (nc.info?.max_payload ?? DEFAULT_MAX_PAYLOAD) - REPLY_HEADROOM,
      sharedStore: !store.soleWriter,
      lockDelayMs: c.lockDelay * 1000,
    });
    const lockService = new LockService(
      handlers,
      this.logger,
      () => authority.refusal(),
      (subject, data) =>
        nc.request(subject, data, { timeout: HANDOVER_TIMEOUT_MS }).then(
          () => 'sent' as const,
          (err: { code?: string }) => (err.code === NatsErrorCode.NoResponders ? 'gone' : 'sent'),
        ),
      (endpoint, outcome, ms) => this.metrics.request(endpoint, outcome, ms),
    );
    this.lockService = lockService;
    this.service = await nc.services.add({
      name: SERVICE_NAME,
      version: SERVICE_VERSION,
      description: 'lock coordinator: django-lockmgr semantics over NATS request/reply',
      queue: SERVICE_NAME,
      metadata: { ...metadata },
      // nats.js times only the synchronous start of a handler, and counts as errors only what it
      // throws: $SRV.STATS gets this daemon's own tallies of whole requests and error replies,
      // written into the endpoint's stats record it is about to report.
      statsHandler: (endpoint) => {
        const { name, stats } = endpoint as { name?: string; stats?: object };
        const ours = name === undefined ? undefined : this.metrics.endpointStats(name);
        if (stats && ours) Object.assign(stats, ours);
        return Promise.resolve(undefined);
      },
    });
    for (const endpoint of ENDPOINTS) {
      this.service.addEndpoint(endpoint, {
        subject: requestSubject(c.prefix, endpoint),
        handler: (err, msg) => {
          if (err) {
            this.logger.error(`endpoint ${endpoint} stopped: ${err.message}`);
            return;
          }
          lockService.handle(endpoint, msg);
        },
      });
    }
    // The endpoint subscriptions reach the server asynchronously: "ready" (and start() resolving)
    // must mean a request sent now finds a responder, not "no responders".
    await nc.flush();
    this.logger.info('serving', { subjects: ENDPOINTS.map((e) => requestSubject(c.prefix, e)), queue: SERVICE_NAME });

    if (c.authorityCheckInterval > 0) authority.start();
    this.sweeper = new Sweeper(batcher, c.sweepInterval * 1000, this.logger, this.clock);
    this.sweeper.start();
    this.serving = true;
    this.logger.info('ready');
  }

  private async startHttp(listen: string): Promise<void> {
    const { address, problem } = parseListenAddress(listen);
    if (!address) throw new Error(`httpListen ${problem}`);
    this.http = await startHttpServer(address, { metrics: () => this.metrics.render(), notReady: () => this.notReady() });
    this.logger.info('serving HTTP', { url: this.http.url, paths: ['/metrics', '/healthz', '/readyz'] });
  }

  /**
   * Migrate (if configured) and read the store's identity, waiting for a database that cannot be
   * reached yet: one line when it first fails, one when it answers. What waiting cannot cure
   * (a refused login, a missing database, any SQLite failure) is thrown at once.
   */
  private async reachDatabase(store: Store): Promise<string> {
    const c = this.config;
    const applied: string[] = [];
    let waitedSince: number | undefined;
    const storeId = await retryUntilDone(
      async () => {
        // A migration applied before a later step failed stays applied: remember it for the log.
        if (c.migrate) applied.push(...(await store.migrate()));
        return store.identity();
      },
      {
        what: 'the database was reached',
        backoff: DATABASE_BACKOFF,
        clock: this.clock,
        signal: this.stopRequested.signal,
        retryable: (err) => store.reachableLater?.(err) ?? false,
        onRetry: (err, failures, delayMs) => {
          const why = rootMessage(err);
          if (failures === 1) {
            waitedSince = this.clock.now();
            this.logger.warn(`waiting for the database at ${store.describe()}: ${why}; retrying`);
          } else {
            this.logger.debug(`the database is still unreachable: ${why}; next attempt in ${delayMs} ms (attempt ${failures + 1})`);
          }
        },
      },
    );
    if (waitedSince !== undefined) {
      this.logger.info('connected to the database', { store: store.describe(), waitedMs: this.clock.now() - waitedSince });
    }
    if (c.migrate) {
      this.logger.info(applied.length ? `applied migrations: ${applied.join(', ')}` : 'schema is up to date', { store: store.describe() });
    }
    return storeId;
  }

  private connectNats(): Promise<NatsConnection> {
    const c = this.config;
    return retryUntilDone(
      () =>
        connectNats({
          servers: c.natsUrl,
          ...natsSecurity(c),
          name: `lockmgr-daemon ${this.id}`,
          // Reconnect forever, also through repeated authentication errors (a server restarted
          // with its accounts not yet loaded): a daemon that gave up would serve nobody.
          nats: { maxReconnectAttempts: -1, reconnectTimeWait: 1000, ignoreAuthErrorAbort: true },
        }),
      {
        what: 'NATS was reached',
        backoff: NATS_BACKOFF,
        clock: this.clock,
        signal: this.stopRequested.signal,
        retryable: (err) => (err as { code?: unknown }).code !== 'NATS_CREDENTIALS',
        discard: (nc) => void nc.close(),
        // A TLS refusal may be a server whose configuration is being rolled out: retried too.
        onRetry: (err, failures, delayMs) => {
          const code = (err as { code?: unknown }).code;
          const message = (err as Error).message;
          const what =
            code === 'NATS_TLS'
              ? `${message}: check tlsCa, tlsCert and tlsKey`
              : code === 'AUTHORIZATION_VIOLATION'
                ? `NATS at ${maskNatsUrls(c.natsUrl)} refused the login (${message}): check natsCreds, natsNkey, natsToken or natsUser and natsPassword`
                : `cannot reach NATS at ${maskNatsUrls(c.natsUrl)} (${message}): start nats-server (with -js for the audit trail) or set LOCKMGR_NATS_URL`;
          this.logger.error(`${what}; retrying in ${delayMs / 1000}s (attempt ${failures})`);
        },
      },
    );
  }

  private watchNats(nc: NatsConnection): void {
    this.natsConnected = !nc.isClosed();
    void nc.closed().then((err) => {
      if (this.stopping || !this.ownsConnection) return;
      const lost = new Error(`the NATS connection closed${err ? `: ${err.message}` : ''}`, { cause: err ?? undefined });
      this.logger.error(`${lost.message}; this daemon serves nobody until it is started again`);
      this.natsGone?.(lost);
    });
    const status = nc.status();
    this.natsStatus = status as { stop?: () => void };
    void (async () => {
      for await (const s of status) {
        if (s.type === 'disconnect') {
          this.natsConnected = false;
          this.logger.warn('NATS disconnected; reconnecting', { server: s.data });
        } else if (s.type === 'reconnect') {
          this.natsConnected = true;
          this.logger.info('NATS reconnected', { server: s.data });
        } else if (s.type === 'error') this.logger.error(`NATS error: ${String(s.data)}`);
      }
    })().catch(() => undefined);
  }

  /** Releases of `name` made by other daemons sharing the database wake our waiters too. */
  private async watchReleases(name: string): Promise<void> {
    if (!this.nc || this.nc.isClosed()) return;
    const prefix = this.config.prefix;
    const sub = this.nc.subscribe(eventSubject(prefix, '*', name), {
      callback: (_err, msg) => {
        if (msg.headers?.get(DAEMON_HEADER) === this.id) return; // ours: already woken at commit
        const event = parseEventSubject(prefix, msg.subject);
        if (event && RELEASE_TYPES.has(event.type)) this.waiters.notify(name);
      },
    });
    this.wakeSubs.set(name, sub);
    // The waiter looks at the lock only once the server has the subscription: a release made
    // elsewhere after that look is then sure to reach us.
    await this.nc.flush();
  }

  /** After each commit: wake local waiters for released names and hand the events to the relay. */
  private committed(events: CommittedEvent[]): void {
    for (const e of events) if (RELEASE_TYPES.has(e.type)) this.waiters.notify(e.name);
    this.relay?.relay.committed(events);
  }

  /**
   * Stop: take no new requests, answer those in flight, deliver pending events, then close NATS
   * and the store. Resolves when done; `timeoutMs` bounds the graceful part.
   */
  stop(timeoutMs = this.config.drainTimeout * 1000): Promise<void> {
    this.stopRequested.abort();
    this.stopping ??= this.doStop(timeoutMs);
    return this.stopping;
  }

  private async doStop(timeoutMs: number): Promise<void> {
    await this.starting?.catch(() => undefined);
    const deadline = Date.now() + timeoutMs;
    const remaining = () => Math.max(0, deadline - Date.now());
    const untilDeadline = <T>(p: Promise<T>) => Promise.race([p, new Promise<void>((r) => setTimeout(r, remaining()).unref())]);
    this.logger.info('stopping: no new requests; finishing those in flight', { inFlight: this.lockService?.inFlight ?? 0 });
    this.authority?.stop();
    const sweeping = this.sweeper?.stop();
    if (this.service)
      await untilDeadline(
        this.service
          .stop()
          .then(() => undefined)
          .catch(() => undefined),
      );
    // Only now, with the endpoints drained (the server has our unsubscribe: no request reaches
    // this daemon any more), are waiting `get`s given up: they answer DAEMON_STOPPING, and the
    // client sends each again to another daemon, or to one started in this one's place.
    this.waiters.close();
    if (this.lockService) await untilDeadline(this.lockService.idle());
    if (sweeping) await untilDeadline(sweeping);
    if (this.relay) {
      const flushed = await this.relay.relay.flush(Math.min(remaining(), 5000)).catch(() => false);
      if (!flushed) this.logger.warn('stopping with events still in the outbox; the next daemon to start delivers them');
      await this.relay.stop();
    }
    for (const sub of this.wakeSubs.values()) sub.unsubscribe();
    this.wakeSubs.clear();
    this.natsStatus?.stop?.();
    if (this.nc && this.ownsConnection) await untilDeadline(this.nc.drain().catch(() => undefined));
    await this.db?.close();
    await this.http?.close();
    this.logger.info('stopped');
  }
}
