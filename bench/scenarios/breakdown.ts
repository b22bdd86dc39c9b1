/**
 * Where the time of one request goes: the lock cycle through LockClient against an in-process
 * daemon (bench/daemon-host.ts, its own process) whose parts are timed. Each request carries its
 * send time in a header; the daemon notes when its handler ran, when it queued for a transaction,
 * when that transaction started and committed, when the reply was handed to NATS; the client notes
 * when the reply arrived and when LockClient returned. Optionally the daemon runs under
 * `--cpu-prof`, and the profile is summarised by area.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { NatsConnection, RequestOptions } from 'nats';
import { LockClient } from '../../client/index';
import type { Bench, Store } from '../lib/context';
import { closedLoop } from '../lib/load';
import { register, sleep } from '../lib/procs';
import { mean, quantileSorted, round } from '../lib/stats';
import { formatProfile, summarizeProfile, type ProfileSummary } from '../profile';
import type { TxRec } from '../daemon-host';
import { MULTI_NAMES } from './cycle';
import { workerName } from './sizes';

const hr = () => Number(process.hrtime.bigint()) / 1e3;

export const SEGMENTS = [
  ['natsIn', 'client send -> daemon handler (client encode, NATS, services framework)'],
  ['decode', 'decode + validate (JSON.parse, validateRequest)'],
  ['batchWait', 'wait for the batch (setImmediate + the transaction before)'],
  ['ownOp', "transaction: this request's own statements"],
  ['restOfTx', "transaction: BEGIN, token, outbox, COMMIT and batch-mates' statements"],
  ['toRespond', 'commit -> reply handed to NATS (promise hops, encode JSON)'],
  ['respond', 'msg.respond() call'],
  ['natsOut', 'reply -> client (NATS, client parse)'],
  ['clientDone', 'client: reply -> LockClient returns (JSON.parse, result objects)'],
] as const;
type Segment = (typeof SEGMENTS)[number][0];

export interface EndpointBreakdown {
  requests: number;
  meanUs: Record<Segment | 'total', number>;
  p50Us: Record<Segment | 'total', number>;
}

export interface Breakdown {
  kind: BreakdownKind;
  store: Store;
  inFlight: number;
  /** Operations (cycles, or 100-name requests) per second, and their latency. */
  opsPerSec: number;
  opP50Ms: number;
  opP99Ms: number;
  /** The daemon's diagnostic channels the breakdown listened to. */
  hooks: string[];
  endpoints: Record<string, EndpointBreakdown>;
  transactions: {
    count: number;
    perSec: number;
    meanSize: number;
    meanMs: number;
    /** Mean microseconds per transaction by statement class. */
    stmtUsPerTx: Record<string, number>;
    stmtCountPerTx: Record<string, number>;
    requestTxs: number;
    backgroundTxs: number;
  };
  relay: { calls: number; events: number; msPerCall: number };
  /** Socket writes to NATS per request handled (replies and event publishes share them). */
  natsWritesPerRequest: number;
  natsBytesPerWrite: number;
  /** Statements outside the batcher (PostgreSQL relay connection), total ms. */
  outsideMs: Record<string, number>;
  eventLoopUtilization: number;
  gcMs: number;
  cpu: Record<string, number>;
  profile?: ProfileSummary;
}

function send(child: ChildProcess, msg: unknown) {
  child.send(msg as never);
}

function nextMessage(child: ChildProcess, type: string, timeoutMs = 60_000): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`daemon host: no ${type} within ${timeoutMs / 1000}s`)), timeoutMs);
    const onMsg = (m: Record<string, unknown>) => {
      if (m.type === 'error') {
        cleanup();
        reject(new Error(`daemon host: ${m.message}`));
      } else if (m.type === type) {
        cleanup();
        resolve(m);
      }
    };
    const onExit = (code: number | null) => {
      cleanup();
      reject(new Error(`daemon host exited with ${code}`));
    };
    const cleanup = () => {
      clearTimeout(timer);
      child.off('message', onMsg);
      child.off('exit', onExit);
    };
    child.on('message', onMsg);
    child.on('exit', onExit);
  });
}

export type BreakdownKind = 'cycle' | 'multi';

/**
 * `cycle`: setLock(name) + unlock(name) per worker, like the lock-cycle scenario.
 * `multi`: setLock of 100 fresh names per request, like the multi-lock scenario.
 */
