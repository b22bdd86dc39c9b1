/**
 * Fault scenarios for the history checker: the table of what each fault must preserve (one row
 * per scenario, in SCENARIOS below, to tighten as fixes land), the faults themselves, and the
 * runner that sets up a private stack (its own nats-server, database and daemon processes),
 * runs the workload, injects the fault, reads the final state and hands the history to the
 * checker.
 */
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { RequestStrategy, type NatsConnection } from 'nats';
import { Client } from 'pg';
import { LockClient } from '../../client/index';
import { withPg } from '../../bench/lib/pg';
import type { StoreKind } from '../helpers/databases';
import {
  DAEMON_CLI,
  refusalMessage,
  startDaemon,
  tryStartDaemon,
  type DaemonSettings,
  type RunningDaemon,
} from '../helpers/daemon-process';
import { cleanupDir, startNatsServer, type NatsServer } from '../helpers/nats-server';
import type { PgCluster } from '../helpers/pg-cluster';
import { startTcpProxy, type TcpProxy } from '../helpers/tcp-proxy';
import {
  ANSWER_CODES,
  checkHistory,
  type CallRecord,
  type CheckReport,
  type FinalState,
  type Property,
  type ServiceWindow,
} from './checker';
import { Workload } from './workload';

export type FaultKind = 'kill9' | 'sigstop' | 'nats-restart' | 'pg-crash' | 'stuck-session' | 'blackhole' | 'second-daemon';

/**
 * What must hold in a scenario. The safety properties (SAFETY) hold in every one; the rest is per
 * fault.
 */
export interface Expected {
  /** Codes a call may fail with here (lock-rule answers such as LOCKED always may). Any other fails the scenario. */
  allowedFailureCodes: readonly string[];
  /**
   * Names unrelated to the fault, which should be served while it lasts: 'all' (the fault takes
   * away one of several daemons), 'others' (every name but the faulted one), 'none' (nothing can
   * serve during this fault: measured, not required).
   */
  unrelated: 'all' | 'others' | 'none';
  /** Unrelated names' successful calls per second during the fault, as a share of the rate before it. */
  unrelatedMinShare?: number;
  /** Longest time without a successful call on an unrelated name during the fault. */
  unrelatedMaxGapMs?: number;
  /** Share of the calls on unrelated names started during the fault that are answered within their timeout. */
  unrelatedAnsweredShare?: number;
  /** Successful calls per second after the fault (and a grace period), as a share of the rate before it. */
  recoveryMinShare: number;
  /** A second daemon on the same prefix with another store must refuse to start. */
  secondDaemon?: 'refuses';
}

/** Required of every scenario: never loosened per fault. */
export const SAFETY: readonly Property[] = ['overlap', 'token', 'lost', 'over-time', 'undocumented-code'];

export interface ScenarioDef {
  id: string;
  store: StoreKind;
  /** Daemons serving the prefix (the fault hits the first). */
  daemons: 1 | 2;
  fault: FaultKind;
  title: string;
  expect: Expected;
}

const TIMEOUT = 'REQUEST_TIMEOUT';
const NO_DAEMON = 'NO_DAEMON';
const UNAVAILABLE = 'STORE_UNAVAILABLE';
const UNKNOWN = 'OUTCOME_UNKNOWN';
const CONFLICT = 'AUTHORITY_CONFLICT';
/** A call whose time ran out while NATS was away (the client reconnects meanwhile). */
const NATS_AWAY = 'NATS_UNAVAILABLE';

