/**
 * From measurements to figures: medians over repeats, ratios to the floors of the same run, the
 * targets of docs/performance.md with met / not met, the printed tables.
 */
import { cpus } from 'node:os';
import type { Measurement } from './lib/context';
import { median, round } from './lib/stats';

export interface Figure {
  key: string;
  label: string;
  group: string;
  store?: string;
  inFlight?: number;
  unit: string;
  reps: number;
  /** Medians over the repeats. */
  opsPerSec: number;
  locksPerSec?: number;
  p50Ms: number;
  p99Ms: number;
  /** Ratio to the figure it is compared with, and which one. */
  ratio?: { value: number; metric: 'throughput' | 'p50' | 'p99'; of: string };
  /** CPU microseconds per operation by process (medians). */
  cpuUsPerOp?: Record<string, number>;
  /** CPU charged to processes outside the bench during the window, % of one core (median). */
  othersCpuPct?: number;
  /** Interrupt (mostly loopback network) and hypervisor-steal time, % of one core (medians). */
  irqPct?: number;
  stealPct?: number;
  errors: number;
  extra?: Record<string, unknown>;
}

export interface Target {
  scenario: string;
  target: string;
  measured: string;
  value: number;
  limit: number;
  met: boolean | null;
  /** For a target not met: what this run measured about why (CPU per operation, diagnostics). */
  why?: string;
  figures: string[];
}

/** The extras of one run as they are; of several, the median of each number. */
function mergeExtras(list: Measurement[]): Record<string, unknown> | undefined {
  if (list.length === 1) return list[0]!.extra;
  const keys = new Set(list.flatMap((m) => Object.keys(m.extra ?? {})));
  if (keys.size === 0) return undefined;
  const out: Record<string, unknown> = {};
  for (const k of keys) {
    const values = list.map((m) => m.extra?.[k]);
    out[k] = values.every((v) => typeof v === 'number') ? round(median(values as number[])) : values[0];
  }
  return out;
}

export function aggregate(ms: Measurement[]): Figure[] {
  const byKey = new Map<string, Measurement[]>();
  for (const m of ms) byKey.set(m.key, [...(byKey.get(m.key) ?? []), m]);
  const figs: Figure[] = [];
  for (const [key, list] of byKey) {
    const first = list[0]!;
    const cpuNames = new Set(list.flatMap((m) => Object.keys(m.cpu?.perOpUs ?? {})));
    const cpu: Record<string, number> = {};
    for (const n of cpuNames) cpu[n] = round(median(list.map((m) => m.cpu?.perOpUs[n] ?? NaN)));
    figs.push({
      key,
      label: first.label,
      group: first.group,
      store: first.store,
      inFlight: first.inFlight,
      unit: first.unit,
      reps: list.length,
      opsPerSec: median(list.map((m) => m.opsPerSec)),
      locksPerSec: first.locksPerSec === undefined ? undefined : median(list.map((m) => m.locksPerSec ?? NaN)),
      p50Ms: median(list.map((m) => m.latency.p50Ms)),
      p99Ms: median(list.map((m) => m.latency.p99Ms)),
      cpuUsPerOp: cpuNames.size ? cpu : undefined,
      othersCpuPct: list.some((m) => m.cpu) ? round(median(list.map((m) => m.cpu?.othersPct ?? NaN))) : undefined,
      irqPct: list.some((m) => m.cpu) ? round(median(list.map((m) => m.cpu?.irqPct ?? NaN))) : undefined,
      stealPct: list.some((m) => m.cpu) ? round(median(list.map((m) => m.cpu?.stealPct ?? NaN))) : undefined,
      errors: list.reduce((s, m) => s + m.errors, 0),
      extra: mergeExtras(list),
    });
  }
  const get = (k: string) => figs.find((f) => f.key === k);
  for (const f of figs) {
    let m: RegExpMatchArray | null;
    if ((m = /^(cycle|diag|peers)\.(\w+)\.(\d+)/.exec(f.key))) {
      const floor = get(`floor.cycle.${m[3]}`);
      if (floor) {
        f.ratio =
          f.inFlight === 1
            ? { value: f.p50Ms / floor.p50Ms, metric: 'p50', of: floor.key }
            : { value: f.opsPerSec / floor.opsPerSec, metric: 'throughput', of: floor.key };
      }
    } else if ((m = /^multi\.(\w+)$/.exec(f.key))) {
      const single = get(`single.${m[1]}`);
      if (single?.locksPerSec) f.ratio = { value: f.locksPerSec! / single.locksPerSec, metric: 'throughput', of: single.key };
    } else if (/^handoff\.\w+$/.test(f.key)) {
      const floor = get('floor.rtt.1');
      if (floor) f.ratio = { value: f.p50Ms / floor.p50Ms, metric: 'p50', of: floor.key };
    } else if ((m = /^scale\.(\w+)\.cycle$/.exec(f.key))) {
      const empty = get(`cycle.${m[1]}.64`);
      if (empty) f.ratio = { value: f.opsPerSec / empty.opsPerSec, metric: 'throughput', of: empty.key };
    } else if (/^scale\.\w+\.expiry$/.test(f.key)) {
      const base = f.extra?.baselineP99Ms as number | undefined;
      if (base) f.ratio = { value: f.p99Ms / base, metric: 'p99', of: 'the same load just before the expiry' };
    }
  }
  return figs;
}

