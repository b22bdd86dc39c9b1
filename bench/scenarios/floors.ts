/**
 * Floors: what NATS request/reply and a durable commit cost on this machine, measured in the same
 * run as everything they are compared with.
 *
 * - NATS: a bare responder in its own process (echo-responder.ts) answering with payloads as large
 *   as lockmgr's replies; the client sends payloads as large as lockmgr's requests, from the same
 *   client library, without headers. `rtt` is one request/reply; `cycle` is two (set-sized, then
 *   unlock-sized), like one setLock + unlock.
 * - Storage: one INSERT and one DELETE of a lock row, each its own (autocommitted) transaction, on
 *   the daemon's schema, through the drivers the daemon uses, as it uses them (prepared
 *   statements; better-sqlite3 in WAL mode with the daemon's default `synchronous`; pg with the
 *   server's settings, synchronous_commit on).
 */
import BetterSqlite3 from 'better-sqlite3';
import { Client } from 'pg';
import sqlite3 from 'sqlite3';
import { OPTIONS } from '../../daemon/config';
import { openStore } from '../../daemon/store';
import { Checkpointer } from '../../daemon/store/sqlite/checkpointer';
import type { Bench, Store } from '../lib/context';
import { closedLoop } from '../lib/load';
import { natsConnect, startEcho } from '../lib/procs';

export const FLOOR_IN_FLIGHT = [1, 32, 64];

export async function natsFloors(bench: Bench, rep: number): Promise<void> {
  const sizes = bench.sizes!;
  const prefix = bench.nextPrefix('e');
  const echo = await startEcho(bench.nats.url, prefix, { set: sizes.setReply, unlock: sizes.unlockReply, get: sizes.getReply }, bench.nc);
  const nc = await natsConnect(bench.nats.url, 'lockmgr-bench-floor');
  const a = bench.args;
  const watch = { echo: () => [echo.pid], ...(bench.nats.pid ? { 'nats-server': () => [bench.nats.pid!] } : {}) };
  const setReq = new Uint8Array(sizes.setRequest).fill(0x61);
  const unlockReq = new Uint8Array(sizes.unlockRequest).fill(0x61);
  const getReq = new Uint8Array(sizes.getRequest).fill(0x61);
  const opts = { timeout: 10_000 };
  try {
    const rtt = await closedLoop({ workers: 1, warmupMs: a.warmupMs, durationMs: a.durationMs, watch }, async () => {
      await nc.request(`${prefix}.get`, getReq, opts);
    });
    bench.record({
      key: 'floor.rtt.1',
      label: 'floor: bare NATS request/reply, 1 in flight',
      group: 'floors',
      inFlight: 1,
      unit: 'req/s',
      rep,
      ...bench.fromRun(rtt),
    });
    for (const inFlight of FLOOR_IN_FLIGHT) {
      const r = await closedLoop({ workers: inFlight, warmupMs: a.warmupMs, durationMs: a.durationMs, watch }, async () => {
        await nc.request(`${prefix}.set`, setReq, opts);
        await nc.request(`${prefix}.unlock`, unlockReq, opts);
      });
      bench.record({
        key: `floor.cycle.${inFlight}`,
        label: `floor: bare NATS cycle (2 round trips), ${inFlight} in flight`,
        group: 'floors',
        inFlight,
        unit: 'cycles/s',
        rep,
        ...bench.fromRun(r),
      });
    }
  } finally {
    await nc.close().catch(() => undefined);
    await echo.stop();
  }
}

/** Create the daemon's schema in a fresh database, with the daemon's own migrations. */
export async function migratedDatabase(bench: Bench, store: Store) {
  const db = await bench.freshDatabase(store);
  const s = openStore({ url: db.url, daemonId: 'bench' });
  try {
    await s.migrate();
  } finally {
    await s.close();
  }
  return db;
}

const INSERT = 'INSERT INTO lockmgr_locks (name, locked_by, lock_process, locked_until, created_at, updated_at, token) VALUES';

export function sqliteExec(db: sqlite3.Database, sql: string): Promise<void> {
  return new Promise((resolve, reject) => db.exec(sql, (err) => (err ? reject(err) : resolve())));
}

