/**
 * Peers: the lock cycle (acquire, then release, each worker on a lock of its own, closed loop, 1
 * and 64 in flight as in the cycle scenario) done with what a service might use instead of
 * lockmgr, measured in the same run as the NATS floors they are compared with. No NATS and no
 * daemon: the client talks to the store itself.
 *
 * - PostgreSQL advisory lock: `pg_try_advisory_lock(key)` then `pg_advisory_unlock(key)`, one
 *   round trip each, autocommitted; one connection per worker (a session lock belongs to its
 *   connection).
 * - PostgreSQL lock table: `INSERT ... ON CONFLICT DO NOTHING RETURNING` then `DELETE ... WHERE
 *   name AND token`, each committed on its own; one connection per worker. The shape of a
 *   hand-rolled lock table (without an expiry column).
 * - Redis, when `redis-server` is on PATH: a private server on a free loopback port, persistence
 *   off; `SET name token NX PX 30000` then a compare-and-delete in Lua (`EVAL`); all workers on
 *   one pipelined connection (bench/lib/redis.ts), as LockClient shares one NATS connection.
 * - etcd: only looked for on PATH; the bench has no etcd client.
 *
 * Statements go through pg as named prepared statements, like the storage floor's, on a fresh
 * database of the bench's PostgreSQL.
 */
import { randomBytes } from 'node:crypto';
import { Client, type QueryResult } from 'pg';
import type { Bench } from '../lib/context';
import { closedLoop, type Watch } from '../lib/load';
import { onPath, startRedisServer } from '../lib/procs';
import { RedisClient } from '../lib/redis';
import { round } from '../lib/stats';
import { CYCLE_IN_FLIGHT } from './cycle';
import { workerName } from './sizes';

/** What the peers group ran and skipped, for the JSON output. */
export interface PeersInfo {
  /** Wall time of the whole group, seconds (servers, connections and databases included). */
  seconds: number;
  ran: string[];
  skipped: { peer: string; reason: string }[];
  redis?: { version: string; options: string[] };
}

type Attempt = (what: string, fn: () => Promise<void>) => Promise<void>;

/** Run every peer that this machine has; `attempt` keeps one peer's failure from stopping the others. */
export async function peers(bench: Bench, attempt: Attempt): Promise<PeersInfo> {
  const started = Date.now();
  const info: PeersInfo = { seconds: 0, ran: [], skipped: [] };
  const skip = (peer: string, reason: string) => {
    info.skipped.push({ peer, reason });
    bench.progress(`peers: ${reason}, skipped`);
  };
  const run = (peer: string, what: string, fn: () => Promise<void>) =>
    attempt(what, async () => {
      await fn();
      info.ran.push(peer);
    });
  if (bench.args.postgres) {
    await run('postgres-advisory', 'peers: PostgreSQL advisory lock', () => pgAdvisoryLock(bench));
    await run('postgres-table', 'peers: PostgreSQL lock table', () => pgLockTable(bench));
  } else {
    skip('postgres', 'PostgreSQL not used (--no-postgres)');
  }
  if (onPath('redis-server')) await run('redis', 'peers: Redis', () => redisLock(bench, info));
  else skip('redis', 'redis-server not on PATH');
  if (onPath('etcd')) skip('etcd', 'etcd on PATH, but the bench has no etcd client');
  else skip('etcd', 'etcd not on PATH');
  info.seconds = round((Date.now() - started) / 1000);
  return info;
}

/** A statement on worker `w`'s connection, prepared by name on first use. */
type PgQuery = (w: number, name: string, text: string, values: unknown[]) => Promise<QueryResult>;

/** One pg connection per worker. */
async function pgConnections(url: string, n: number): Promise<{ query: PgQuery; close(): Promise<unknown> }> {
  const clients = await Promise.all(
    Array.from({ length: n }, async () => {
      const c = new Client({ connectionString: url });
      await c.connect();
      return c;
    }),
  );
  return {
    query: (w: number, name: string, text: string, values: unknown[]) => clients[w]!.query({ name, text, values }),
    close: () => Promise.all(clients.map((c) => c.end().catch(() => undefined))),
  };
}

