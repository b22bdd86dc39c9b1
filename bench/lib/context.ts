/**
 * What every scenario shares in one bench run: the arguments, the private nats-server, a helper
 * that starts a fresh daemon on a fresh database, the payload sizes the floors copy, and the
 * list of measurements the report is made from.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { NatsConnection } from 'nats';
import { LockClient } from '../../client/index';
import { round, type LatencySummary } from './stats';
import type { CpuReport, RunResult, Watch } from './load';
import { createPgDatabase, type PgDatabase } from './pg';
import { registerTemp, startDaemon, type ChildProc, type NatsServerProc } from './procs';

export type Store = 'sqlite' | 'postgres';

export interface Args {
  repeat: number;
  warmupMs: number;
  durationMs: number;
  only: Set<string> | null;
  skip: Set<string>;
  postgres: boolean;
  allStores: boolean;
  scaleStores: Store[];
  scaleLocks: number;
  scaleExpire: number;
  out: string;
  pgUrl: string;
  natsUrl: string | null;
  /** Longest wait for a quiet machine before each measured window, ms (0: do not wait). */
  settleMs: number;
}

/** One measured run of one scenario. */
export interface Measurement {
  /** Stable id, e.g. `cycle.sqlite.64`; repeats share it. */
  key: string;
  label: string;
  group: string;
  store?: Store;
  inFlight?: number;
  rep: number;
  /** Operations per second (a cycle, a request, a handoff: see `unit`). */
  opsPerSec: number;
  unit: string;
  /** Locks granted per second, where the scenario grants locks in bulk. */
  locksPerSec?: number;
  latency: LatencySummary;
  errors: number;
  firstError?: string;
  cpu?: CpuReport;
  loadavg?: number[];
  extra?: Record<string, unknown>;
}

/** Request and reply payload sizes (bytes) of lockmgr's own messages, found by watching them. */
export interface PayloadSizes {
  setRequest: number;
  setReply: number;
  unlockRequest: number;
  unlockReply: number;
  getRequest: number;
  getReply: number;
}

export interface DaemonHandle {
  store: Store;
  prefix: string;
  proc: ChildProc;
  client: LockClient;
  dbUrl: string;
  pg?: PgDatabase;
  /** Processes to account CPU for while this daemon serves. */
  watch: Watch;
}

let prefixes = 0;

export class Bench {
  readonly measurements: Measurement[] = [];
  readonly notes: string[] = [];
  sizes?: PayloadSizes;
  readonly tmp = registerTemp(mkdtempSync(join(tmpdir(), 'lockmgr-bench-')));
  private step = 0;

  constructor(
    readonly args: Args,
    readonly nats: { url: string; pid: number | null; server?: NatsServerProc },
    /** A utility connection (readiness probes, spies); not used for load. */
    readonly nc: NatsConnection,
  ) {}

  wants(group: string): boolean {
    if (this.args.skip.has(group)) return false;
    return this.args.only === null || this.args.only.has(group);
  }

  nextPrefix(tag: string): string {
    return `bench${process.pid}x${++prefixes}${tag}`;
  }

  /** A fresh database of `store`: a new SQLite file, or a new PostgreSQL database. */
  async freshDatabase(store: Store): Promise<{ url: string; pg?: PgDatabase; drop(): Promise<void> }> {
    if (store === 'sqlite') {
      const dir = mkdtempSync(join(this.tmp, 'db-'));
      return { url: join(dir, 'locks.sqlite'), drop: async () => rmSync(dir, { recursive: true, force: true }) };
    }
    const pg = await createPgDatabase(this.args.pgUrl);
    return { url: pg.url, pg, drop: () => pg.drop() };
  }

  /**
   * Start a daemon process on a fresh database (or on `db` when given), run `fn` with a client,
   * then stop it all and drop the database.
   */
  async withDaemon<T>(
    store: Store,
    opts: { args?: string[]; db?: { url: string; pg?: PgDatabase; drop(): Promise<void> } },
    fn: (d: DaemonHandle) => Promise<T>,
  ): Promise<T> {
    const db = opts.db ?? (await this.freshDatabase(store));
    const prefix = this.nextPrefix(store === 'sqlite' ? 's' : 'p');
    let proc: ChildProc | undefined;
    let client: LockClient | undefined;
    try {
      proc = await startDaemon({ natsUrl: this.nats.url, db: db.url, prefix, args: opts.args }, this.nc);
      client = await LockClient.connect({ servers: this.nats.url, prefix, timeout: 30_000, nats: { name: 'lockmgr-bench-client' } });
      const daemonPid = proc.pid;
      const watch: Watch = { daemon: () => [daemonPid] };
      if (this.nats.pid) watch['nats-server'] = () => [this.nats.pid!];
      if (db.pg) watch.postgres = () => db.pg!.backendPids();
      return await fn({ store, prefix, proc, client, dbUrl: db.url, pg: db.pg, watch });
    } finally {
      await client?.close().catch(() => undefined);
      await proc?.stop().catch(() => undefined);
      await this.deleteStream(`EV_${prefix}`);
      await db.drop().catch((err) => this.note(`could not drop bench database: ${(err as Error).message}`));
    }
  }

  /** Remove a daemon's events stream from the server so later scenarios start clean. */
  async deleteStream(name: string): Promise<void> {
    try {
      const jsm = await this.nc.jetstreamManager({ timeout: 5000 });
      await jsm.streams.delete(name);
    } catch {
      // not created, or no JetStream: nothing to remove
    }
  }

  note(text: string): void {
    this.notes.push(text);
    process.stdout.write(`  note: ${text}\n`);
  }

  progress(text: string): void {
    this.step += 1;
    process.stdout.write(`[${String(this.step).padStart(2)}] ${text}\n`);
  }

  /** Keep a measured run and print its progress line. */
  record(m: Omit<Measurement, 'rep'> & { rep?: number }, quiet = false): Measurement {
    const full: Measurement = { rep: 1, ...m };
    this.measurements.push(full);
    if (!quiet) {
      const l = full.latency;
      const rate =
        full.locksPerSec !== undefined
          ? `${round(full.locksPerSec)} locks/s (${round(full.opsPerSec)} ${full.unit})`
          : `${round(full.opsPerSec)} ${full.unit}`;
      const cpu = full.cpu
        ? `  [cpu: others ${Math.round(full.cpu.othersPct)}%, irq ${Math.round(full.cpu.irqPct)}%, steal ${Math.round(full.cpu.stealPct)}%]`
        : '';
      const err = full.errors ? `  ERRORS ${full.errors} (${full.firstError})` : '';
      this.progress(`${full.label} [rep ${full.rep}]: ${rate}  p50 ${round(l.p50Ms)} ms  p99 ${round(l.p99Ms)} ms${cpu}${err}`);
    }
    return full;
  }

  fromRun(r: RunResult): Pick<Measurement, 'opsPerSec' | 'latency' | 'errors' | 'firstError' | 'cpu' | 'loadavg'> {
    return { opsPerSec: r.opsPerSec, latency: r.latency, errors: r.errors, firstError: r.firstError, cpu: r.cpu, loadavg: r.loadavg };
  }

  cleanup(): void {
    rmSync(this.tmp, { recursive: true, force: true });
  }
}