export function openSqlite(file: string): Promise<sqlite3.Database> {
  return new Promise((resolve, reject) => {
    const db = new sqlite3.Database(file, (err) => (err ? reject(err) : resolve(db)));
  });
}

/** The daemon's default `synchronous` for SQLite (what a daemon started without flags uses). */
export const SQLITE_SYNCHRONOUS = String(OPTIONS.sqliteSynchronous.default);

/** One statement at a time on one connection, prepared once. */
type RunStatement = (sql: string, params: unknown[]) => Promise<void>;

/** SQLite as the daemon opens it: WAL, its `synchronous`, checkpoints in a worker thread. */
function sqliteRunner(file: string): { run: RunStatement; close(): Promise<void> } {
  const db = new BetterSqlite3(file, { timeout: 1000 });
  db.pragma('journal_mode = WAL');
  db.pragma(`synchronous = ${SQLITE_SYNCHRONOUS}`);
  db.pragma('wal_autocheckpoint = 0');
  const checkpointer = new Checkpointer(
    file,
    Number(OPTIONS.sqliteCheckpointInterval.default),
    () => undefined,
    () => undefined,
  );
  checkpointer.start();
  const prepared = new Map<string, BetterSqlite3.Statement>();
  return {
    run: async (sql, params) => {
      let stmt = prepared.get(sql);
      if (!stmt) prepared.set(sql, (stmt = db.prepare(sql)));
      stmt.run(...params);
    },
    close: async () => {
      await checkpointer.stop();
      db.close();
    },
  };
}

async function postgresRunner(url: string): Promise<{ run: RunStatement; close(): Promise<void> }> {
  const client = new Client({ connectionString: url });
  await client.connect();
  const names = new Map<string, string>();
  return {
    run: async (sql, params) => {
      let name = names.get(sql);
      if (!name) names.set(sql, (name = `floor_${names.size}`));
      let i = 0;
      await client.query({ name, text: sql.replace(/\?/g, () => `$${++i}`), values: params });
    },
    close: () => client.end(),
  };
}

/** One INSERT and one DELETE, each committed on its own, through the daemon's drivers. */
export async function storageFloors(bench: Bench, rep: number): Promise<void> {
  const a = bench.args;
  const pair = async (run: RunStatement, name: string, token: number) => {
    const now = Date.now();
    await run(`${INSERT} (?, ?, ?, ?, ?, ?, ?)`, [name, 'bench', null, now + 600_000, now, now, token]);
    await run('DELETE FROM lockmgr_locks WHERE name = ?', [name]);
  };
  {
    const db = await migratedDatabase(bench, 'sqlite');
    const conn = sqliteRunner(db.url);
    try {
      let token = 0;
      const r = await closedLoop({ workers: 1, warmupMs: a.warmupMs, durationMs: a.durationMs }, () => pair(conn.run, 'job.w000', ++token));
      bench.record({
        key: 'floor.sqlite.1',
        label: `floor: SQLite insert+delete commit pair (WAL, synchronous=${SQLITE_SYNCHRONOUS}), 1 in flight`,
        group: 'floors',
        store: 'sqlite',
        inFlight: 1,
        unit: 'pairs/s',
        rep,
        ...bench.fromRun(r),
      });
    } finally {
      await conn.close();
      await db.drop();
    }
  }
  if (!a.postgres) return;
  const db = await migratedDatabase(bench, 'postgres');
  try {
    for (const inFlight of [1, 4]) {
      const conns = await Promise.all(Array.from({ length: inFlight }, () => postgresRunner(db.url)));
      let token = 0;
      try {
        const r = await closedLoop(
          { workers: inFlight, warmupMs: a.warmupMs, durationMs: a.durationMs, watch: { postgres: () => db.pg!.backendPids() } },
          (w) => pair(conns[w]!.run, `job.w${String(w).padStart(3, '0')}`, ++token),
        );
        bench.record({
          key: `floor.postgres.${inFlight}`,
          label: `floor: PostgreSQL insert+delete commit pair, ${inFlight} connection${inFlight > 1 ? 's' : ''} in flight`,
          group: 'floors',
          store: 'postgres',
          inFlight,
          unit: 'pairs/s',
          rep,
          ...bench.fromRun(r),
        });
      } finally {
        await Promise.all(conns.map((c) => c.close()));
      }
    }
  } finally {
    await db.drop();
  }
}