/** The lock cycle at each of CYCLE_IN_FLIGHT on a fresh PostgreSQL database, one connection per worker. */
async function pgCycle(
  bench: Bench,
  spec: { key: string; label: string; setup?: string; cycle: (q: PgQuery, w: number) => Promise<boolean> },
): Promise<void> {
  const a = bench.args;
  const db = await bench.freshDatabase('postgres');
  try {
    if (spec.setup) {
      const c = new Client({ connectionString: db.url });
      await c.connect();
      await c.query(spec.setup).finally(() => c.end());
    }
    const watch: Watch = { postgres: () => db.pg!.backendPids() };
    for (const inFlight of CYCLE_IN_FLIGHT) {
      const conns = await pgConnections(db.url, inFlight);
      let anomalies = 0;
      try {
        const r = await closedLoop({ workers: inFlight, warmupMs: a.warmupMs, durationMs: a.durationMs, watch }, async (w) => {
          if (!(await spec.cycle(conns.query, w))) anomalies += 1;
        });
        if (anomalies) bench.note(`${spec.label}, ${inFlight} in flight: ${anomalies} cycles did not acquire and release their lock`);
        bench.record({
          extra: { connections: inFlight },
          key: `peers.${spec.key}.${inFlight}`,
          label: `${spec.label}, ${inFlight} in flight`,
          group: 'peers',
          store: 'postgres',
          inFlight,
          unit: 'cycles/s',
          ...bench.fromRun(r),
        });
      } finally {
        await conns.close();
      }
    }
  } finally {
    await db.drop().catch((err) => bench.note(`could not drop bench database: ${(err as Error).message}`));
  }
}

/** An advisory lock key per worker (advisory locks are per database, and the database is fresh). */
const advisoryKey = (w: number) => 1000 + w;

export function pgAdvisoryLock(bench: Bench): Promise<void> {
  return pgCycle(bench, {
    key: 'advisory',
    label: 'peer: PostgreSQL advisory lock (pg_try_advisory_lock + pg_advisory_unlock)',
    cycle: async (q, w) => {
      const got = await q(w, 'acquire', 'SELECT pg_try_advisory_lock($1) AS ok', [advisoryKey(w)]);
      const released = await q(w, 'release', 'SELECT pg_advisory_unlock($1) AS ok', [advisoryKey(w)]);
      return got.rows[0]?.ok === true && released.rows[0]?.ok === true;
    },
  });
}

export function pgLockTable(bench: Bench): Promise<void> {
  let token = 0;
  return pgCycle(bench, {
    key: 'table',
    label: 'peer: PostgreSQL lock table (INSERT ON CONFLICT DO NOTHING + DELETE by token, each committed)',
    setup: 'CREATE TABLE bench_locks (name text PRIMARY KEY, token bigint NOT NULL)',
    cycle: async (q, w) => {
      const name = workerName(w);
      const t = ++token;
      const got = await q(w, 'acquire', 'INSERT INTO bench_locks (name, token) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING token', [
        name,
        t,
      ]);
      const released = await q(w, 'release', 'DELETE FROM bench_locks WHERE name = $1 AND token = $2', [name, t]);
      return got.rowCount === 1 && released.rowCount === 1;
    },
  });
}

/** Delete the key only if it still holds our token (the usual Redis lock release). */
const RELEASE_SCRIPT = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

export async function redisLock(bench: Bench, info: PeersInfo): Promise<void> {
  const a = bench.args;
  const server = await startRedisServer();
  let client: RedisClient | undefined;
  try {
    client = await RedisClient.connect(server.port);
    const serverInfo = String(await client.command('INFO', 'server'));
    info.redis = {
      version: /^redis_version:(\S+)/m.exec(serverInfo)?.[1] ?? '?',
      options: server.args.filter((_, i, all) => all[i] !== '--dir' && all[i - 1] !== '--dir'),
    };
    const tokenPrefix = randomBytes(8).toString('hex');
    let token = 0;
    const watch: Watch = { 'redis-server': () => [server.pid] };
    for (const inFlight of CYCLE_IN_FLIGHT) {
      let anomalies = 0;
      const r = await closedLoop({ workers: inFlight, warmupMs: a.warmupMs, durationMs: a.durationMs, watch }, async (w) => {
        const name = workerName(w);
        const t = `${tokenPrefix}.${++token}`;
        const got = await client!.command('SET', name, t, 'NX', 'PX', 30_000);
        const released = await client!.command('EVAL', RELEASE_SCRIPT, 1, name, t);
        if (got !== 'OK' || released !== 1) anomalies += 1;
      });
      if (anomalies) bench.note(`peer: Redis, ${inFlight} in flight: ${anomalies} cycles did not acquire and release their lock`);
      bench.record({
        extra: { connections: 1 },
        key: `peers.redis.${inFlight}`,
        label: `peer: Redis SET NX PX + Lua compare-and-delete (persistence off, one connection), ${inFlight} in flight`,
        group: 'peers',
        inFlight,
        unit: 'cycles/s',
        ...bench.fromRun(r),
      });
    }
  } finally {
    await client?.close().catch(() => undefined);
    await server.stop();
  }
}
