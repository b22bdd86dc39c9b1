/**
 * `npm run bench`: every lockmgr benchmark scenario in one run on this machine, against its own
 * nats-server and fresh databases, with the floors measured in the same run. Prints a progress
 * line per scenario, then the tables; writes every figure to bench/results/latest.json.
 *
 *   npm run bench -- [--repeat 3] [--duration 5] [--warmup 1] [--only floors,cycle,...]
 *                    [--skip scale] [--no-postgres] [--all-stores] [--scale-postgres]
 *                    [--scale-locks 1000000] [--scale-expire 100000] [--out file.json]
 *                    [--pg-url postgres://postgres@127.0.0.1:5432/postgres] [--nats-url nats://...]
 *
 * Groups: floors, cycle, multi, handoff, diag, peers, scale, breakdown, micro.
 */
import { execFileSync, spawn } from 'node:child_process';
import { cpSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, hostname, release, tmpdir, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import sqlite3 from 'sqlite3';
import { OPTIONS } from '../daemon/config';
import { Bench, type Args, type Store } from './lib/context';
import { dropStaleBenchDatabases, pgSetting } from './lib/pg';
import { DIST, isAlive, killAll, loadAverage, natsConnect, ROOT, startNatsServer, type NatsServerProc } from './lib/procs';
import { settling } from './lib/load';
import { round } from './lib/stats';
import { aggregate, formatCpu, formatFigures, formatTargets, targets } from './report';
import { breakdown, formatBreakdown, type Breakdown, type BreakdownKind } from './scenarios/breakdown';
import { CYCLE_IN_FLIGHT, DIAGNOSTICS, diagnostic, lockCycle, multiLock } from './scenarios/cycle';
import { natsFloors, storageFloors } from './scenarios/floors';
import { handoff } from './scenarios/handoff';
import { batchMicro, cpuMicro, type MicroResult } from './scenarios/micro';
import { scale } from './scenarios/scale';
import { peers, type PeersInfo } from './scenarios/peers';
import { measurePayloadSizes } from './scenarios/sizes';

const USAGE = `npm run bench -- [options]
  --repeat N          runs of each repeated scenario; figures are medians (default 3)
  --duration S        measured seconds per scenario (default 5), after --warmup S (default 1)
  --only a,b / --skip a,b   groups: floors, cycle, multi, handoff, diag, peers, scale, breakdown, micro
                      (peers: the same lock cycle on PostgreSQL advisory locks, a PostgreSQL lock
                      table, and Redis if redis-server is on PATH; in the default run, once, not
                      repeated, about 40 s; --skip peers leaves it out)
  --no-postgres       SQLite only
  --all-stores        multi-lock, handoff and scale on PostgreSQL too
  --scale-postgres    the scale scenario on PostgreSQL too
  --scale-locks N     held locks to preload (default 1000000); --scale-expire N expire at once (default 100000)
  --out FILE          JSON output (default bench/results/latest.json)
  --pg-url URL        PostgreSQL admin URL (default postgres://postgres@127.0.0.1:5432/postgres, or LOCKMGR_BENCH_PG_URL)
  --nats-url URL      use this nats-server instead of starting a private one
  --settle S          before each measured window, wait up to S seconds for the machine to be
                      quiet (all CPU below 25% of one core): for shared machines; makes the run longer
`;

const GROUPS = ['floors', 'cycle', 'multi', 'handoff', 'diag', 'peers', 'scale', 'breakdown', 'micro'];

function parseArgs(argv: string[]): Args {
  const a: Args = {
    repeat: 3,
    warmupMs: 1000,
    durationMs: 5000,
    only: null,
    skip: new Set(),
    postgres: true,
    allStores: false,
    scaleStores: ['sqlite'],
    scaleLocks: 1_000_000,
    scaleExpire: 100_000,
    out: join(ROOT, 'bench', 'results', 'latest.json'),
    pgUrl: process.env.LOCKMGR_BENCH_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres',
    natsUrl: null,
    settleMs: 0,
  };
  const list = (v: string) =>
    new Set(
      v
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean),
    );
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]!;
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${flag} needs a value`);
      return v;
    };
    const num = () => {
      const n = Number(value());
      if (!Number.isFinite(n) || n <= 0) throw new Error(`${flag} needs a positive number`);
      return n;
    };
    switch (flag) {
      case '--repeat':
        a.repeat = Math.round(num());
        break;
      case '--duration':
        a.durationMs = num() * 1000;
        break;
      case '--warmup':
        a.warmupMs = num() * 1000;
        break;
      case '--only':
        a.only = list(value());
        break;
      case '--skip':
        a.skip = list(value());
        break;
      case '--no-postgres':
        a.postgres = false;
        break;
      case '--all-stores':
        a.allStores = true;
        a.scaleStores = ['sqlite', 'postgres'];
        break;
      case '--scale-postgres':
        a.scaleStores = [...new Set<Store>([...a.scaleStores, 'postgres'])];
        break;
      case '--scale-locks':
        a.scaleLocks = Math.round(num());
        break;
      case '--scale-expire':
        a.scaleExpire = Math.round(num());
        break;
      case '--out':
        a.out = resolve(value());
        break;
      case '--pg-url':
        a.pgUrl = value();
        break;
      case '--nats-url':
        a.natsUrl = value();
        break;
      case '--settle':
        a.settleMs = num() * 1000;
        break;
      case '--help':
      case '-h':
        process.stdout.write(USAGE);
        process.exit(0);
        break;
      default:
        throw new Error(`unknown option ${flag} (see the top of bench/run.ts)`);
    }
  }
  for (const g of [...(a.only ?? []), ...a.skip])
    if (!GROUPS.includes(g)) throw new Error(`unknown group ${g}; groups: ${GROUPS.join(', ')}`);
  if (!a.postgres) a.scaleStores = a.scaleStores.filter((s) => s !== 'postgres');
  return a;
}

function sh(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  } catch {
    return '';
  }
}

/** The version of an installed package, from its package.json. */
function packageVersion(name: string): string {
  return (JSON.parse(readFileSync(join(ROOT, 'node_modules', name, 'package.json'), 'utf8')) as { version: string }).version;
}

function sqliteVersions(): Record<string, string> {
  const out: Record<string, string> = { sqlite3: (sqlite3 as unknown as { VERSION: string }).VERSION };
  try {
    const db = new BetterSqlite3(':memory:');
    const { v } = db.prepare('SELECT sqlite_version() AS v').get() as { v: string };
    out['better-sqlite3'] = `${v} (better-sqlite3 ${packageVersion('better-sqlite3')})`;
    db.close();
  } catch {
    // not installed
  }
  return out;
}

async function machine(a: Args): Promise<Record<string, unknown>> {
  const natsPkg = { version: packageVersion('nats') };
  const m: Record<string, unknown> = {
    host: hostname(),
    nproc: cpus().length,
    cpuModel: cpus()[0]?.model ?? '?',
    memoryGb: round(totalmem() / 2 ** 30),
    kernel: release(),
    node: process.version,
    natsServer: sh('nats-server', ['--version']),
    natsJs: natsPkg.version,
    // The daemon's lock statements go through better-sqlite3 when it is installed (its own SQLite
    // build); migrations and the bench's preloading through sqlite3.
    sqlite: sqliteVersions(),
    tmpFilesystem: sh('df', ['-T', tmpdir()]).split('\n')[1]?.split(/\s+/)[1] ?? '?',
    gitCommit: sh('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD']),
    // Uncommitted changes to the code under test, if any: the figures are of the working tree.
    uncommittedSources: sh('git', ['-C', ROOT, 'status', '--porcelain', '--', 'daemon', 'client', 'shared', 'cli'])
      .split('\n')
      .filter(Boolean),
    loadavgAtStart: loadAverage(),
  };
  if (a.postgres) m.postgres = await pgSetting(a.pgUrl, ['synchronous_commit', 'fsync', 'shared_buffers', 'wal_sync_method']);
  return m;
}

/**
 * Other builds of the package may rewrite dist/ while the bench runs (tests build it too), so
 * the bench runs from a copy of dist/ taken when it starts, beside dist/ so that node_modules and
 * package.json resolve the same way: every daemon of the run is then the same build.
 */
const SNAPSHOT_ENV = 'LOCKMGR_BENCH_SNAPSHOT';

function runFromSnapshot(): void {
  for (const entry of readdirSync(ROOT)) {
    const pid = Number(/^\.bench-dist-(\d+)$/.exec(entry)?.[1]);
    if (pid && !isAlive(pid)) rmSync(join(ROOT, entry), { recursive: true, force: true });
  }
  const snapshot = join(ROOT, `.bench-dist-${process.pid}`);
  cpSync(DIST, snapshot, { recursive: true });
  const child = spawn(process.execPath, [join(snapshot, 'bench', 'run.js'), ...process.argv.slice(2)], {
    stdio: 'inherit',
    env: { ...process.env, [SNAPSHOT_ENV]: snapshot },
  });
  const forward = (signal: NodeJS.Signals) => child.kill(signal);
  process.on('SIGINT', forward);
  process.on('SIGTERM', forward);
  child.on('exit', (code, signal) => {
    rmSync(snapshot, { recursive: true, force: true });
    process.exit(code ?? (signal ? 130 : 1));
  });
}

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2));
  settling.maxWaitMs = a.settleMs;
  const started = Date.now();
  const stores: Store[] = a.postgres ? ['sqlite', 'postgres'] : ['sqlite'];
  const extraStores: Store[] = a.allStores && a.postgres ? ['sqlite', 'postgres'] : ['sqlite'];
  const info = await machine(a);
  process.stdout.write(
    `lockmgr bench: ${info.nproc} × ${info.cpuModel}, ${info.memoryGb} GB, node ${info.node}, ${info.natsServer}, SQLite ${Object.values(info.sqlite as object).join(' / ')}` +
      `${a.postgres ? `, PostgreSQL ${(info.postgres as Record<string, string>).version}` : ''}; load average ${loadAverage().join(' ')}\n` +
      `repeat ${a.repeat}, ${a.warmupMs / 1000} s warm-up + ${a.durationMs / 1000} s measured per scenario\n`,
  );

  let server: NatsServerProc | undefined;
  if (!a.natsUrl) server = await startNatsServer();
  const natsUrl = a.natsUrl ?? server!.url;
  const nc = await natsConnect(natsUrl, 'lockmgr-bench');
  const bench = new Bench(a, { url: natsUrl, pid: server?.pid ?? null, server }, nc);
  const failures: string[] = [];
  const attempt = async (what: string, fn: () => Promise<void>) => {
    try {
      await fn();
    } catch (err) {
      failures.push(`${what}: ${(err as Error).message}`);
      bench.note(`FAILED ${what}: ${(err as Error).stack ?? err}`);
    }
  };
  const breakdowns: Breakdown[] = [];
  const micro: Partial<MicroResult> = {};
  let peersInfo: PeersInfo | undefined;
  const onSignal = () => {
    killAll();
    process.exit(130);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  try {
    if (a.postgres) {
      const stale = await dropStaleBenchDatabases(a.pgUrl);
      if (stale.length) bench.note(`dropped databases left by an interrupted bench run: ${stale.join(', ')}`);
    }
    bench.sizes = await measurePayloadSizes(bench);
    bench.progress(`payload sizes (bytes): ${JSON.stringify(bench.sizes)}`);

    for (let rep = 1; rep <= a.repeat; rep++) {
      if (bench.wants('floors')) {
        await attempt('NATS floors', () => natsFloors(bench, rep));
        await attempt('storage floors', () => storageFloors(bench, rep));
      }
      if (bench.wants('cycle')) {
        for (const store of stores)
          for (const n of CYCLE_IN_FLIGHT) await attempt(`lock cycle ${store} ${n}`, () => lockCycle(bench, store, n, rep));
      }
      if (bench.wants('multi')) for (const store of extraStores) await attempt(`multi-lock ${store}`, () => multiLock(bench, store, rep));
      if (bench.wants('handoff')) for (const store of extraStores) await attempt(`handoff ${store}`, () => handoff(bench, store, rep));
    }
    if (bench.wants('diag')) {
      for (const d of DIAGNOSTICS) if (stores.includes(d.store)) await attempt(d.label, () => diagnostic(bench, d));
    }
    if (bench.wants('peers')) peersInfo = await peers(bench, attempt);
    if (bench.wants('scale')) for (const store of a.scaleStores) await attempt(`scale ${store}`, () => scale(bench, store));
    if (bench.wants('breakdown')) {
      const plan: [Store, number, boolean, BreakdownKind][] = [
        ['sqlite', 1, false, 'cycle'],
        ['sqlite', 1, true, 'cycle'],
        ['sqlite', 64, false, 'cycle'],
        ['sqlite', 64, true, 'cycle'],
        ['sqlite', 8, true, 'multi'],
      ];
      if (a.postgres)
        plan.push(
          ['postgres', 1, false, 'cycle'],
          ['postgres', 1, true, 'cycle'],
          ['postgres', 64, false, 'cycle'],
          ['postgres', 64, true, 'cycle'],
        );
      for (const [store, n, profile, kind] of plan) {
        await attempt(`breakdown ${kind} ${store} ${n}${profile ? ' (cpu profile)' : ''}`, async () => {
          const b = await breakdown(bench, store, n, { profile, kind });
          breakdowns.push(b);
          bench.progress(`breakdown${profile ? ' with CPU profile' : ''}: ${formatBreakdown(b)}`);
        });
      }
    }
    if (bench.wants('micro')) {
      await attempt('micro: cpu', async () => {
        micro.cpuNs = cpuMicro();
        bench.progress(`micro: ns per call: ${JSON.stringify(micro.cpuNs)}`);
      });
      micro.batches = [];
      const variants: [Store, string, Parameters<typeof batchMicro>[3], number[]][] = [];
      for (const store of stores) variants.push([store, `${store}, empty table`, {}, [1, 8, 64, 256]]);
      variants.push(['sqlite', `sqlite, ${a.scaleLocks.toLocaleString('en-US')} held locks`, { heldLocks: a.scaleLocks }, [64]]);
      variants.push([
        'sqlite',
        `sqlite, ${a.scaleLocks.toLocaleString('en-US')} held locks, PRAGMA cache_size=-65536 (64 MB)`,
        { heldLocks: a.scaleLocks, pragmas: 'PRAGMA cache_size=-65536' },
        [64],
      ]);
      for (const [store, label, opts, sizes] of variants) {
        await attempt(`micro: batches ${label}`, async () => {
          const b = await batchMicro(bench, store, sizes, { ...opts, label });
          micro.batches!.push(...b);
          bench.progress(
            `micro: transactions without NATS, ${label}: ${b.map((x) => `batch ${x.batch}: ${x.txMs} ms/tx, ${x.usPerOp} µs/op, ${x.opsPerSec} ops/s`).join('; ')}`,
          );
        });
      }
    }
  } finally {
    await nc.close().catch(() => undefined);
    await server?.stop();
    bench.cleanup();
  }

  const figures = aggregate(bench.measurements);
  const tgts = targets(figures);
  const seconds = (Date.now() - started) / 1000;
  process.stdout.write(`\n== figures (medians of ${a.repeat} run${a.repeat > 1 ? 's' : ''} where repeated)\n${formatFigures(figures)}\n`);
  process.stdout.write(`\n== targets (docs/performance.md)\n${formatTargets(tgts)}\n`);
  process.stdout.write(`\n== CPU per operation (µs; bench = the load-generating client process)\n${formatCpu(figures)}\n`);
  if (failures.length) process.stdout.write(`\n== FAILED\n${failures.join('\n')}\n`);
  const waited = a.settleMs
    ? `; waited ${Math.round(settling.waitedMs / 1000)} s for a quiet machine (gave up ${settling.gaveUp} times)`
    : '';
  process.stdout.write(`\nfinished in ${Math.round(seconds)} s${waited}; load average ${loadAverage().join(' ')}\n`);

  const json = {
    generatedAt: new Date().toISOString(),
    durationSeconds: round(seconds),
    machine: { ...info, loadavgAtEnd: loadAverage() },
    settings: {
      repeat: a.repeat,
      warmupSeconds: a.warmupMs / 1000,
      measuredSeconds: a.durationMs / 1000,
      stores,
      scaleStores: a.scaleStores,
      scaleLocks: a.scaleLocks,
      scaleExpire: a.scaleExpire,
      settleSeconds: a.settleMs / 1000,
      settledWaitSeconds: round(settling.waitedMs / 1000),
      settleGaveUp: settling.gaveUp,
      daemon: 'node dist/cli/main.js daemon with its default options (see daemonDefaults)',
      daemonDefaults: Object.fromEntries(Object.entries(OPTIONS).map(([k, v]) => [k, v.default])),
    },
    payloadSizes: bench.sizes,
    targets: tgts,
    figures,
    breakdown: breakdowns,
    micro,
    peers: peersInfo ? { ...peersInfo, figures: figures.filter((f) => f.group === 'peers') } : null,
    notes: bench.notes,
    failures,
    measurements: bench.measurements,
  };
  mkdirSync(dirname(a.out), { recursive: true });
  writeFileSync(a.out, `${JSON.stringify(json, null, 2)}\n`);
  process.stdout.write(`figures written to ${a.out}\n`);
  process.exit(failures.length ? 1 : 0);
}

if (process.env[SNAPSHOT_ENV] || process.argv.includes('--help') || process.argv.includes('-h')) {
  main().catch((err) => {
    process.stderr.write(`bench failed: ${(err as Error).stack ?? err}\n`);
    killAll();
    process.exit(1);
  });
} else {
  try {
    parseArgs(process.argv.slice(2)); // report bad options before copying anything
  } catch (err) {
    process.stderr.write(`bench: ${(err as Error).message}\n`);
    process.exit(64);
  }
  runFromSnapshot();
}
