/**
 * Summarise a V8 CPU profile (node --cpu-prof) of the daemon: self time by area (NATS client,
 * SQL drivers, daemon code, JSON, GC...) and the top functions. Only the main thread is sampled:
 * SQLite's statements run on libuv's thread pool and PostgreSQL's in the server, so they show up
 * here only as the JavaScript that sends them and handles their results.
 *
 *   node dist/bench/profile.js <file.cpuprofile> [top N]
 */
import { readFileSync } from 'node:fs';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  hitCount?: number;
  children?: number[];
}
interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileSummary {
  totalMs: number;
  idleMs: number;
  busyMs: number;
  areas: { area: string; ms: number; pctOfBusy: number }[];
  top: { fn: string; where: string; area: string; ms: number; pctOfBusy: number; callers: string[] }[];
}

/** Which part of the stack a function belongs to, from its script URL. */
export function areaOf(frame: CallFrame): string {
  const { url, functionName } = frame;
  if (functionName === '(idle)') return 'idle';
  if (functionName === '(garbage collector)') return 'garbage collection';
  if (functionName === '(program)') return 'V8/native (program)';
  if (functionName === '(root)') return 'root';
  // The compiled tree is dist/, or the bench run's snapshot of it (.bench-dist-<pid>/).
  const u = url.replace(/^file:\/\//, '').replace(/\/\.bench-dist-\d+\//, '/dist/');
  if (/\/node_modules\/nats\//.test(u)) return 'NATS client (nats.js)';
  if (/\/node_modules\/sqlite3\//.test(u)) return 'SQLite driver (JS side)';
  if (/\/node_modules\/(pg|pg-protocol|pg-pool|pg-types|pgpass|postgres-[a-z]+)\//.test(u)) return 'PostgreSQL driver (pg)';
  if (/\/node_modules\/sequelize\//.test(u)) return 'Sequelize';
  if (/\/node_modules\/(winston|logform|triple-beam|readable-stream|@colors|colors)/.test(u)) return 'logging (winston)';
  if (/\/node_modules\//.test(u)) return 'other npm packages';
  if (/\/dist\/daemon\/batcher/.test(u)) return 'daemon: batcher/transaction';
  if (/\/dist\/daemon\/(lock-ops|lock-records)/.test(u)) return 'daemon: lock operations';
  if (/\/dist\/daemon\/store\//.test(u)) return 'daemon: database layer';
  if (/\/dist\/daemon\/relay\//.test(u)) return 'daemon: event relay';
  if (/\/dist\/daemon\/(lock-service|handlers)/.test(u)) return 'daemon: request handling';
  if (/\/dist\/daemon\//.test(u)) return 'daemon: other';
  if (/\/dist\/shared\//.test(u)) return 'protocol: decode/validate';
  if (/\/dist\/bench\//.test(u)) return 'bench instrumentation';
  if (/^node:internal\/(timers|process\/task_queues)/.test(u)) return 'node: timers/microtasks';
  if (/^node:(internal\/)?(net|stream|internal\/streams|internal\/stream_base_commons|dgram|tls)/.test(u)) return 'node: sockets/streams';
  if (/^node:/.test(u)) return 'node: other core';
  if (u === '') {
    if (/^(parse|stringify|JSON)/.test(functionName)) return 'JSON (native)';
    return 'V8 builtins/native';
  }
  return 'other';
}

export function summarizeProfile(file: string, topN = 25): ProfileSummary {
  const p = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parentOf = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parentOf.set(c, n.id);
  const selfUs = new Map<number, number>();
  // timeDeltas[i] is the time between sample i-1 and sample i: charge it to sample i-1's node.
  for (let i = 1; i < p.samples.length; i++) {
    const id = p.samples[i - 1]!;
    selfUs.set(id, (selfUs.get(id) ?? 0) + Math.max(0, p.timeDeltas[i]!));
  }
  const areas = new Map<string, number>();
  const fns = new Map<string, { fn: string; where: string; area: string; us: number; callers: Map<string, number> }>();
  const frameName = (id: number | undefined) => {
    const f = id === undefined ? undefined : byId.get(id)?.callFrame;
    if (!f) return '(none)';
    const where = f.url
      ? ` ${f.url
          .replace(/\/\.bench-dist-\d+\//, '/dist/')
          .replace(/^.*\/(node_modules|dist)\//, '$1/')
          .replace(/^node:/, 'node:')}:${f.lineNumber + 1}`
      : '';
    return `${f.functionName || '(anonymous)'}${where}`;
  };
  let idle = 0;
  let total = 0;
  for (const [id, us] of selfUs) {
    const node = byId.get(id)!;
    const area = areaOf(node.callFrame);
    total += us;
    if (area === 'idle') {
      idle += us;
      continue;
    }
    areas.set(area, (areas.get(area) ?? 0) + us);
    const where = node.callFrame.url
      ? `${node.callFrame.url.replace(/\/\.bench-dist-\d+\//, '/dist/').replace(/^.*\/(node_modules|dist)\//, '$1/')}:${node.callFrame.lineNumber + 1}`
      : '';
    const key = `${node.callFrame.functionName}@${where}`;
    const f = fns.get(key) ?? { fn: node.callFrame.functionName || '(anonymous)', where, area, us: 0, callers: new Map<string, number>() };
    f.us += us;
    // Up to three frames of who called it, nearest first.
    const chain: string[] = [];
    for (let up = parentOf.get(id); up !== undefined && chain.length < 3; up = parentOf.get(up)) {
      const name = frameName(up);
      if (name.startsWith('(root)')) break;
      chain.push(name);
    }
    const caller = chain.length ? chain.join(' < ') : '(root)';
    f.callers.set(caller, (f.callers.get(caller) ?? 0) + us);
    fns.set(key, f);
  }
  const busy = total - idle;
  const pct = (us: number) => Math.round((us / busy) * 1000) / 10;
  return {
    totalMs: total / 1000,
    idleMs: idle / 1000,
    busyMs: busy / 1000,
    areas: [...areas].sort((a, b) => b[1] - a[1]).map(([area, us]) => ({ area, ms: Math.round(us / 100) / 10, pctOfBusy: pct(us) })),
    top: [...fns.values()]
      .sort((a, b) => b.us - a.us)
      .slice(0, topN)
      .map((f) => ({
        fn: f.fn,
        where: f.where,
        area: f.area,
        ms: Math.round(f.us / 100) / 10,
        pctOfBusy: pct(f.us),
        callers: [...f.callers]
          .sort((a, b) => b[1] - a[1])
          .slice(0, 3)
          .map(([c, us]) => `${c} (${Math.round((us / f.us) * 100)}%)`),
      })),
  };
}

export function formatProfile(s: ProfileSummary): string {
  const lines: string[] = [];
  lines.push(
    `main thread: ${Math.round(s.totalMs)} ms sampled, ${Math.round(s.busyMs)} ms busy (${Math.round((s.busyMs / s.totalMs) * 100)}%), ${Math.round(s.idleMs)} ms idle`,
  );
  lines.push('self time by area (% of busy):');
  for (const a of s.areas) lines.push(`  ${a.pctOfBusy.toFixed(1).padStart(5)}%  ${String(a.ms).padStart(8)} ms  ${a.area}`);
  lines.push('top functions by self time:');
  for (const f of s.top) {
    lines.push(`  ${f.pctOfBusy.toFixed(1).padStart(5)}%  ${String(f.ms).padStart(8)} ms  ${f.fn}  ${f.where}  [${f.area}]`);
    if (f.pctOfBusy >= 2 && f.callers) lines.push(`                          called from: ${f.callers.join('; ')}`);
  }
  return lines.join('\n');
}

if (require.main === module) {
  const [file, n] = process.argv.slice(2);
  if (!file) {
    process.stderr.write('usage: node dist/bench/profile.js <file.cpuprofile> [top N]\n');
    process.exit(2);
  }
  process.stdout.write(`${formatProfile(summarizeProfile(file, n ? Number(n) : 25))}\n`);
}
