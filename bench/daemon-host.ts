/**
 * A lockmgr daemon in this process, with timers around its parts, for the per-request breakdown.
 * Started by the bench with fork(); driven over IPC:
 *
 *   -> {cmd: 'start', config}        <- {type: 'ready'}
 *   -> {cmd: 'window', on: boolean}  (record requests only inside the measured window; with
 *                                     `profile` set at start, a V8 CPU profile of that window only)
 *   -> {cmd: 'report'}               <- {type: 'report', rows, txs, relay, elu, gcMs, hooks}
 *   -> {cmd: 'stop'}                 (stops the daemon and exits)
 *
 * Nothing in daemon/ is changed: methods are wrapped on their prototypes before the daemon starts.
 * Requests are matched to the client's send time by the `Bench-Id` and `Bench-T0` headers the
 * bench adds. Times are process.hrtime (CLOCK_MONOTONIC, shared by all processes), microseconds.
 */
import { writeFileSync } from 'node:fs';
import { Socket } from 'node:net';
import { Session } from 'node:inspector';
import { performance, PerformanceObserver } from 'node:perf_hooks';
import type { Msg } from 'nats';
import { EventRelay } from '../daemon/event-relay';
import { LockDaemon } from '../daemon/lock-daemon';
import { LockService } from '../daemon/lock-service';
import { createLogger } from '../daemon/logger';
import { Database, type SqlConnection } from '../daemon/store/database';
import { Batcher } from '../daemon/store/transaction';

const hr = () => Number(process.hrtime.bigint()) / 1e3;

/** Column order of a request row sent to the bench. */
export const ROW_FIELDS = ['id', 'endpoint', 't0', 'tHandle', 'tEnqueue', 'tTxStart', 'tOpStart', 'tOpEnd', 'tTxEnd', 'tRespond', 'tResponded', 'batch', 'tx'] as const;

interface ReqRec {
  id: number;
  endpoint: string;
  t0: number;
  tHandle: number;
  tEnqueue: number;
  tOpStart: number;
  tOpEnd: number;
  tRespond: number;
  tResponded: number;
  tx?: TxRec;
}

export interface TxRec {
  id: number;
  start: number;
  end: number;
  size: number;
  /** Operations that came from a request (the rest: relay, sweeper). */
  requestOps: number;
  /** Microseconds per statement class, and counts. */
  stmtUs: Record<string, number>;
  stmtCount: Record<string, number>;
}

let recording = false;
let current: ReqRec | null = null;
let txSeq = 0;
const rows: ReqRec[] = [];
const txs: TxRec[] = [];
const outside: Record<string, number> = {};
const relay = { calls: 0, events: 0, us: 0 };
/** Writes to the NATS server's socket (each a system call when the socket is writable). */
const natsWrites = { count: 0, bytes: 0 };
let gcMs = 0;
/** Which of the daemon's methods could be wrapped (the others are missing from this build). */
const hooks: string[] = [];

function classify(sql: string): string {
  if (/^BEGIN/i.test(sql)) return 'begin';
  if (/^COMMIT/i.test(sql)) return 'commit';
  if (/^(ROLLBACK|SAVEPOINT|RELEASE)/i.test(sql)) return 'savepoint';
  if (/lockmgr_counters/.test(sql)) return 'token counter';
  if (/clock_timestamp/.test(sql)) return 'db clock';
  if (/^INSERT INTO lockmgr_outbox/.test(sql)) return 'outbox insert';
  if (/lockmgr_outbox/.test(sql)) return 'relay (outbox read/delete)';
  if (/lockmgr_first_pass/.test(sql)) return 'first pass (inserts and unlocks of a batch)';
  if (/^INSERT INTO lockmgr_locks|lockmgr_insert_lock/.test(sql)) return 'lock insert';
  if (/^DELETE FROM lockmgr_locks WHERE name IN/.test(sql)) return 'sweep delete';
  if (/^DELETE FROM lockmgr_locks/.test(sql)) return 'lock delete';
  if (/lockmgr_locks/.test(sql)) return 'lock other';
  return 'other';
}

function need(proto: object, name: string, owner: string): void {
  if (typeof (proto as Record<string, unknown>)[name] !== 'function') throw new Error(`${owner}.${name} is missing: the breakdown needs it`);
  hooks.push(`${owner}.${name}`);
}