export function targets(figs: Figure[]): Target[] {
  const get = (k: string) => figs.find((f) => f.key === k);
  const out: Target[] = [];
  const add = (scenario: string, target: string, value: number, limit: number, atLeast: boolean, measured: string, figures: string[]) => {
    out.push({
      scenario,
      target,
      measured,
      value: round(value),
      limit,
      met: Number.isFinite(value) ? (atLeast ? value >= limit : value <= limit) : null,
      figures,
    });
  };
  const x = (v: number) => `${round(v)}×`;
  /** Give the target just added its measured reason, if it was not met. */
  const why = (text: () => string | undefined) => {
    const t = out[out.length - 1];
    if (t && t.met === false) t.why = text();
  };
  const cores = cpus().length;
  const cpuOf = (f: Figure | undefined) => Object.entries(f?.cpuUsPerOp ?? {}).filter(([name]) => name !== 'echo');
  const cpuTotal = (f: Figure | undefined) => Object.values(f?.cpuUsPerOp ?? {}).reduce((a, b) => a + b, 0);
  const cpuList = (f: Figure | undefined) =>
    cpuOf(f)
      .map(([name, us]) => `${name === 'bench' ? 'client' : name} ${round(us)}`)
      .join(', ');
  const c64 = get('cycle.sqlite.64');
  const f64 = get('floor.cycle.64');
  if (c64 && f64) {
    add(
      'lock cycle, SQLite, 64 in flight',
      '≥ 0.7 × bare NATS cycle throughput',
      c64.opsPerSec / f64.opsPerSec,
      0.7,
      true,
      `${round(c64.opsPerSec)} vs ${round(f64.opsPerSec)} cycles/s = ${x(c64.opsPerSec / f64.opsPerSec)}`,
      [c64.key, f64.key],
    );
    why(() => {
      const core = get('diag.sqlite.64.core-events');
      const off = core
        ? `; events on core NATS (--events-jetstream off): ${x(core.opsPerSec / f64.opsPerSec)}, CPU µs per cycle ${cpuList(core)}`
        : '';
      return `CPU µs per cycle ${cpuList(c64)} (bare cycle: ${round(cpuTotal(f64))} in all)${off}`;
    });
  }
  const f1 = get('floor.cycle.1');
  /** A cycle at 1 in flight: p50 within `limit` × the bare cycle's; `more` adds to the reason. */
  const cycleAtOne = (label: string, c: Figure | undefined, limit: number, more: () => string) => {
    if (!c || !f1) return;
    add(
      `lock cycle, ${label}, 1 in flight`,
      `p50 ≤ ${limit.toFixed(1)} × bare NATS cycle p50`,
      c.p50Ms / f1.p50Ms,
      limit,
      false,
      `${round(c.p50Ms)} vs ${round(f1.p50Ms)} ms = ${x(c.p50Ms / f1.p50Ms)}`,
      [c.key, f1.key],
    );
    why(() => {
      const budget = round((limit * f1.p50Ms - f1.p50Ms) * 500);
      return `${limit.toFixed(1)}× leaves ${budget} µs per request over a bare round trip; CPU µs per cycle ${cpuList(c)} (${round(cpuTotal(c))} in all, on ${cores} cores, per ${round(c.p50Ms * 1000)} µs cycle)${more()}`;
    });
  };
  cycleAtOne('SQLite', get('cycle.sqlite.1'), 1.5, () => {
    const core = get('diag.sqlite.1.core-events');
    return core ? `; --events-jetstream off: ${x(core.p50Ms / f1!.p50Ms)}` : '';
  });
  cycleAtOne('PostgreSQL', get('cycle.postgres.1'), 2.0, () => {
    const pair = get('floor.postgres.1');
    return pair ? `; a PostgreSQL insert+delete commit pair alone: ${round(pair.p50Ms)} ms` : '';
  });
  const p64 = get('cycle.postgres.64');
  if (p64 && f64) {
    add(
      'lock cycle, PostgreSQL, 64 in flight',
      '≥ 0.5 × bare NATS cycle throughput',
      p64.opsPerSec / f64.opsPerSec,
      0.5,
      true,
      `${round(p64.opsPerSec)} vs ${round(f64.opsPerSec)} cycles/s = ${x(p64.opsPerSec / f64.opsPerSec)}`,
      [p64.key, f64.key],
    );
    why(() => {
      const total = cpuTotal(p64);
      const budget = (cores * 1e6) / (0.5 * f64.opsPerSec);
      return `CPU µs per cycle ${cpuList(p64)}: ${round(total)} in all, ${round((total * p64.opsPerSec) / 1e6)} of ${cores} cores at this rate; 0.5× would allow at most ${round(budget)} µs per cycle with every core busy`;
    });
  }
  for (const store of ['sqlite', 'postgres']) {
    const multi = get(`multi.${store}`);
    const single = get(`single.${store}`);
    if (multi?.locksPerSec && single?.locksPerSec) {
      add(
        `multi-lock, 100 names (${store})`,
        '≥ 20 × locks/s of single-name setLock',
        multi.locksPerSec / single.locksPerSec,
        20,
        true,
        `${round(multi.locksPerSec)} vs ${round(single.locksPerSec)} locks/s = ${x(multi.locksPerSec / single.locksPerSec)}`,
        [multi.key, single.key],
      );
      why(() => {
        const perLock = cpuOf(multi)
          .map(([name, us]) => `${name === 'bench' ? 'client' : name} ${round(us / 100)}`)
          .join(', ');
        return `CPU µs per lock granted ${perLock}; 20× allows ${round(cpuTotal(single) / 20)} µs per lock in all (a single-name setLock: ${round(cpuTotal(single))})`;
      });
    }
  }
  const rtt = get('floor.rtt.1');
  for (const store of ['sqlite', 'postgres']) {
    const h = get(`handoff.${store}`);
    if (h && rtt)
      add(
        `handoff (${store})`,
        'p50 ≤ 2 × one bare request/reply p50',
        h.p50Ms / rtt.p50Ms,
        2,
        false,
        `${round(h.p50Ms)} vs ${round(rtt.p50Ms)} ms = ${x(h.p50Ms / rtt.p50Ms)}`,
        [h.key, rtt.key],
      );
  }
  for (const store of ['sqlite', 'postgres']) {
    const s = get(`scale.${store}.cycle`);
    const empty = get(`cycle.${store}.64`);
    if (s) {
      const held = (s.extra?.heldLocks as number | undefined)?.toLocaleString('en-US') ?? '?';
      if (empty)
        add(
          `${held} held locks (${store})`,
          'cycle throughput ≥ 0.8 × empty table',
          s.opsPerSec / empty.opsPerSec,
          0.8,
          true,
          `${round(s.opsPerSec)} vs ${round(empty.opsPerSec)} cycles/s = ${x(s.opsPerSec / empty.opsPerSec)}`,
          [s.key, empty.key],
        );
      const rss = s.extra?.rssMb as number;
      const emptyRss = empty?.extra?.rssMb as number | undefined;
      add(
        `${held} held locks (${store})`,
        'daemon RSS ≤ 200 MB',
        rss,
        200,
        false,
        `${round(rss)} MB after the cycle load (peak ${round(s.extra?.rssPeakMb as number)} MB${emptyRss ? `; empty table: ${round(emptyRss)} MB` : ''})`,
        [s.key],
      );
    }
    const e = get(`scale.${store}.expiry`);
    if (e?.extra) {
      const ex = e.extra;
      const n = (ex.expired as number).toLocaleString('en-US');
      add(
        `${n} simultaneous expiries (${store})`,
        'cleared within 5 s',
        (ex.clearMs as number) / 1000,
        5,
        false,
        `${round((ex.clearMs as number) / 1000)} s (events relayed after ${round((ex.outboxDrainedMs as number) / 1000)} s; daemon RSS then ${round(ex.rssMb as number)} MB, peak ${round(ex.rssPeakMb as number)} MB)`,
        [e.key],
      );
      const ratio = (ex.duringP99Ms as number) / (ex.baselineP99Ms as number);
      add(
        `${n} simultaneous expiries (${store})`,
        'cycle p99 meanwhile ≤ 3 × p99 otherwise',
        ratio,
        3,
        false,
        `${round(ex.duringP99Ms as number)} vs ${round(ex.baselineP99Ms as number)} ms = ${x(ratio)}`,
        [e.key],
      );
    }
  }
  return out;
}