export async function breakdown(
  bench: Bench,
  store: Store,
  inFlight: number,
  opts: { profile?: boolean; kind?: BreakdownKind } = {},
): Promise<Breakdown> {
  const kind = opts.kind ?? 'cycle';
  const a = bench.args;
  const db = await bench.freshDatabase(store);
  const prefix = bench.nextPrefix('b');
  const profileFile = opts.profile ? join(bench.tmp, `${prefix}.cpuprofile`) : undefined;
  const child = register(fork(join(__dirname, '..', 'daemon-host.js'), [], { stdio: ['ignore', 'pipe', 'pipe', 'ipc'] }));
  let output = '';
  child.stdout!.on('data', (d) => (output = (output + d).slice(-10_000)));
  child.stderr!.on('data', (d) => (output = (output + d).slice(-10_000)));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  let client: LockClient | undefined;
  try {
    const ready = nextMessage(child, 'ready');
    send(child, {
      cmd: 'start',
      profile: profileFile,
      config: { natsUrl: bench.nats.url, db: db.url, prefix, eventsStream: `EV_${prefix}`, logLevel: 'warn' },
    });
    await ready.catch((err) => {
      throw new Error(`${(err as Error).message}\n${output}`);
    });
    client = await LockClient.connect({ servers: bench.nats.url, prefix, timeout: 30_000 });

    // Stamp every request with an id and its send time; note when its reply arrives.
    const nc = client.nc as NatsConnection & { request: NatsConnection['request'] };
    const request = nc.request.bind(nc);
    let seq = 0;
    const received = new Map<number, number>();
    nc.request = (subject: string, data?: Uint8Array, o?: RequestOptions) => {
      const id = ++seq;
      o?.headers?.set('Bench-Id', String(id));
      o?.headers?.set('Bench-T0', String(hr()));
      return request(subject, data, o).then((m) => {
        received.set(id, hr());
        return m;
      });
    };
    const done = new Map<number, number>();

    const watch = {
      daemon: () => [child.pid!],
      ...(bench.nats.pid ? { 'nats-server': () => [bench.nats.pid!] } : {}),
      ...(db.pg ? { postgres: () => db.pg!.backendPids() } : {}),
    };
    const onWindow = (on: boolean) => send(child, { cmd: 'window', on });
    const r = await closedLoop({ workers: inFlight, warmupMs: a.warmupMs, durationMs: a.durationMs, watch, onWindow }, async (w, i) => {
      if (kind === 'multi') {
        const id = seq + 1;
        await client!.setLock(Array.from({ length: MULTI_NAMES }, (_, j) => `m.w${w}.${i}.${j}`));
        done.set(id, hr());
        return;
      }
      const name = workerName(w);
      const setId = seq + 1;
      await client!.setLock(name);
      done.set(setId, hr());
      const unlockId = seq + 1;
      await client!.unlock(name);
      done.set(unlockId, hr());
    });
    const closed = nextMessage(child, 'window-closed');
    send(child, { cmd: 'window', on: false });
    await closed;
    const reportP = nextMessage(child, 'report');
    send(child, { cmd: 'report' });
    const rep = await reportP;

    const rows = rep.rows as (number | string | null)[][];
    const bySeg: Record<string, Record<string, number[]>> = {};
    for (const row of rows) {
      const [id, endpoint, t0, tH, tEnq, tTx0, tOp0, tOp1, tTx1, tR0, tR1] = row.map((v) => (v === null ? NaN : v)) as [
        number,
        string,
        number,
        number,
        number,
        number,
        number,
        number,
        number,
        number,
        number,
      ];
      const tRecv = received.get(id);
      const tDone = done.get(id);
      if (tRecv === undefined || tDone === undefined || !Number.isFinite(tTx0)) continue;
      const seg: Record<Segment | 'total', number> = {
        natsIn: tH - t0,
        decode: tEnq - tH,
        batchWait: tTx0 - tEnq,
        ownOp: tOp1 - tOp0,
        restOfTx: tTx1 - tTx0 - (tOp1 - tOp0),
        toRespond: tR0 - tTx1,
        respond: tR1 - tR0,
        natsOut: tRecv - tR1,
        clientDone: tDone - tRecv,
        total: tDone - t0,
      };
      const e = (bySeg[endpoint] ??= {});
      for (const [k, v] of Object.entries(seg)) (e[k] ??= []).push(v);
    }
    const endpoints: Record<string, EndpointBreakdown> = {};
    for (const [endpoint, segs] of Object.entries(bySeg)) {
      const meanUs = {} as Record<Segment | 'total', number>;
      const p50Us = {} as Record<Segment | 'total', number>;
      for (const [k, v] of Object.entries(segs)) {
        meanUs[k as Segment] = round(mean(v));
        p50Us[k as Segment] = round(quantileSorted(Float64Array.from(v).sort(), 0.5));
      }
      endpoints[endpoint] = { requests: segs.total!.length, meanUs, p50Us };
    }

    const txs = rep.txs as TxRec[];
    const requestTxs = txs.filter((t) => t.requestOps > 0);
    const stmtUs: Record<string, number> = {};
    const stmtCount: Record<string, number> = {};
    for (const t of requestTxs) {
      for (const [k, v] of Object.entries(t.stmtUs)) stmtUs[k] = (stmtUs[k] ?? 0) + v;
      for (const [k, v] of Object.entries(t.stmtCount)) stmtCount[k] = (stmtCount[k] ?? 0) + v;
    }
    const n = requestTxs.length || 1;
    for (const k of Object.keys(stmtUs)) {
      stmtUs[k] = round(stmtUs[k]! / n);
      stmtCount[k] = round(stmtCount[k]! / n);
    }
    const relay = rep.relay as { calls: number; events: number; us: number };
    const outside = rep.outside as Record<string, number>;
    const elu = rep.elu as { utilization: number };
    const result: Breakdown = {
      kind,
      store,
      inFlight,
      opsPerSec: round(r.opsPerSec),
      opP50Ms: round(r.latency.p50Ms),
      opP99Ms: round(r.latency.p99Ms),
      hooks: rep.hooks as string[],
      endpoints,
      transactions: {
        count: txs.length,
        perSec: round(txs.length / (a.durationMs / 1000)),
        meanSize: round(mean(requestTxs.map((t) => t.size))),
        meanMs: round(mean(requestTxs.map((t) => (t.end - t.start) / 1000))),
        stmtUsPerTx: stmtUs,
        stmtCountPerTx: stmtCount,
        requestTxs: requestTxs.length,
        backgroundTxs: txs.length - requestTxs.length,
      },
      relay: { calls: relay.calls, events: relay.events, msPerCall: round(relay.us / 1000 / (relay.calls || 1)) },
      natsWritesPerRequest: round((rep.natsWrites as { count: number }).count / (rows.length || 1)),
      natsBytesPerWrite: round((rep.natsWrites as { bytes: number }).bytes / ((rep.natsWrites as { count: number }).count || 1)),
      outsideMs: Object.fromEntries(Object.entries(outside).map(([k, v]) => [k, round(v / 1000)])),
      eventLoopUtilization: round(elu.utilization),
      gcMs: round(rep.gcMs as number),
      cpu: Object.fromEntries(Object.entries(r.cpu.perOpUs).map(([k, v]) => [k, round(v)])),
    };

    await client.close();
    client = undefined;
    send(child, { cmd: 'stop' });
    await Promise.race([exited, sleep(20_000)]);
    if (profileFile) {
      if (existsSync(profileFile)) result.profile = summarizeProfile(profileFile, 30);
      else bench.note('the daemon host wrote no CPU profile');
    }
    return result;
  } finally {
    await client?.close().catch(() => undefined);
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
    await bench.deleteStream(`EV_${prefix}`);
    await db.drop().catch(() => undefined);
  }
}