function instrument(): void {
  need(LockService.prototype, 'handle', 'LockService');
  need(Batcher.prototype, 'run', 'Batcher');
  need(Batcher.prototype, 'transactOnce', 'Batcher');
  need(Database.prototype, 'connect', 'Database');
  const handle = LockService.prototype.handle;
  LockService.prototype.handle = function (this: LockService, endpoint, msg) {
    const tHandle = hr();
    const m = msg as Msg;
    const id = recording ? Number(m.headers?.get('Bench-Id') || 0) : 0;
    if (id) {
      const rec: ReqRec = { id, endpoint, t0: Number(m.headers?.get('Bench-T0')), tHandle, tEnqueue: NaN, tOpStart: NaN, tOpEnd: NaN, tRespond: NaN, tResponded: NaN };
      rows.push(rec);
      const wrap = (name: 'respond' | 'respondError') => {
        const orig = (msg as unknown as Record<string, (...a: unknown[]) => boolean>)[name]!.bind(msg);
        (msg as unknown as Record<string, unknown>)[name] = (...a: unknown[]) => {
          rec.tRespond = hr();
          const ok = orig(...a);
          rec.tResponded = hr();
          return ok;
        };
      };
      wrap('respond');
      wrap('respondError');
      current = rec;
    }
    try {
      return handle.call(this, endpoint, msg);
    } finally {
      current = null;
    }
  };

  // Which transaction a connection is serving. Batches may overlap (PostgreSQL), so a
  // transaction is found from its connection, never from a single "current" variable.
  const connTx = new WeakMap<SqlConnection, TxRec>();
  let pendingTx: TxRec | null = null;

  const run = Batcher.prototype.run;
  // The operation's name and first statement go through unchanged: they decide batch order and
  // PostgreSQL's first pass.
  Batcher.prototype.run = function <T>(this: Batcher, op: (tx: never) => Promise<T>, ...rest: unknown[]) {
    const rec = current;
    current = null; // only the request's first transaction (a waiting get runs more later)
    if (!rec) return run.call(this, op as never, ...(rest as [])) as Promise<T>;
    rec.tEnqueue = hr();
    return run.call(this, (async (tx: { conn?: SqlConnection }) => {
      const t = tx.conn ? connTx.get(tx.conn) : undefined;
      rec.tx = t;
      if (t) t.requestOps += 1;
      rec.tOpStart = hr();
      try {
        return await op(tx as never);
      } finally {
        rec.tOpEnd = hr();
      }
    }) as never, ...(rest as [])) as Promise<T>;
  };

  const proto = Batcher.prototype as unknown as { transactOnce(ops: unknown[]): Promise<unknown> };
  const transactOnce = proto.transactOnce;
  proto.transactOnce = function (this: Batcher, ops: unknown[]) {
    const rec: TxRec = { id: ++txSeq, start: hr(), end: NaN, size: ops.length, requestOps: 0, stmtUs: {}, stmtCount: {} };
    // transactOnce asks the database for its connection before its first await.
    pendingTx = rec;
    const p = transactOnce.call(this, ops);
    pendingTx = null;
    const done = () => {
      rec.end = hr();
      if (recording) txs.push(rec);
    };
    p.then(done, done);
    return p;
  };

  const timeStatement = (conn: SqlConnection, kind: string, us: number) => {
    if (!recording) return;
    const tx = connTx.get(conn);
    if (tx && Number.isNaN(tx.end)) {
      tx.stmtUs[kind] = (tx.stmtUs[kind] ?? 0) + us;
      tx.stmtCount[kind] = (tx.stmtCount[kind] ?? 0) + 1;
    } else outside[kind] = (outside[kind] ?? 0) + us;
  };
  const wrapped = new WeakSet<SqlConnection>();
  const connect = Database.prototype.connect;
  Database.prototype.connect = function (this: Database) {
    const rec = pendingTx;
    pendingTx = null;
    return connect.call(this).then((conn) => {
      if (rec) connTx.set(conn, rec);
      else connTx.delete(conn);
      if (!wrapped.has(conn)) {
        wrapped.add(conn);
        const c = conn as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>;
        for (const method of ['query', 'exec', 'begin']) {
          const orig = c[method];
          if (typeof orig !== 'function') continue;
          c[method] = async function (this: unknown, ...args: unknown[]) {
            const t = hr();
            try {
              return await orig.apply(conn, args);
            } finally {
              timeStatement(conn, method === 'begin' ? 'begin' : classify(String(args[0])), hr() - t);
            }
          };
        }
      }
      return conn;
    });
  };

  // The relay's publishing method has had several names; time whichever exist.
  const relayProto = EventRelay.prototype as unknown as Record<string, unknown>;
  for (const name of ['publish', 'publishJetStream', 'publishCore']) {
    const orig = relayProto[name];
    if (typeof orig !== 'function') continue;
    hooks.push(`EventRelay.${name}`);
    relayProto[name] = async function (this: EventRelay, batch: unknown[], ...rest: unknown[]) {
      const t = hr();
      try {
        return await (orig as (...a: unknown[]) => Promise<unknown>).call(this, batch, ...rest);
      } finally {
        if (recording) {
          relay.calls += 1;
          relay.events += Array.isArray(batch) ? batch.length : 0;
          relay.us += hr() - t;
        }
      }
    };
  }

  const write = Socket.prototype.write;
  Socket.prototype.write = function (this: Socket, ...args: unknown[]) {
    if (recording && this.remotePort === natsPort) {
      natsWrites.count += 1;
      natsWrites.bytes += (args[0] as { length?: number })?.length ?? 0;
    }
    return (write as (...a: unknown[]) => boolean).apply(this, args);
  } as typeof Socket.prototype.write;

  new PerformanceObserver((list) => {
    if (recording) for (const e of list.getEntries()) gcMs += e.duration;
  }).observe({ entryTypes: ['gc'] });
}