function pad(s: string, n: number, right = false): string {
  return right ? s.padStart(n) : s.padEnd(n);
}

export function formatFigures(figs: Figure[]): string {
  const rows = figs.map((f) => {
    const rate = f.locksPerSec !== undefined ? `${round(f.locksPerSec)} locks/s` : `${round(f.opsPerSec)} ${f.unit}`;
    const ratio = f.ratio ? `${round(f.ratio.value)}× ${f.ratio.metric} of ${f.ratio.of}` : '';
    const pct = (v?: number) => (v === undefined || !Number.isFinite(v) ? '-' : String(Math.round(v)));
    const noise = f.othersCpuPct === undefined ? '' : `${pct(f.othersCpuPct)}/${pct(f.irqPct)}/${pct(f.stealPct)}`;
    return [f.label, rate, String(round(f.p50Ms)), String(round(f.p99Ms)), ratio, noise, String(f.reps), f.errors ? String(f.errors) : ''];
  });
  const head = ['scenario', 'rate (median)', 'p50 ms', 'p99 ms', 'vs floor / reference', 'others/irq/steal %', 'reps', 'errors'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) =>
    r
      .map((c, i) => pad(c, widths[i]!, i >= 1 && i <= 3))
      .join('  ')
      .trimEnd();
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

export function formatTargets(ts: Target[]): string {
  const rows = ts.map((t) => [t.scenario, t.target, t.measured, t.met === null ? 'n/a' : t.met ? 'met' : 'NOT MET']);
  const head = ['scenario', 'target', 'measured (medians)', 'result'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) =>
    r
      .map((c, i) => pad(c, widths[i]!))
      .join('  ')
      .trimEnd();
  const reasons = ts.filter((t) => t.why).map((t) => `  ${t.scenario}: ${t.why}`);
  const why = reasons.length
    ? ['', 'measured in this run, for each target not met (reasons and remedies: docs/performance.md):', ...reasons]
    : [];
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line), ...why].join('\n');
}

export function formatCpu(figs: Figure[]): string {
  const withCpu = figs.filter((f) => f.cpuUsPerOp);
  const names = [...new Set(withCpu.flatMap((f) => Object.keys(f.cpuUsPerOp!)))];
  const head = ['scenario (CPU µs per operation)', ...names];
  const rows = withCpu.map((f) => [f.label, ...names.map((n) => (f.cpuUsPerOp![n] === undefined ? '' : String(f.cpuUsPerOp![n])))]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) =>
    r
      .map((c, i) => pad(c, widths[i]!, i > 0))
      .join('  ')
      .trimEnd();
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}
