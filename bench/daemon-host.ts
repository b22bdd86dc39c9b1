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
 * The daemon is observed through its diagnostic channels (daemon/diagnostics.ts): requests, the
 * batcher's transactions and operations, SQL statements and the relay's publishes. Requests are
 * matched to the client's send time by the `Bench-Id` and `Bench-T0` headers the bench adds.
 * Times are process.hrtime (CLOCK_MONOTONIC, shared by all processes), microseconds.
 */
import { subscribe } from 'node:diagnostics_channel';
import { writeFileSync } from 'node:fs';
import { Socket } from 'node:net';
import { Session } from 'node:inspector';
import { performance, PerformanceObserver } from 'node:perf_hooks';
import type { Msg } from 'nats';
import { CHANNELS } from '../daemon/diagnostics';
import { LockDaemon } from '../daemon/lock-daemon';
import { createLogger } from '../daemon/logger';

const hr = () => Number(process.hrtime.bigint()) / 1e3;

/** Column order of a request row sent to the bench. */
export const ROW_FIELDS = [
  'id',
  'endpoint',
  't0',
  'tHandle',
  'tEnqueue',
  'tTxStart',
  'tOpStart',
  'tOpEnd',
  'tTxEnd',
  'tRespond',
  'tResponded',
  'batch',
  'tx',
] as const;

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
  /** Operations that came from a request (the rest: sweeper). */
  requestOps: number;
  /** Microseconds per statement class, and counts. */
  stmtUs: Record<string, number>;
  stmtCount: Record<string, number>;
}

let recording = false;
let txSeq = 0;
const rows: ReqRec[] = [];
const txs: TxRec[] = [];
const outside: Record<string, number> = {};
const relay = { calls: 0, events: 0, us: 0 };
/** Writes to the NATS server's socket (each a system call when the socket is writable). */
const natsWrites = { count: 0, bytes: 0 };
let gcMs = 0;
/** The diagnostic channels listened to. */
const hooks: string[] = [];

function classify(sql: string): string {
  if (/^BEGIN/i.test(sql)) return 'begin';
  if (/^COMMIT/i.test(sql)) return 'commit';
  if (/^(ROLLBACK|SAVEPOINT|RELEASE)/i.test(sql)) return 'savepoint';
  if (/lockmgr_counters/.test(sql)) return 'token counter';
  if (/^INSERT INTO lockmgr_outbox/.test(sql)) return 'outbox insert';
  if (/lockmgr_outbox/.test(sql)) return 'relay (outbox read/delete)';
  if (/lockmgr_first_pass/.test(sql)) return 'first pass (inserts and unlocks of a batch)';
  if (/^INSERT INTO lockmgr_locks|lockmgr_insert_lock/.test(sql)) return 'lock insert';
  if (/^DELETE FROM lockmgr_locks WHERE name IN/.test(sql)) return 'sweep delete';
  if (/^DELETE FROM lockmgr_locks/.test(sql)) return 'lock delete';
  if (/lockmgr_locks/.test(sql)) return 'lock other';
  return 'other';
}

function listen(name: string, fn: (message: never) => void): void {
  subscribe(name, fn as (message: unknown) => void);
  hooks.push(name);
}

function instrument(): void {
  /** Requests in flight, by their message (the tag their operations carry). */
  const requests = new Map<object, ReqRec>();
  /** Transactions in flight, by their trace object. */
  const transactions = new Map<object, TxRec>();

  listen(CHANNELS.request, (m: { phase: string; endpoint: string; msg: Msg }) => {
    const t = hr();
    if (m.phase === 'received') {
      const id = recording ? Number(m.msg.headers?.get('Bench-Id') || 0) : 0;
      if (!id) return;
      const rec: ReqRec = {
        id,
        endpoint: m.endpoint,
        t0: Number(m.msg.headers?.get('Bench-T0')),
        tHandle: t,
        tEnqueue: NaN,
        tOpStart: NaN,
        tOpEnd: NaN,
        tRespond: NaN,
        tResponded: NaN,
      };
      rows.push(rec);
      requests.set(m.msg, rec);
      return;
    }
    const rec = requests.get(m.msg);
    if (!rec) return;
    if (m.phase === 'replying') rec.tRespond = t;
    else {
      rec.tResponded = t;
      requests.delete(m.msg);
    }
  });
  // Only the request's first transaction counts (a waiting get runs more later).
  listen(CHANNELS.operation, (m: { phase: string; tag: object; trace?: object }) => {
    const rec = requests.get(m.tag);
    if (!rec) return;
    if (m.phase === 'queued') {
      if (Number.isNaN(rec.tEnqueue)) rec.tEnqueue = hr();
    } else if (m.phase === 'start') {
      if (rec.tx) return;
      rec.tx = m.trace ? transactions.get(m.trace) : undefined;
      if (rec.tx) rec.tx.requestOps += 1;
      rec.tOpStart = hr();
    } else if (rec.tx && Number.isNaN(rec.tOpEnd)) {
      rec.tOpEnd = hr();
    }
  });
  listen(CHANNELS.transaction, (m: { phase: string; trace: object; size?: number }) => {
    if (m.phase === 'start') {
      transactions.set(m.trace, { id: ++txSeq, start: hr(), end: NaN, size: m.size ?? 0, requestOps: 0, stmtUs: {}, stmtCount: {} });
      return;
    }
    const tx = transactions.get(m.trace);
    transactions.delete(m.trace);
    if (!tx) return;
    tx.end = hr();
    if (recording) txs.push(tx);
  });
  listen(CHANNELS.statement, (m: { trace: object; sql: string; us: number }) => {
    if (!recording) return;
    const kind = classify(m.sql);
    const tx = transactions.get(m.trace);
    if (tx) {
      tx.stmtUs[kind] = (tx.stmtUs[kind] ?? 0) + m.us;
      tx.stmtCount[kind] = (tx.stmtCount[kind] ?? 0) + 1;
    } else outside[kind] = (outside[kind] ?? 0) + m.us;
  });
  listen(CHANNELS.publish, (m: { events: number; us: number }) => {
    if (!recording) return;
    relay.calls += 1;
    relay.events += m.events;
    relay.us += m.us;
  });

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
          r.id,
          r.endpoint,
          r.t0,
          r.tHandle,
          r.tEnqueue,
          r.tx?.start ?? NaN,
          r.tOpStart,
          r.tOpEnd,
          r.tx?.end ?? NaN,
          r.tRespond,
          r.tResponded,
          r.tx?.size ?? NaN,
          r.tx?.id ?? NaN,
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