// prettier-ignore
/** The table: scenario -> expected properties. */
export const SCENARIOS: readonly ScenarioDef[] = [
  { id: 'sqlite-kill9', store: 'sqlite', daemons: 1, fault: 'kill9', title: 'kill -9 of the daemon, then started again',
    expect: { allowedFailureCodes: [TIMEOUT, NO_DAEMON, UNKNOWN], unrelated: 'none', recoveryMinShare: 0.25 } },
  // A grant the pause made too late to send is released and answered STORE_UNAVAILABLE
  // (documented; nothing was done), as with PostgreSQL below.
  { id: 'sqlite-sigstop', store: 'sqlite', daemons: 1, fault: 'sigstop', title: 'SIGSTOP of the daemon for a few seconds, then SIGCONT',
    expect: { allowedFailureCodes: [TIMEOUT, UNKNOWN, UNAVAILABLE], unrelated: 'none', recoveryMinShare: 0.25 } },
  { id: 'sqlite-nats-restart', store: 'sqlite', daemons: 1, fault: 'nats-restart', title: 'nats-server kill -9, restarted on its port and store',
    expect: { allowedFailureCodes: [TIMEOUT, NO_DAEMON, UNKNOWN, NATS_AWAY], unrelated: 'none', recoveryMinShare: 0.25 } },
  { id: 'sqlite-second-daemon', store: 'sqlite', daemons: 1, fault: 'second-daemon', title: 'a second daemon on the prefix with another SQLite file',
    expect: { allowedFailureCodes: [CONFLICT], unrelated: 'all', unrelatedMinShare: 0.5, unrelatedMaxGapMs: 1000, unrelatedAnsweredShare: 0.99, recoveryMinShare: 0.25, secondDaemon: 'refuses' } },
  { id: 'pg-kill9', store: 'postgres', daemons: 2, fault: 'kill9', title: 'kill -9 of one of two daemons, then started again',
    expect: { allowedFailureCodes: [TIMEOUT, UNKNOWN], unrelated: 'all', unrelatedMinShare: 0.5, unrelatedMaxGapMs: 1000, unrelatedAnsweredShare: 0.99, recoveryMinShare: 0.25 } },
  // NATS still routes half the copies to the paused daemon: each such copy costs its client a
  // re-send (0.1 s and more), and with four names that delay is on every holder's critical path.
  // A daemon paused inside a transaction holds its rows until PostgreSQL ends its session: an
  // unlock that needs such a row meanwhile, or a grant the pause made too late to send, is
  // answered STORE_UNAVAILABLE (documented; nothing was done).
  { id: 'pg-sigstop', store: 'postgres', daemons: 2, fault: 'sigstop', title: 'SIGSTOP of one of two daemons for a few seconds, then SIGCONT',
    expect: { allowedFailureCodes: [TIMEOUT, UNKNOWN, UNAVAILABLE], unrelated: 'all', unrelatedMinShare: 0.05, unrelatedMaxGapMs: 1000, unrelatedAnsweredShare: 0.99, recoveryMinShare: 0.25 } },
  { id: 'pg-nats-restart', store: 'postgres', daemons: 2, fault: 'nats-restart', title: 'nats-server kill -9, restarted on its port and store',
    expect: { allowedFailureCodes: [TIMEOUT, NO_DAEMON, UNKNOWN, NATS_AWAY], unrelated: 'none', recoveryMinShare: 0.25 } },
  { id: 'pg-crash', store: 'postgres', daemons: 2, fault: 'pg-crash', title: 'PostgreSQL crash (immediate stop), then started again',
    expect: { allowedFailureCodes: [UNAVAILABLE, UNKNOWN, TIMEOUT], unrelated: 'none', recoveryMinShare: 0.25 } },
  // The busy name's calls may fail (LOCKED, STORE_UNAVAILABLE): only the other names must be served.
  { id: 'pg-stuck-session', store: 'postgres', daemons: 2, fault: 'stuck-session', title: 'a session holding the row of one busy name in an open transaction',
    expect: { allowedFailureCodes: [UNAVAILABLE, UNKNOWN, TIMEOUT], unrelated: 'others', unrelatedMinShare: 0.5, unrelatedMaxGapMs: 1000, unrelatedAnsweredShare: 0.95, recoveryMinShare: 0.25 } },
  // As a pause, and the cut-off daemon's open transaction holds its rows until the server ends
  // the session (dbIdleInTransactionTimeout, 2 s): calls on those names wait or fail meanwhile.
  { id: 'pg-blackhole', store: 'postgres', daemons: 2, fault: 'blackhole', title: 'TCP blackhole between one of two daemons and PostgreSQL',
    expect: { allowedFailureCodes: [UNAVAILABLE, UNKNOWN, TIMEOUT], unrelated: 'all', unrelatedMinShare: 0.03, unrelatedMaxGapMs: 1500, unrelatedAnsweredShare: 0.95, recoveryMinShare: 0.25 } },
  { id: 'pg-second-daemon', store: 'postgres', daemons: 2, fault: 'second-daemon', title: 'a second daemon on the prefix with its own database',
    expect: { allowedFailureCodes: [CONFLICT], unrelated: 'all', unrelatedMinShare: 0.5, unrelatedMaxGapMs: 1000, unrelatedAnsweredShare: 0.99, recoveryMinShare: 0.25, secondDaemon: 'refuses' } },
];

