/**
 * Scale: preload held locks straight into the lock table (set-based multi-row INSERTs, far faster
 * than going through the daemon), start a daemon on it, repeat the lock cycle at 64 in flight and
 * read the daemon's resident memory. Then make a block of those locks expire at the same instant,
 * while the cycle load keeps running, and time how long the sweeper takes to clear them.
 */
import { performance } from 'node:perf_hooks';
import { Client } from 'pg';
import type sqlite3 from 'sqlite3';
import type { Bench, Store } from '../lib/context';
import { backgroundLoad, settle } from '../lib/load';
import { processMemoryMb, sleep } from '../lib/procs';
import { round, summarize } from '../lib/stats';
import { cycleLoad } from './cycle';
import { migratedDatabase, openSqlite, sqliteExec } from './floors';
import { workerName } from './sizes';

const CHUNK = 100_000;
const EXPIRY_LEAD_MS = 2000;
/** Between two slices of the SQLite expiry UPDATE: longer than any one sleep of SQLite's busy handler. */
const SLICE_PAUSE_MS = 60;
const SCALE_IN_FLIGHT = 64;

/** A plain connection to the bench's database, with `?` placeholders on both stores. */
interface Sql {
  query(sql: string, params?: unknown[]): Promise<Record<string, unknown>[]>;
  close(): Promise<void>;
}

async function sqlFor(store: Store, url: string): Promise<Sql> {
  if (store === 'sqlite') {
    const db: sqlite3.Database = await openSqlite(url);
    await sqliteExec(db, 'PRAGMA busy_timeout=30000;');
    return {
      query: (sql, params = []) =>
        new Promise((resolve, reject) =>
          db.all(sql, params, (err, rows) => (err ? reject(err) : resolve(rows as Record<string, unknown>[]))),
        ),
      close: () => new Promise((resolve) => db.close(() => resolve())),
    };
  }
  const c = new Client({ connectionString: url });
  await c.connect();
  return {
    query: async (sql, params = []) => {
      let i = 0;
      return (
        await c.query(
          sql.replace(/\?/g, () => `$${++i}`),
          params,
        )
      ).rows;
    },
    close: () => c.end(),
  };
}

export async function preload(store: Store, url: string, total: number): Promise<void> {
  const sql = await sqlFor(store, url);
  const started = Date.now();
  const until = started + 86_400_000;
  const columns = 'name, locked_by, lock_process, locked_until, created_at, updated_at, token';
  try {
    if (store === 'sqlite') await sql.query('PRAGMA synchronous=NORMAL');
    for (let from = 0; from < total; from += CHUNK) {
      const to = Math.min(total, from + CHUNK) - 1;
      if (store === 'sqlite') {
        await sql.query(
          `WITH RECURSIVE s(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM s WHERE i < ?)
           INSERT INTO lockmgr_locks (${columns}) SELECT 'pre.' || i, 'bench-preload', NULL, ?, ?, ?, i + 1 FROM s`,
          [from, to, until, started, started],
        );
      } else {
        await sql.query(
          `INSERT INTO lockmgr_locks (${columns})
           SELECT 'pre.' || i, 'bench-preload', NULL, ?::bigint, ?::bigint, ?::bigint, i + 1 FROM generate_series(?::bigint, ?::bigint) AS i`,
          [until, started, started, from, to],
        );
      }
      process.stdout.write(
        `     preload ${store}: ${(to + 1).toLocaleString('en-US')} / ${total.toLocaleString('en-US')} locks (${((Date.now() - started) / 1000).toFixed(1)} s)\n`,
      );
    }
    if (store === 'sqlite') await sql.query(`UPDATE lockmgr_counters SET value = ? WHERE name = 'token'`, [total]);
    else {
      await sql.query("SELECT setval('lockmgr_token_seq', ?)", [total]);
      await sql.query('ANALYZE lockmgr_locks');
    }
    const [row] = await sql.query('SELECT COUNT(*) AS n FROM lockmgr_locks');
    if (Number(row?.n) !== total) throw new Error(`preload: expected ${total} rows, found ${row?.n}`);
  } finally {
    await sql.close();
  }
}