export function formatBreakdown(b: Breakdown): string {
  const lines: string[] = [];
  const what = b.kind === 'multi' ? `setLock of ${MULTI_NAMES} names` : 'lock cycle';
  const unit = b.kind === 'multi' ? 'requests/s' : 'cycles/s';
  lines.push(`${what}, ${b.store}, ${b.inFlight} in flight: ${b.opsPerSec} ${unit}, p50 ${b.opP50Ms} ms, p99 ${b.opP99Ms} ms`);
  const eps = Object.keys(b.endpoints);
  lines.push(`  ${'mean µs per request'.padEnd(78)}${eps.map((e) => e.padStart(10)).join('')}`);
  for (const [k, label] of SEGMENTS)
    lines.push(`  ${label.padEnd(78)}${eps.map((e) => String(b.endpoints[e]!.meanUs[k]).padStart(10)).join('')}`);
  lines.push(
    `  ${'total (client send -> LockClient returns)'.padEnd(78)}${eps.map((e) => String(b.endpoints[e]!.meanUs.total).padStart(10)).join('')}`,
  );
  const t = b.transactions;
  lines.push(
    `  transactions: ${t.perSec}/s (${t.requestTxs} with requests, ${t.backgroundTxs} relay/sweeper only), ${t.meanSize} operations each, ${t.meanMs} ms each`,
  );
  lines.push(
    `  per request transaction, mean µs by statement: ${Object.entries(t.stmtUsPerTx)
      .map(([k, v]) => `${k} ${v} (x${t.stmtCountPerTx[k]})`)
      .join(', ')}`,
  );
  lines.push(
    `  event relay: ${b.relay.calls} publish calls for ${b.relay.events} events, ${b.relay.msPerCall} ms each (until acknowledged)`,
  );
  lines.push(
    `  socket writes to NATS: ${b.natsWritesPerRequest} per request, ${b.natsBytesPerWrite} bytes each (${round(b.natsWritesPerRequest * b.natsBytesPerWrite)} bytes per request)`,
  );
  if (Object.keys(b.outsideMs).length) lines.push(`  statements outside the batcher (total ms): ${JSON.stringify(b.outsideMs)}`);
  lines.push(
    `  daemon event loop utilisation ${b.eventLoopUtilization}, GC ${b.gcMs} ms; CPU µs per ${b.kind === 'multi' ? 'request' : 'cycle'}: ${JSON.stringify(b.cpu)}`,
  );
  if (b.profile) lines.push(formatProfile(b.profile).replace(/^/gm, '  '));
  return lines.join('\n');
}