export interface Timing {
  /** Workload before the first fault (the baseline rate). */
  preMs: number;
  /** How long each fault lasts. */
  faultMs: Record<FaultKind, number>;
  /** Workload after each fault. */
  postMs: number;
  /** Faults per scenario. */
  rounds: number;
  /** Mid-run grants left to expire: one in this many (0: none; clients stopping at the end always leave theirs). */
  forgetOneIn: number;
  /**
   * After a fault ends, time allowed before the recovery rate is measured: at least the lock
   * lifetime, since grants whose replies the fault lost hold their names until they expire.
   */
  graceMs: number;
}

export const SHORT: Timing = {
  preMs: 1500,
  faultMs: {
    kill9: 3000,
    sigstop: 3000,
    'nats-restart': 2500,
    'pg-crash': 3000,
    'stuck-session': 5000,
    blackhole: 5000,
    'second-daemon': 4000,
  },
  postMs: 5500,
  rounds: 1,
  forgetOneIn: 0,
  graceMs: 3500,
};

export const LONG: Timing = {
  preMs: 3000,
  faultMs: {
    kill9: 5000,
    sigstop: 6000,
    'nats-restart': 5000,
    'pg-crash': 6000,
    'stuck-session': 8000,
    blackhole: 10_000,
    'second-daemon': 8000,
  },
  postMs: 8000,
  rounds: 3,
  forgetOneIn: 1000,
  graceMs: 3500,
};

/** Rough upper bound of a scenario's run time, for the test's timeout. */
export function scenarioBudgetMs(def: ScenarioDef, t: Timing): number {
  return 45_000 + t.preMs + t.rounds * (t.faultMs[def.fault] + t.postMs + 15_000);
}

/** Client settings: a call's timeout shorter than the default (10 s), so that faults show quickly. */
export const CLIENTS = 8;
export const CLIENT_TIMEOUT_MS = 5000;
export const NAMES = ['alpha', 'beta', 'gamma', 'delta'] as const;
/** The name the stuck session holds (the faulted name; the others are unrelated). */
export const BUSY_NAME = NAMES[0];

export interface SecondDaemonOutcome {
  /** It logged "ready". */
  started: boolean;
  /** Requests it received while up (whatever it answered; -1: unknown), from the services framework's stats. */
  requests: number;
  /** It exited (at start, or later by itself): its exit code and one-line message. */
  code?: number | null;
  message?: string;
}

