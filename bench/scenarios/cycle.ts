/**
 * Lock cycle: `setLock(name)` then `unlock(name)` through LockClient, each worker on its own name,
 * against a daemon process on a fresh database. Also the single-name vs 100-name `setLock`
 * comparison (multi-lock), which grants fresh names and never releases them.
 */
import type { Bench, DaemonHandle, Store } from '../lib/context';
import { closedLoop, type RunResult } from '../lib/load';
import { processMemoryMb } from '../lib/procs';
import { SQLITE_SYNCHRONOUS } from './floors';
import { workerName } from './sizes';

export const CYCLE_IN_FLIGHT = [1, 64];

/** Run the cycle load on a started daemon; throws if a cycle did not create and release its lock. */
export async function cycleLoad(bench: Bench, d: DaemonHandle, inFlight: number, durationMs = bench.args.durationMs): Promise<RunResult> {
  let anomalies = 0;
  const r = await closedLoop({ workers: inFlight, warmupMs: bench.args.warmupMs, durationMs, watch: d.watch }, async (w) => {
    const name = workerName(w);
    const res = await d.client.setLock(name);
    if (res.counts.created !== 1) anomalies += 1;
    if (!(await d.client.unlock(name))) anomalies += 1;
  });
  if (anomalies > 0) bench.note(`lock cycle on ${d.store}: ${anomalies} cycles did not create and release their lock`);
  return r;
}

export async function lockCycle(bench: Bench, store: Store, inFlight: number, rep: number): Promise<void> {
  await bench.withDaemon(store, {}, async (d) => {
    const r = await cycleLoad(bench, d, inFlight);
    const mem = processMemoryMb(d.proc.pid);
    bench.record({
      extra: { rssMb: mem.rssMb, rssPeakMb: mem.peakMb },
      key: `cycle.${store}.${inFlight}`,
      label: `lock cycle (setLock+unlock), ${store}, ${inFlight} in flight`,
      group: 'cycle',
      store,
      inFlight,
      unit: 'cycles/s',
      rep,
      ...bench.fromRun(r),
    });
  });
}

const otherSync = SQLITE_SYNCHRONOUS === 'FULL' ? 'NORMAL' : 'FULL';

/** Variants that show what a daemon setting costs (not targets): run once. */
export const DIAGNOSTICS: { key: string; label: string; store: Store; inFlight: number; args: string[]; kind?: 'cycle' | 'multi' }[] = [
  {
    key: 'diag.sqlite.1.core-events',
    label: 'diag: lock cycle, sqlite, 1 in flight, --events-jetstream off',
    store: 'sqlite',
    inFlight: 1,
    args: ['--events-jetstream', 'off'],
  },
  {
    key: 'diag.sqlite.64.core-events',
    label: 'diag: lock cycle, sqlite, 64 in flight, --events-jetstream off',
    store: 'sqlite',
    inFlight: 64,
    args: ['--events-jetstream', 'off'],
  },
  {
    key: `diag.sqlite.1.sync-${otherSync.toLowerCase()}`,
    label: `diag: lock cycle, sqlite, 1 in flight, --sqlite-synchronous ${otherSync}`,
    store: 'sqlite',
    inFlight: 1,
    args: ['--sqlite-synchronous', otherSync],
  },
  {
    key: `diag.sqlite.64.sync-${otherSync.toLowerCase()}`,
    label: `diag: lock cycle, sqlite, 64 in flight, --sqlite-synchronous ${otherSync}`,
    store: 'sqlite',
    inFlight: 64,
    args: ['--sqlite-synchronous', otherSync],
  },
  {
    key: 'diag.multi.sqlite.core-events',
    label: 'diag: multi-lock (100 names), sqlite, 8 in flight, --events-jetstream off',
    store: 'sqlite',
    inFlight: 8,
    args: ['--events-jetstream', 'off'],
    kind: 'multi',
  },
  {
    key: 'diag.postgres.64.pool16',
    label: 'diag: lock cycle, postgres, 64 in flight, --db-pool-size 16',
    store: 'postgres',
    inFlight: 64,
    args: ['--db-pool-size', '16'],
  },
];

export async function diagnostic(bench: Bench, spec: (typeof DIAGNOSTICS)[number]): Promise<void> {
  await bench.withDaemon(spec.store, { args: spec.args }, async (d) => {
    if (spec.kind === 'multi') {
      const r = await multiLoad(bench, d, spec.inFlight);
      bench.record({
        key: spec.key,
        label: spec.label,
        group: 'diag',
        store: spec.store,
        inFlight: spec.inFlight,
        unit: 'req/s',
        locksPerSec: r.opsPerSec * MULTI_NAMES,
        ...bench.fromRun(r),
      });
      return;
    }
    const r = await cycleLoad(bench, d, spec.inFlight);
    bench.record({
      key: spec.key,
      label: spec.label,
      group: 'diag',
      store: spec.store,
      inFlight: spec.inFlight,
      unit: 'cycles/s',
      ...bench.fromRun(r),
    });
  });
}

export const MULTI_NAMES = 100;
export const MULTI_IN_FLIGHT = 8;
export const SINGLE_IN_FLIGHT = 64;

/** setLock of MULTI_NAMES fresh names per request. */
export async function multiLoad(bench: Bench, d: DaemonHandle, inFlight: number): Promise<RunResult> {
  let short = 0;
  const r = await closedLoop(
    { workers: inFlight, warmupMs: bench.args.warmupMs, durationMs: bench.args.durationMs, watch: d.watch },
    async (w, i) => {
      const names = Array.from({ length: MULTI_NAMES }, (_, j) => `m.w${w}.${i}.${j}`);
      const res = await d.client.setLock(names);
      if (res.counts.created !== MULTI_NAMES) short += 1;
    },
  );
  if (short) bench.note(`multi-lock on ${d.store}: ${short} requests created fewer than ${MULTI_NAMES} locks`);
  return r;
}

export async function multiLock(bench: Bench, store: Store, rep: number): Promise<void> {
  const a = bench.args;
  await bench.withDaemon(store, {}, async (d) => {
    const r = await multiLoad(bench, d, MULTI_IN_FLIGHT);
    bench.record({
      key: `multi.${store}`,
      label: `multi-lock: setLock of ${MULTI_NAMES} fresh names, ${store}, ${MULTI_IN_FLIGHT} in flight`,
      group: 'multi',
      store,
      inFlight: MULTI_IN_FLIGHT,
      unit: 'req/s',
      locksPerSec: r.opsPerSec * MULTI_NAMES,
      rep,
      ...bench.fromRun(r),
    });
  });
  await bench.withDaemon(store, {}, async (d) => {
    const r = await closedLoop(
      { workers: SINGLE_IN_FLIGHT, warmupMs: a.warmupMs, durationMs: a.durationMs, watch: d.watch },
      async (w, i) => {
        await d.client.setLock(`s.w${w}.${i}`);
      },
    );
    bench.record({
      key: `single.${store}`,
      label: `multi-lock baseline: setLock of 1 fresh name, ${store}, ${SINGLE_IN_FLIGHT} in flight`,
      group: 'multi',
      store,
      inFlight: SINGLE_IN_FLIGHT,
      unit: 'req/s',
      locksPerSec: r.opsPerSec,
      rep,
      ...bench.fromRun(r),
    });
  });
}
