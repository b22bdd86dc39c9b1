/**
 * Closed-loop load: N workers, each starting its next operation when the previous one ends, so
 * N is the number of requests in flight. Throughput counts operations that end inside the
 * measured window (after the warm-up); latencies are those operations' times.
 * CPU used by each watched process over the same window comes from /proc.
 */
import { performance } from 'node:perf_hooks';
import { Samples, type LatencySummary } from './stats';
import { loadAverage, machineCpuSeconds, processCpuSeconds, sleep } from './procs';

/** Processes to account CPU for: name -> pids (resolved when the window opens). */
export type Watch = Record<string, () => number[] | Promise<number[]>>;

export interface CpuReport {
  /** CPU time per operation, microseconds, by watched process (and `bench`, this process). */
  perOpUs: Record<string, number>;
  /** Share of one core used over the window, percent, by watched process. */
  pct: Record<string, number>;
  /** Whole machine busy over the window, percent of all cores. */
  machineBusyPct: number;
  /** CPU charged to processes outside this bench (other work on the machine), percent of one core. */
  othersPct: number;
  /** Interrupt time (mostly loopback networking, charged to no process), percent of one core. */
  irqPct: number;
  /** Time the hypervisor ran other guests instead of this one, percent of one core. */
  stealPct: number;
}

export interface RunResult {
  ops: number;
  errors: number;
  firstError?: string;
  seconds: number;
  opsPerSec: number;
  latency: LatencySummary;
  cpu: CpuReport;
  loadavg: number[];
}

export interface LoadOptions {
  workers: number;
  warmupMs: number;
  durationMs: number;
  watch?: Watch;
  /** Called when the measured window opens and when it closes. */
  onWindow?: (open: boolean) => void;
}

interface Snapshot {
  at: number;
  procs: Record<string, number>;
  bench: number;
  machine: ReturnType<typeof machineCpuSeconds>;
}

async function snapshot(watch: Watch, pids?: Record<string, number[]>): Promise<{ snap: Snapshot; pids: Record<string, number[]> }> {
  const resolved: Record<string, number[]> = pids ?? {};
  if (!pids) for (const [name, f] of Object.entries(watch)) resolved[name] = await f();
  const procs: Record<string, number> = {};
  for (const [name, list] of Object.entries(resolved)) {
    procs[name] = list.reduce((sum, pid) => sum + (processCpuSeconds(pid) || 0), 0);
  }
  const u = process.cpuUsage();
  return { snap: { at: performance.now(), procs, bench: (u.user + u.system) / 1e6, machine: machineCpuSeconds() }, pids: resolved };
}

function cpuReport(a: Snapshot, b: Snapshot, ops: number): CpuReport {
  const wall = (b.at - a.at) / 1000;
  const perOpUs: Record<string, number> = {};
  const pct: Record<string, number> = {};
  let ours = 0;
  const add = (name: string, seconds: number) => {
    ours += seconds;
    perOpUs[name] = ops > 0 ? (seconds / ops) * 1e6 : NaN;
    pct[name] = (seconds / wall) * 100;
  };
  for (const name of Object.keys(b.procs)) add(name, b.procs[name]! - (a.procs[name] ?? 0));
  add('bench', b.bench - a.bench);
  const busy = b.machine.busy - a.machine.busy;
  const total = b.machine.total - a.machine.total;
  const procs = b.machine.procs - a.machine.procs;
  return {
    perOpUs,
    pct,
    machineBusyPct: total > 0 ? (busy / total) * 100 : NaN,
    othersPct: Math.max(0, ((procs - ours) / wall) * 100),
    irqPct: ((b.machine.irq - a.machine.irq) / wall) * 100,
    stealPct: ((b.machine.steal - a.machine.steal) / wall) * 100,
  };
}

/**
 * Waiting for a quiet machine before each measured window (--settle): the machine is shared, and
 * work of others skews the figures. Off by default.
 */
export const settling = { maxWaitMs: 0, maxBusyPct: 25, waitedMs: 0, gaveUp: 0 };