let daemon: LockDaemon | undefined;
let natsPort = -1;
let profileFile: string | undefined;
let closing: Promise<void> = Promise.resolve();
const session = new Session();
function inspect<T>(method: string, params?: object): Promise<T> {
  return new Promise((resolve, reject) => session.post(method, params ?? {}, (err, res) => (err ? reject(err) : resolve(res as T))));
}
let elu0 = performance.eventLoopUtilization();
let elu = { utilization: NaN, activeMs: NaN };

process.on('message', (m: { cmd: string; config?: Record<string, unknown>; on?: boolean; profile?: string }) => {
  void (async () => {
    try {
      if (m.cmd === 'start') {
        natsPort = Number(new URL(String(m.config?.natsUrl)).port);
        instrument();
        profileFile = m.profile;
        if (profileFile) {
          session.connect();
          await inspect('Profiler.enable');
          await inspect('Profiler.setSamplingInterval', { interval: 250 });
        }
        daemon = new LockDaemon({ config: m.config as never, logger: createLogger({ level: 'warn', format: 'json' }) });
        await daemon.start();
        process.send!({ type: 'ready' });
      } else if (m.cmd === 'window') {
        if (m.on) {
          rows.length = 0;
          txs.length = 0;
          for (const k of Object.keys(outside)) delete outside[k];
          Object.assign(relay, { calls: 0, events: 0, us: 0 });
          Object.assign(natsWrites, { count: 0, bytes: 0 });
          gcMs = 0;
          elu0 = performance.eventLoopUtilization();
          recording = true;
          if (profileFile) await inspect('Profiler.start');
        } else {
          if (recording) {
            recording = false;
            const e = performance.eventLoopUtilization(elu0);
            elu = { utilization: e.utilization, activeMs: e.active };
            if (profileFile) {
              const file = profileFile;
              closing = inspect<{ profile: unknown }>('Profiler.stop').then(({ profile }) => writeFileSync(file, JSON.stringify(profile)));
            }
          }
          await closing;
          process.send!({ type: 'window-closed' });
        }
      } else if (m.cmd === 'report') {
        const out = rows.map((r) => [
          r.id, r.endpoint, r.t0, r.tHandle, r.tEnqueue, r.tx?.start ?? NaN, r.tOpStart, r.tOpEnd, r.tx?.end ?? NaN, r.tRespond, r.tResponded, r.tx?.size ?? NaN, r.tx?.id ?? NaN,
        ]);
        process.send!({ type: 'report', rows: out, txs, outside, relay, natsWrites, elu, gcMs, hooks });
      } else if (m.cmd === 'stop') {
        await daemon?.stop(5000);
        process.exit(0);
      }
    } catch (err) {
      process.send!({ type: 'error', message: (err as Error).stack ?? String(err) });
    }
  })();
});
process.on('disconnect', () => process.exit(0));
