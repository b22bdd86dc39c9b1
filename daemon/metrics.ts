/**
 * The daemon's Prometheus metrics, in a registry of its own (several daemons may run in one
 * process), and the per-endpoint tallies that the NATS services framework reports in $SRV.STATS.
 *
 * A request costs a counter increment, a histogram observation and a few additions: the label
 * children are made once per endpoint and outcome. What the store, the wait queue or the sweeper
 * know is read only when someone scrapes.
 */
import type * as PromClient from 'prom-client';
import type { Counter, Gauge, Histogram, Metric, Registry } from 'prom-client';
import type { Endpoint } from '../shared/protocol';
import type { BatchObserver } from './batcher';
import { within, type Clock } from './clock';
import { sharedInFlight } from './in-flight';
import type { Outcome } from './lock-service';
import { CommitInDoubt, RowBusy, StoreUnavailable, TransactionConflict, type StoreCounts } from './store/store';

/** What the metrics read from the rest of the daemon at a scrape. */
export interface MetricSources {
  /** The store's counts; undefined while there is no store yet. */
  counts(): Promise<StoreCounts> | undefined;
  /** `get` requests waiting for a lock in this daemon. */
  waiters(): number;
  /** Requests this daemon is handling now. */
  inFlight(): number;
  /** ms since the start of the sweeper's last complete sweep; undefined while it does not run. */
  sweeperLagMs(): number | undefined;
}

/** How long a scrape waits for the store's counts before reporting them unknown (NaN). */
export const SCRAPE_STORE_TIMEOUT_MS = 2000;

/** Request latency buckets (seconds): ms for most requests, up to the long waits of a `get`. */
const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];
const BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

export const STORE_ERROR_KINDS = ['unavailable', 'commit_in_doubt', 'row_busy', 'conflict', 'other'] as const;
export type StoreErrorKind = (typeof STORE_ERROR_KINDS)[number];

export function storeErrorKind(err: unknown): StoreErrorKind {
  if (err instanceof CommitInDoubt) return 'commit_in_doubt';
  if (err instanceof StoreUnavailable) return 'unavailable';
  if (err instanceof RowBusy) return 'row_busy';
  if (err instanceof TransactionConflict) return 'conflict';
  return 'other';
}

/** An endpoint's numbers as the services framework reports them (times in nanoseconds). */
export interface EndpointStats {
  num_requests: number;
  num_errors: number;
  processing_time: number;
  average_processing_time: number;
  last_error?: string;
}

/** One endpoint: its tallies for $SRV.STATS and its label children. */
class EndpointRecord {
  requests = 0;
  errors = 0;
  totalMs = 0;
  lastError?: string;
  readonly byOutcome = new Map<Outcome, Counter.Internal>();

  constructor(
    readonly endpoint: Endpoint,
    private readonly counter: Counter<'endpoint' | 'outcome'>,
    readonly latency: Histogram.Internal<'endpoint'>,
  ) {
    // Present from the start (at 0), so that a rate over it is defined before the first request.
    this.outcome('ok').inc(0);
  }

  outcome(outcome: Outcome): Counter.Internal {
    let child = this.byOutcome.get(outcome);
    if (!child) {
      child = this.counter.labels(this.endpoint, outcome);
      this.byOutcome.set(outcome, child);
    }
    return child;
  }
}

/**
 * prom-client, loaded when the first daemon is made: the lockmgr commands that only talk to
 * daemons (this module comes with the CLI) start without it.
 */
function promClient(): typeof PromClient {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require('prom-client') as typeof PromClient;
}

let processRegistry: Registry | undefined;

/** Node's process metrics (CPU, memory, event loop, GC): one set per process, shared by its daemons. */
function processMetrics(): Metric[] {
  if (!processRegistry) {
    const { Registry, collectDefaultMetrics } = promClient();
    processRegistry = new Registry();
    collectDefaultMetrics({ register: processRegistry });
  }
  return processRegistry.getMetricsAsArray() as unknown as Metric[];
}

export class DaemonMetrics implements BatchObserver {
  readonly registry: Registry;
  private readonly endpoints = new Map<Endpoint, EndpointRecord>();
  private readonly requests: Counter<'endpoint' | 'outcome'>;
  private readonly latency: Histogram<'endpoint'>;
  private readonly batchSize: Histogram;
  private readonly storeErrors = new Map<StoreErrorKind, Counter.Internal>();
  private readonly locks: Gauge;
  private readonly sessions: Gauge;
  private readonly outbox: Gauge;
  private readonly relayLag: Gauge;
  private readonly waiters: Gauge;
  private readonly inFlight: Gauge;
  private readonly sweeperLag: Gauge;
  /**
   * The store's counts, or undefined (reported as NaN) when there is no store or it did not answer:
   * a scrape's store query, shared by the scrapes that come while it runs.
   */
  private readonly storeCounts = sharedInFlight(async (): Promise<StoreCounts | undefined> => {
    try {
      const pending = this.sources.counts();
      return await (pending && within(this.clock, pending, SCRAPE_STORE_TIMEOUT_MS, 'the database'));
    } catch {
      return undefined;
    }
  });