/** Wait until the machine's CPU (all processes) is below `maxBusyPct` of one core over 0.5 s, or the wait runs out. */
export async function settle(): Promise<void> {
  if (settling.maxWaitMs <= 0) return;
  const started = Date.now();
  for (;;) {
    const a = machineCpuSeconds();
    await sleep(500);
    const b = machineCpuSeconds();
    const busyPct = ((b.busy - a.busy) / 0.5) * 100;
    if (busyPct <= settling.maxBusyPct) break;
    if (Date.now() - started >= settling.maxWaitMs) {
      settling.gaveUp += 1;
      break;
    }
  }
  settling.waitedMs += Date.now() - started;
}

export async function closedLoop(opts: LoadOptions, op: (worker: number, i: number) => Promise<void>): Promise<RunResult> {
  await settle();
  const watch = opts.watch ?? {};
  const t0 = performance.now(); // after settling: the warm-up starts now
  const measureStart = t0 + opts.warmupMs;
  const measureEnd = measureStart + opts.durationMs;
  const lat = new Samples();
  let ops = 0;
  let errors = 0;
  let firstError: string | undefined;

  // CPU snapshots when the window opens and closes, taken by the first worker to cross each
  // boundary (timers alone would not fire while a tight loop of fast operations runs).
  let first: Promise<{ snap: Snapshot; pids: Record<string, number[]> }> | undefined;
  let last: Promise<{ snap: Snapshot; pids: Record<string, number[]> }> | undefined;
  const open = () => {
    if (!first) opts.onWindow?.(true);
    return (first ??= snapshot(watch));
  };
  const close = () => {
    if (!last) opts.onWindow?.(false);
    return (last ??= open().then((f) => snapshot(watch, f.pids)));
  };
  const startTimer = setTimeout(() => void open(), opts.warmupMs);
  const endTimer = setTimeout(() => void close(), opts.warmupMs + opts.durationMs);

  const worker = async (w: number) => {
    for (let i = 0; ; i++) {
      const s = performance.now();
      // The window's CPU snapshots are awaited below, after the workers.
      if (s >= measureStart) void open();
      if (s >= measureEnd) {
        void close();
        return;
      }
      try {
        await op(w, i);
        const e = performance.now();
        if (e >= measureStart && e <= measureEnd) {
          ops += 1;
          lat.push(e - s);
        }
      } catch (err) {
        errors += 1;
        firstError ??= (err as Error).message ?? String(err);
        if (errors > 10_000) throw new Error(`too many errors (first: ${firstError})`, { cause: err });
        await sleep(errors > 100 ? 10 : 0);
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: opts.workers }, (_, w) => worker(w)));
  } finally {
    clearTimeout(startTimer);
    clearTimeout(endTimer);
  }
  const a = (await open()).snap;
  const b = (await close()).snap;
  const seconds = opts.durationMs / 1000;
  return {
    ops,
    errors,
    firstError,
    seconds,
    opsPerSec: ops / seconds,
    latency: lat.summary(),
    cpu: cpuReport(a, b, ops),
    loadavg: loadAverage(),
  };
}

/**
 * Load that runs until stopped (for windows decided on the fly, e.g. while the sweeper works):
 * every operation's end time and latency are kept.
 */
export function backgroundLoad(workers: number, op: (worker: number, i: number) => Promise<void>) {
  let stopping = false;
  const ends: number[] = [];
  const lats: number[] = [];
  let errors = 0;
  let firstError: string | undefined;
  const worker = async (w: number) => {
    for (let i = 0; !stopping; i++) {
      const s = performance.now();
      try {
        await op(w, i);
        const e = performance.now();
        ends.push(e);
        lats.push(e - s);
      } catch (err) {
        errors += 1;
        firstError ??= (err as Error).message;
        await sleep(10);
      }
    }
  };
  const done = Promise.all(Array.from({ length: workers }, (_, w) => worker(w)));
  return {
    async stop() {
      stopping = true;
      await done;
      return { ends, lats, errors, firstError };
    },
  };
}

/** CPU accounting over a window the caller opens and closes itself. */
export async function cpuWindow(watch: Watch): Promise<{ end(ops: number): Promise<CpuReport> }> {
  const first = await snapshot(watch);
  return {
    end: async (ops: number) => cpuReport(first.snap, (await snapshot(watch, first.pids)).snap, ops),
  };
}