export interface ScenarioResult {
  def: ScenarioDef;
  report: CheckReport;
  baselineOkPerSecond: number;
  /** The second daemon of each round (second-daemon scenarios). */
  second: SecondDaemonOutcome[];
  notes: string[];
  /** Expectations not met (empty: the scenario passes). */
  failures: string[];
  calls: CallRecord[];
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** `p`, or nothing after `ms` (its timer cleared either way, so no handle outlives the test). */
async function within(p: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([p.catch(() => undefined), new Promise<void>((r) => (timer = setTimeout(r, ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** Everything a fault acts on. */
interface Ctx {
  def: ScenarioDef;
  nats: NatsServer;
  pg?: PgCluster;
  /** The daemons serving now; a fault may replace one. */
  daemons: RunningDaemon[];
  /** Every daemon started, to stop them all at the end. */
  started: RunningDaemon[];
  settings: DaemonSettings[];
  /** A second daemon's settings: the same prefix, another store. */
  otherStore: () => Promise<DaemonSettings>;
  proxy?: TcpProxy;
  dbUrl: string;
  /** How long the fault lasts. */
  faultMs: number;
  prefix: string;
  /** A client connection, for the services framework's stats. */
  nc?: NatsConnection;
  /** What each second daemon did, one per round. */
  second: SecondDaemonOutcome[];
  notes: string[];
  cleanup: (() => Promise<void>)[];
}

interface Fault {
  inject(): Promise<void>;
  recover(): Promise<void>;
}

function makeFault(ctx: Ctx): Fault {
  const target = () => ctx.daemons[0]!;
  switch (ctx.def.fault) {
    case 'kill9':
      return {
        inject: async () => {
          const d = target();
          d.signal('SIGKILL');
          await d.exited;
        },
        recover: async () => {
          const d = await startDaemon(ctx.settings[0]!);
          ctx.started.push(d);
          ctx.daemons[0] = d;
        },
      };
    case 'sigstop':
      return {
        inject: async () => target().signal('SIGSTOP'),
        recover: async () => target().signal('SIGCONT'),
      };
    case 'nats-restart':
      return {
        inject: () => ctx.nats.stop('SIGKILL'),
        recover: () => ctx.nats.restart(),
      };
    case 'pg-crash':
      return {
        inject: () => ctx.pg!.crash(),
        recover: () => ctx.pg!.start(),
      };
    case 'stuck-session': {
      let session: Client | undefined;
      return {
        inject: async () => {
          session = new Client({ connectionString: ctx.dbUrl });
          session.on('error', () => undefined);
          await session.connect();
          await session.query('BEGIN');
          // Takes the row's lock whether the name is held (update) or free (insert); rolled back later.
          await session.query(
            `INSERT INTO lockmgr_locks (name, locked_by, lock_process, locked_until, created_at, updated_at, token)
             VALUES ($1, 'stuck-session', NULL, NULL, 0, 0, 0)
             ON CONFLICT (name) DO UPDATE SET updated_at = lockmgr_locks.updated_at`,
            [BUSY_NAME],
          );
        },
        recover: async () => {
          const s = session;
          session = undefined;
          if (!s) return;
          try {
            // Evidence of what the open transaction did: the daemons' sessions waiting on a lock.
            const { rows } = await s.query(
              `SELECT count(*) FILTER (WHERE wait_event_type = 'Lock') AS waiting, count(*) AS sessions
                 FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`,
            );
            ctx.notes.push(
              `stuck session: at its end ${rows[0]?.waiting} daemon sessions waited on a lock, of ${rows[0]?.sessions} connected`,
            );
            await s.query('ROLLBACK');
          } finally {
            await s.end().catch(() => undefined);
          }
        },
      };
    }
    case 'blackhole':
      return {
        inject: async () => ctx.proxy!.blackhole(),
        recover: async () => ctx.proxy!.restore(),
      };
    case 'second-daemon': {
      let second: RunningDaemon | undefined;
      return {
        inject: async () => {
          // Not ready within the fault's time: it served nothing during it (waiting is refusing too).
          const r = await tryStartDaemon(await ctx.otherStore(), ctx.faultMs);
          if (r.ready) {
            second = r.daemon;
            ctx.started.push(r.daemon);
          } else {
            ctx.second.push({ started: false, requests: 0, code: r.code, message: r.message });
          }
        },
        recover: async () => {
          if (!second) return;
          const d = second;
          second = undefined;
          // Gone already (it found the conflict later and left): what it took before is not counted.
          const exitedEarly = !d.alive;
          const requests = exitedEarly ? -1 : ((await requestsByPid(ctx.nc!, ctx.prefix)).get(d.pid) ?? -1);
          await d.stop(3000);
          ctx.second.push({
            started: true,
            requests,
            ...(exitedEarly ? { code: await d.exited, message: refusalMessage(d.output(), '') } : {}),
          });
        },
      };
    }
  }
}

/**
 * Requests each daemon serving `prefix` has received so far, by process id, from the NATS
 * services framework's stats (every daemon registers as the service `lockmgr`; its metadata
 * names the prefix and the daemon id, `host:pid:random`).
 */
async function requestsByPid(nc: NatsConnection, prefix: string): Promise<Map<number, number>> {
  const out = new Map<number, number>();
  const replies = await nc.services.client({ strategy: RequestStrategy.Timer, maxWait: 500 }).stats('lockmgr');
  for await (const s of replies) {
    if (s.metadata?.prefix !== prefix) continue;
    const pid = Number(String(s.metadata?.daemon ?? '').split(':')[1]);
    out.set(
      pid,
      (s.endpoints ?? []).reduce((n, e) => n + e.num_requests, 0),
    );
  }
  return out;
}

let dbCounter = 0;

/** The locks a store holds now, on the workload's timeline. */
async function finalState(store: StoreKind, dbUrl: string): Promise<FinalState> {
  let rows: { name: string; token: number; locked_until: number | null }[];
  if (store === 'sqlite') {
    const db = new BetterSqlite3(dbUrl, { readonly: true, timeout: 5000 });
    try {
      rows = db.prepare('SELECT name, token, locked_until FROM lockmgr_locks').all() as typeof rows;
    } finally {
      db.close();
    }
  } else {
    rows = await withPg(dbUrl, async (c) => (await c.query('SELECT name, token, locked_until FROM lockmgr_locks')).rows);
  }
  const at = performance.now();
  const offset = Date.now() - at;
  return {
    at,
    locks: rows.map((r) => ({
      name: r.name,
      token: Number(r.token),
      lockedUntil: r.locked_until === null ? null : Number(r.locked_until) - offset,
    })),
  };
}

/** Stop everything the scenario started, newest first, whatever happened. */
async function runCleanup(ctx: Ctx): Promise<void> {
  for (const fn of ctx.cleanup.reverse()) {
    try {
      await fn();
    } catch (err) {
      ctx.notes.push(`cleanup: ${(err as Error).message}`);
    }
  }
}

export async function runScenario(def: ScenarioDef, env: { pg?: PgCluster }, t: Timing): Promise<ScenarioResult> {
  const dir = mkdtempSync(join(tmpdir(), 'lockmgr-fault-'));
  const prefix = `fh${process.pid}n${++dbCounter}`;
  const nats = await startNatsServer();
  const ctx: Ctx = {
    def,
    nats,
    pg: env.pg,
    daemons: [],
    started: [],
    settings: [],
    otherStore: async () => ({ natsUrl: nats.url, db: '', prefix }),
    dbUrl: '',
    faultMs: t.faultMs[def.fault],
    second: [],
    prefix,
    notes: [],
    cleanup: [
      async () => rmSync(dir, { recursive: true, force: true }),
      async () => {
        await nats.stop('SIGTERM');
        cleanupDir(nats.storeDir);
      },
    ],
  };
  let workload: Workload | undefined;
  let final: FinalState | undefined;
  const windows: ServiceWindow[] = [];
  const marks: { from: number; to: number }[] = [];
  let baseline: { from: number; to: number } | undefined;
  let stopAt = 0;
  try {
    if (def.store === 'sqlite') {
      ctx.dbUrl = join(dir, 'locks.sqlite');
      ctx.settings = [{ natsUrl: nats.url, db: ctx.dbUrl, prefix }];
      ctx.otherStore = async () => ({ natsUrl: nats.url, db: join(dir, 'other.sqlite'), prefix });
    } else {
      const pg = env.pg;
      if (!pg) throw new Error('PostgreSQL scenarios need a cluster');
      const dbName = `fh_${process.pid}_${dbCounter}`;
      ctx.dbUrl = await pg.createDatabase(dbName);
      let first = ctx.dbUrl;
      if (def.fault === 'blackhole') {
        // The first daemon reaches the database through a proxy the fault blackholes.
        const proxy = await startTcpProxy({ host: '127.0.0.1', port: pg.port });
        ctx.proxy = proxy;
        ctx.cleanup.push(() => proxy.close());
        first = pg.url(dbName, proxy.port);
      }
      ctx.settings = [{ natsUrl: nats.url, db: first, prefix }];
      for (let i = 1; i < def.daemons; i++) ctx.settings.push({ natsUrl: nats.url, db: ctx.dbUrl, prefix });
      let others = 0;
      ctx.otherStore = async () => ({ natsUrl: nats.url, db: await pg.createDatabase(`${dbName}_other${++others}`), prefix });
    }
    ctx.cleanup.push(async () => {
      await Promise.all(ctx.started.map((d) => d.stop(3000)));
    });
    // One at a time: two daemons migrating one fresh database at once is not what is tested here.
    for (const s of ctx.settings) {
      const d = await startDaemon(s);
      ctx.started.push(d);
      ctx.daemons.push(d);
    }

    const clients: { id: string; client: LockClient }[] = [];
    ctx.cleanup.push(async () => {
      // close(), not drain(): the server may be gone; bounded either way.
      await Promise.all(clients.map((c) => within(c.client.nc.close(), 2000)));
    });
    for (let i = 0; i < CLIENTS; i++) {
      const id = `c${i}`;
      const client = await LockClient.connect({
        servers: nats.url,
        prefix,
        timeout: CLIENT_TIMEOUT_MS,
        locked_by: id,
        nats: { name: `fault-${id}`, maxReconnectAttempts: -1, reconnectTimeWait: 250 },
      });
      clients.push({ id, client });
    }
    ctx.nc = clients[0]!.client.nc;

    const w = new Workload({
      clients,
      names: NAMES,
      expiresS: 3,
      waitS: 1,
      holdMs: [5, 30],
      thinkMs: [10, 40],
      forgetOneIn: t.forgetOneIn,
      seed: dbCounter,
    });
    workload = w;
    ctx.cleanup.push(() => w.stop());
    w.start();
    const begin = performance.now();
    await sleep(t.preMs);
    baseline = { from: begin + 300, to: performance.now() };

    for (let round = 0; round < t.rounds; round++) {
      const fault = makeFault(ctx);
      const from = performance.now();
      try {
        await fault.inject();
        await sleep(t.faultMs[def.fault]);
      } finally {
        await fault.recover();
      }
      const to = performance.now();
      marks.push({ from, to });
      ctx.notes.push(`round ${round + 1}: fault ${Math.round(from)}-${Math.round(to)} ms`);
      await sleep(t.postMs);
    }
    stopAt = performance.now();
    await w.stop();
    final = await finalState(def.store, ctx.dbUrl);
  } finally {
    await runCleanup(ctx);
  }

  // The baseline's rate (all names, and the unrelated ones), for the shares the table asks for.
  const calls = workload?.calls ?? [];
  const unrelatedNames: 'all' | readonly string[] = def.expect.unrelated === 'others' ? NAMES.filter((n) => n !== BUSY_NAME) : 'all';
  const base = checkHistory(calls, {
    windows: [
      { label: 'before', ...baseline!, names: unrelatedNames },
      { label: 'before, all names', ...baseline!, names: 'all' },
    ],
  }).windows;
  const baseUnrelated = base[0]!.okPerSecond;
  const baseAll = base[1]!.okPerSecond;
  const e = def.expect;
  marks.forEach((m, i) => {
    const measured = e.unrelated !== 'none';
    windows.push({
      label: `fault ${i + 1} (${e.unrelated === 'none' ? 'all names, measured only' : e.unrelated === 'all' ? 'all names' : 'names other than the faulted one'})`,
      from: m.from,
      to: m.to,
      names: unrelatedNames,
      ...(measured && e.unrelatedMinShare !== undefined ? { minOkPerSecond: e.unrelatedMinShare * baseUnrelated } : {}),
      ...(measured && e.unrelatedMaxGapMs !== undefined ? { maxGapMs: e.unrelatedMaxGapMs } : {}),
      ...(measured && e.unrelatedAnsweredShare !== undefined ? { minAnsweredShare: e.unrelatedAnsweredShare } : {}),
    });
    const next = marks[i + 1]?.from ?? stopAt;
    windows.push({
      label: `after fault ${i + 1} (all names)`,
      from: m.to + t.graceMs,
      to: next,
      names: 'all',
      minOkPerSecond: e.recoveryMinShare * baseAll,
    });
  });
  const report = checkHistory(calls, { final, windows });

  const failures: string[] = [];
  const byProperty = new Map<string, string[]>();
  for (const v of report.violations) byProperty.set(v.property, [...(byProperty.get(v.property) ?? []), v.detail]);
  for (const [property, details] of byProperty) {
    const shown = details.slice(0, 5).map((d) => `  ${d}`);
    if (details.length > 5) shown.push(`  ... and ${details.length - 5} more`);
    failures.push(`${property}: ${details.length} violation(s)\n${shown.join('\n')}`);
  }
  // Lock-rule answers are always allowed: a grant that expired during a fault is NOT_OWNER to its
  // late unlock. (A wrong one shows as a lost grant.)
  const allowed = new Set([...ANSWER_CODES, ...e.allowedFailureCodes]);
  const unexpected = Object.entries(report.failuresByCode).filter(([code]) => !allowed.has(code));
  if (unexpected.length) {
    failures.push(`failure codes not expected in this scenario: ${unexpected.map(([c, n]) => `${c} x${n}`).join(', ')}`);
  }
  const conflicts = report.failuresByCode.AUTHORITY_CONFLICT ?? 0;
  // Served: it started, stayed, took requests, and no client was told of the conflict (a daemon
  // answering AUTHORITY_CONFLICT takes requests too, and refuses them). One that left by itself
  // refused; whatever it did before shows in the safety properties.
  ctx.second.forEach((s, i) => {
    if (e.secondDaemon === 'refuses' && s.started && s.code === undefined && s.requests !== 0 && conflicts === 0) {
      failures.push(`round ${i + 1}: the second daemon on the same prefix (another store) started and took ${s.requests} requests`);
    }
  });
  if (e.secondDaemon === 'refuses' && ctx.second.length === 0) failures.push('the second daemon was never tried');
  if (baseAll === 0) failures.push('no successful call before the fault: the workload never ran');

  const result: ScenarioResult = {
    def,
    report,
    baselineOkPerSecond: baseAll,
    second: ctx.second,
    notes: ctx.notes,
    failures,
    calls,
  };
  saveResult(result);
  return result;
}

export const RESULTS_DIR = join(__dirname, '..', '..', 'test-results', 'fault-history');

/** The history and the report, for a look after the run (test-results/ is not committed). */
function saveResult(r: ScenarioResult): void {
  try {
    mkdirSync(RESULTS_DIR, { recursive: true });
    let cli = DAEMON_CLI;
    try {
      cli += ` (built ${statSync(DAEMON_CLI).mtime.toISOString()})`;
    } catch {
      // reported as is
    }
    const { calls, ...rest } = r;
    writeFileSync(join(RESULTS_DIR, `${r.def.id}.json`), JSON.stringify({ daemonCli: cli, ...rest, calls }));
  } catch {
    // best effort: the report is also printed
  }
}

const pct = (n: number, of: number) => (of === 0 ? '-' : `${Math.round((100 * n) / of)}%`);

/** The figures of one scenario, as a few lines of text. */
export function describeResult(r: ScenarioResult): string {
  const x = r.report;
  const codes = Object.entries(x.failuresByCode)
    .sort((a, b) => b[1] - a[1])
    .map(([c, n]) => `${c} ${n}`)
    .join(', ');
  const lines = [
    `${r.def.id} (${r.def.title})${r.failures.length ? ' -- FAILS' : ' -- passes'}`,
    `  calls ${x.byOp.get.calls + x.byOp.unlock.calls} (get ${x.byOp.get.calls}, unlock ${x.byOp.unlock.calls}), ok ${x.byOp.get.ok + x.byOp.unlock.ok}; failures: ${codes || 'none'}; writes ${x.byOp.write.calls} (fenced ${x.fencedWrites})`,
    `  overlaps ${x.overlaps.length}, token problems ${x.tokenProblems.length} (repeated ${x.tokenProblems.filter((p) => p.kind === 'repeated').length}), lost ${x.lost.length} (undetermined ${x.undetermined}; ${x.verifiedAtEnd} live grants found at the end), over-time ${x.overTime.length}, undocumented codes ${x.undocumented.length}`,
    `  before: ${r.baselineOkPerSecond.toFixed(1)} ok/s (all names)`,
  ];
  for (const w of x.windows) {
    const f = Object.entries(w.failuresByCode)
      .map(([c, n]) => `${c} ${n}`)
      .join(', ');
    lines.push(
      `  ${w.label}: ${w.okPerSecond.toFixed(1)} ok/s over ${w.seconds.toFixed(1)} s, longest gap ${Math.round(w.maxGapMs)} ms; started ${w.started}, ok ${w.ok} (${pct(w.ok, w.started)})${f ? `, failed: ${f}` : ''}`,
    );
  }
  r.second.forEach((s, i) => {
    const exit = s.code !== undefined ? `; exited ${s.code}: ${s.message}` : '';
    lines.push(
      `  second daemon, round ${i + 1}: ${s.started ? `started, received ${s.requests < 0 ? 'an unknown number of' : s.requests} requests` : 'did not start'}${exit}`,
    );
  });
  for (const n of r.notes) if (!n.startsWith('round ')) lines.push(`  note: ${n}`);
  for (const f of r.failures) lines.push(`  ! ${f.split('\n').join('\n    ')}`);
  return lines.join('\n');
}