export async function scale(bench: Bench, store: Store): Promise<void> {
  const a = bench.args;
  const total = a.scaleLocks;
  const expire = Math.min(a.scaleExpire, total);
  const db = await migratedDatabase(bench, store);
  const t0 = Date.now();
  try {
    await preload(store, db.url, total);
  } catch (err) {
    await db.drop();
    throw err;
  }
  const preloadSeconds = (Date.now() - t0) / 1000;
  bench.progress(`scale ${store}: preloaded ${total.toLocaleString('en-US')} held locks in ${preloadSeconds.toFixed(1)} s`);

  await bench.withDaemon(store, { db }, async (d) => {
    await sleep(1000);
    const idle = processMemoryMb(d.proc.pid);
    const r = await cycleLoad(bench, d, SCALE_IN_FLIGHT);
    const afterCycle = processMemoryMb(d.proc.pid);
    bench.record({
      key: `scale.${store}.cycle`,
      label: `scale: lock cycle with ${total.toLocaleString('en-US')} held locks, ${store}, ${SCALE_IN_FLIGHT} in flight`,
      group: 'scale',
      store,
      inFlight: SCALE_IN_FLIGHT,
      unit: 'cycles/s',
      ...bench.fromRun(r),
      extra: { heldLocks: total, preloadSeconds, rssIdleMb: idle.rssMb, rssMb: afterCycle.rssMb, rssPeakMb: afterCycle.peakMb },
    });
    bench.progress(
      `scale ${store}: daemon RSS ${round(idle.rssMb)} MB idle, ${round(afterCycle.rssMb)} MB after the cycle load (peak ${round(afterCycle.peakMb)} MB)`,
    );

    // ---- simultaneous expiry, with the cycle load running ----
    await settle();
    const sql = await sqlFor(store, d.dbUrl);
    const clock = () => performance.timeOrigin + performance.now(); // ms since the epoch, same scale as Date.now()
    const load = backgroundLoad(SCALE_IN_FLIGHT, async (w) => {
      const name = workerName(w);
      await d.client.setLock(name);
      await d.client.unlock(name);
    });
    let result: Record<string, unknown>;
    try {
      await sleep(a.warmupMs);
      const baselineStart = clock();
      await sleep(3000);
      const updateStart = clock();
      const expireAt = Math.ceil(Date.now() + EXPIRY_LEAD_MS);
      // SQLite: in slices, each its own short write transaction that goes on from the last name
      // of the one before, with a pause after each, because the daemon waits at most 250 ms for
      // the write lock: slices back to back left it only moments between two, which SQLite's busy
      // handler (sleeping up to 50 ms between its tries) missed, and a batch of requests failed
      // with STORE_UNAVAILABLE. PostgreSQL: one statement.
      const slice = store === 'sqlite' ? 10_000 : expire;
      let after = 'pre.';
      let longestSliceMs = 0;
      for (let done = 0; done < expire; done += slice) {
        const started = clock();
        const rows = await sql.query(
          `UPDATE lockmgr_locks SET locked_until = ? WHERE name IN (SELECT name FROM lockmgr_locks WHERE name > ? AND name < 'pre/' ORDER BY name LIMIT ?) RETURNING name`,
          [expireAt, after, Math.min(slice, expire - done)],
        );
        longestSliceMs = Math.max(longestSliceMs, clock() - started);
        for (const r of rows) if (String(r.name) > after) after = String(r.name);
        if (store === 'sqlite') await sleep(SLICE_PAUSE_MS);
      }
      if (store === 'sqlite' && longestSliceMs > 200) {
        bench.note(`scale sqlite: a slice of the expiry UPDATE held the write lock for ${round(longestSliceMs)} ms`);
      }
      const updateEnd = clock();
      if (updateEnd > expireAt) bench.note(`scale ${store}: the UPDATE of ${expire} rows took until after their expiry instant`);
      const expiredSql =
        store === 'sqlite'
          ? 'SELECT COUNT(*) AS n FROM lockmgr_locks WHERE locked_until IS NOT NULL AND locked_until <= ?'
          : 'SELECT COUNT(*) AS n FROM lockmgr_locks WHERE locked_until IS NOT NULL AND locked_until <= ?::bigint';
      // Poll what is left to sweep and to relay, keeping a timeline (ms after the expiry instant,
      // expired rows left, events waiting in the outbox) to tell which phase a stall fell in.
      const timeline: [number, number, number][] = [];
      let clearedAt = NaN;
      let outboxEmptyAt = NaN;
      let maxSeen = 0;
      const deadline = expireAt + 120_000;
      while (Date.now() < deadline) {
        const now = Date.now();
        const [expiredRow] = await sql.query(expiredSql, [now]);
        const [outboxRow] = await sql.query('SELECT COUNT(*) AS n FROM lockmgr_outbox');
        const n = Number(expiredRow?.n ?? 0);
        const pending = Number(outboxRow?.n ?? 0);
        const at = clock();
        if (now >= expireAt) timeline.push([Math.round(at - expireAt), n, pending]);
        maxSeen = Math.max(maxSeen, n);
        if (now > expireAt && n === 0 && Number.isNaN(clearedAt)) clearedAt = at;
        if (Number.isFinite(clearedAt) && pending < 1000) {
          outboxEmptyAt = at;
          break;
        }
        await sleep(50);
      }
      await sleep(500);
      const { ends, lats, errors, firstError } = await load.stop();
      const offset = performance.timeOrigin;
      // Cycles that ran during [from, to] (were in flight at some point of it), not only those
      // that ended in it: a cycle held up by a stall ends just after the stall.
      const within = (from: number, to: number) => lats.filter((lat, i) => ends[i]! + offset >= from && ends[i]! + offset - lat <= to);
      // Throughput: cycles that ended in the window.
      const rate = (from: number, to: number) => ends.filter((e) => e + offset >= from && e + offset <= to).length / ((to - from) / 1000);
      const baseline = summarize(within(baselineStart, updateStart));
      const during = summarize(within(expireAt, clearedAt));
      const duringRelay = summarize(within(expireAt, outboxEmptyAt));
      const relayOnly = summarize(within(clearedAt, outboxEmptyAt));
      const duringUpdate = summarize(within(updateStart, updateEnd));
      // The longest time no cycle completed, from the expiry instant until the events were relayed.
      const endsAfter = ends
        .map((e) => e + offset)
        .filter((e) => e >= expireAt && e <= outboxEmptyAt)
        .sort((x, y) => x - y);
      let pause = { ms: 0, fromMs: NaN, toMs: NaN };
      for (let i = 1; i < endsAfter.length; i++) {
        const gap = endsAfter[i]! - endsAfter[i - 1]!;
        if (gap > pause.ms) pause = { ms: gap, fromMs: endsAfter[i - 1]! - expireAt, toMs: endsAfter[i]! - expireAt };
      }
      const stateAt = (ms: number) =>
        timeline.reduce<[number, number, number] | undefined>((best, p) => (p[0] <= ms ? p : best), undefined);
      const mem = processMemoryMb(d.proc.pid);
      result = {
        expired: expire,
        updateMs: updateEnd - updateStart,
        clearMs: clearedAt - expireAt,
        maxExpiredSeen: maxSeen,
        outboxDrainedMs: outboxEmptyAt - expireAt,
        baselineP99Ms: baseline.p99Ms,
        baselineP50Ms: baseline.p50Ms,
        baselineCycles: baseline.count,
        duringP99Ms: during.p99Ms,
        duringP50Ms: during.p50Ms,
        duringMaxMs: during.maxMs,
        baselineMaxMs: baseline.maxMs,
        duringCycles: during.count,
        duringCyclesPerSec: rate(expireAt, clearedAt),
        baselineCyclesPerSec: rate(baselineStart, updateStart),
        duringRelayP99Ms: duringRelay.p99Ms,
        duringRelayCyclesPerSec: rate(expireAt, outboxEmptyAt),
        // From the sweep's end until the expiry events were relayed.
        relayOnlyP99Ms: relayOnly.p99Ms,
        relayOnlyMaxMs: relayOnly.maxMs,
        relayOnlyCyclesPerSec: rate(clearedAt, outboxEmptyAt),
        duringUpdateP99Ms: duringUpdate.p99Ms,
        longestPauseMs: pause.ms,
        longestPauseFromMs: pause.fromMs,
        longestPauseToMs: pause.toMs,
        longestPauseStart: stateAt(pause.fromMs),
        longestPauseEnd: stateAt(pause.toMs),
        timeline,
        errors,
        firstError,
        rssMb: mem.rssMb,
        rssPeakMb: mem.peakMb,
      };
      bench.record(
        {
          key: `scale.${store}.expiry`,
          label: `scale: ${expire.toLocaleString('en-US')} locks expire at once, ${store}, cycles during the sweep`,
          group: 'scale',
          store,
          inFlight: SCALE_IN_FLIGHT,
          unit: 'cycles/s',
          opsPerSec: result.duringCyclesPerSec as number,
          latency: during,
          errors,
          firstError,
          extra: result,
        },
        true,
      );
      const describe = (p?: [number, number, number]) => (p ? `${p[1]} expired rows left, ${p[2]} events waiting` : '?');
      bench.progress(
        `scale ${store}: longest pause in cycle completions ${round(pause.ms)} ms, from ${round(pause.fromMs / 1000)} s to ${round(pause.toMs / 1000)} s after the expiry` +
          ` (at its start: ${describe(stateAt(pause.fromMs))}; at its end: ${describe(stateAt(pause.toMs))})`,
      );
      bench.progress(
        `scale ${store}: ${expire.toLocaleString('en-US')} expiries cleared in ${Number.isFinite(clearedAt) ? `${round((clearedAt - expireAt) / 1000)} s` : 'NOT within 120 s'}` +
          ` (events relayed in ${round((outboxEmptyAt - expireAt) / 1000)} s); cycle p99 ${round(during.p99Ms)} ms meanwhile vs ${round(baseline.p99Ms)} ms before` +
          ` (p50 ${round(during.p50Ms)} vs ${round(baseline.p50Ms)} ms, max ${round(during.maxMs)} vs ${round(baseline.maxMs)} ms; ${round(result.duringCyclesPerSec as number)} vs ${round(result.baselineCyclesPerSec as number)} cycles/s;` +
          ` after the sweep, until the events were relayed: p99 ${round(relayOnly.p99Ms)} ms, ${round(result.relayOnlyCyclesPerSec as number)} cycles/s); RSS ${round(mem.rssMb)} MB (peak ${round(mem.peakMb)} MB)`,
      );
    } finally {
      await load.stop().catch(() => undefined);
      await sql.close();
    }
  });
}