  constructor(
    prefix: string,
    endpoints: readonly Endpoint[],
    private readonly sources: MetricSources,
    private readonly clock: Clock,
  ) {
    const { Counter, Gauge, Histogram, Registry } = promClient();
    this.registry = new Registry();
    const registers = [this.registry];
    this.registry.setDefaultLabels({ prefix });
    this.requests = new Counter({
      name: 'lockmgr_requests_total',
      help: 'Requests answered, by endpoint and outcome (ok, or the error code replied)',
      labelNames: ['endpoint', 'outcome'],
      registers,
    });
    this.latency = new Histogram({
      name: 'lockmgr_request_duration_seconds',
      help: 'Time from a request reaching the daemon to its answer, waits included, by endpoint',
      labelNames: ['endpoint'],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    for (const e of endpoints) this.endpoints.set(e, new EndpointRecord(e, this.requests, this.latency.labels(e)));
    this.batchSize = new Histogram({
      name: 'lockmgr_batch_size',
      help: 'Operations per committed transaction (group commit; sweeps included)',
      buckets: BATCH_BUCKETS,
      registers,
    });
    const storeErrors = new Counter({
      name: 'lockmgr_store_errors_total',
      help: 'Transactions that failed, by kind (unavailable, commit_in_doubt, row_busy, conflict, other)',
      labelNames: ['kind'],
      registers,
    });
    for (const kind of STORE_ERROR_KINDS) {
      const child = storeErrors.labels(kind);
      child.inc(0);
      this.storeErrors.set(kind, child);
    }
    const gauge = (name: string, help: string) => new Gauge({ name, help, registers });
    this.locks = gauge('lockmgr_locks_held', 'Live (unexpired) locks in the store, counted at the scrape');
    this.sessions = gauge('lockmgr_sessions', 'Client sessions in the store that have not lapsed, counted at the scrape');
    this.outbox = gauge('lockmgr_outbox_events', 'Events in the outbox not yet delivered to NATS');
    this.relayLag = gauge('lockmgr_relay_lag_seconds', 'Age of the oldest event not yet delivered to NATS (0: none waits)');
    this.waiters = gauge('lockmgr_waiters', 'get requests waiting for a lock in this daemon');
    this.inFlight = gauge('lockmgr_requests_in_flight', 'Requests this daemon is handling now (a waiting get included)');
    this.sweeperLag = gauge(
      'lockmgr_sweeper_lag_seconds',
      "Seconds since the start of this daemon's last sweep that removed every expired lock",
    );
    for (const m of processMetrics()) this.registry.registerMetric(m);
  }

  /** A request was answered after `ms`: `ok`, or the error code of its reply. */
  request(endpoint: Endpoint, outcome: Outcome, ms: number): void {
    const e = this.endpoints.get(endpoint);
    if (!e) return;
    e.requests += 1;
    e.totalMs += ms;
    if (outcome !== 'ok') {
      e.errors += 1;
      e.lastError = outcome;
    }
    e.outcome(outcome).inc();
    e.latency.observe(ms / 1000);
  }

  committed(size: number): void {
    this.batchSize.observe(size);
  }

  failed(err: unknown): void {
    this.storeErrors.get(storeErrorKind(err))!.inc();
  }

  /** What $SRV.STATS reports for `endpoint`: whole requests, and every error reply. */
  endpointStats(endpoint: string): EndpointStats | undefined {
    const e = this.endpoints.get(endpoint as Endpoint);
    if (!e) return undefined;
    const ns = Math.round(e.totalMs * 1e6);
    const stats: EndpointStats = {
      num_requests: e.requests,
      num_errors: e.errors,
      processing_time: ns,
      average_processing_time: e.requests > 0 ? Math.round(ns / e.requests) : 0,
    };
    if (e.lastError) stats.last_error = e.lastError;
    return stats;
  }

  /** The Prometheus text exposition, with the sampled values read now. */
  async render(): Promise<{ contentType: string; body: string }> {
    const s = this.sources;
    this.waiters.set(s.waiters());
    this.inFlight.set(s.inFlight());
    const lag = s.sweeperLagMs();
    this.sweeperLag.set(lag === undefined ? NaN : Math.max(0, lag) / 1000);
    const counts = await this.storeCounts();
    this.locks.set(counts?.locks ?? NaN);
    this.sessions.set(counts?.sessions ?? NaN);
    this.outbox.set(counts?.outbox ?? NaN);
    this.relayLag.set(counts ? (counts.oldestEventAt === null ? 0 : Math.max(0, counts.now - counts.oldestEventAt) / 1000) : NaN);
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
