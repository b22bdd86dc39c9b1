/**
 * Bench databases on PostgreSQL: a fresh database per daemon, dropped afterwards, on the server
 * given by --pg-url (an admin URL; default postgres://postgres@127.0.0.1:5432/postgres).
 */
import { Client } from 'pg';
import { isAlive } from './procs';

let counter = 0;

export interface PgDatabase {
  name: string;
  url: string;
  /** pids of the server processes serving this database (for CPU accounting). */
  backendPids(): Promise<number[]>;
  drop(): Promise<void>;
}

/** Run `fn` on a fresh PostgreSQL connection to `url`, closed afterwards. */
export async function withPg<T>(url: string, fn: (c: Client) => Promise<T>): Promise<T> {
  const c = new Client({ connectionString: url });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

/** The admin URL pointing at database `name` instead (its query, such as `?host=/socket/dir`, kept). */
export function databaseUrl(adminUrl: string, name: string): string {
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

export async function createPgDatabase(adminUrl: string): Promise<PgDatabase> {
  const name = `lockmgr_bench_${process.pid}_${Date.now().toString(36)}_${++counter}`;
  await withPg(adminUrl, (c) => c.query(`CREATE DATABASE ${name}`));
  return {
    name,
    url: databaseUrl(adminUrl, name),
    backendPids: () =>
      withPg(adminUrl, async (c) => {
        const r = await c.query(`SELECT pid FROM pg_stat_activity WHERE datname = $1`, [name]);
        return r.rows.map((row: { pid: number }) => Number(row.pid));
      }),
    drop: () =>
      withPg(adminUrl, async (c) => {
        await c.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`, [name]);
        await c.query(`DROP DATABASE IF EXISTS ${name}`);
      }),
  };
}

/** Drop databases left by an interrupted run of this bench (names carry a dead pid). */
export async function dropStaleBenchDatabases(adminUrl: string): Promise<string[]> {
  return withPg(adminUrl, async (c) => {
    const r = await c.query(`SELECT datname FROM pg_database WHERE datname LIKE 'lockmgr_bench_%'`);
    const dropped: string[] = [];
    for (const { datname } of r.rows as { datname: string }[]) {
      const pid = Number(/^lockmgr_bench_(\d+)_/.exec(datname)?.[1]);
      if (!pid || pid === process.pid || isAlive(pid)) continue;
      await c.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1`, [datname]);
      await c.query(`DROP DATABASE IF EXISTS ${datname}`);
      dropped.push(datname);
    }
    return dropped;
  });
}

export async function pgSetting(adminUrl: string, names: string[]): Promise<Record<string, string>> {
  return withPg(adminUrl, async (c) => {
    const out: Record<string, string> = {};
    for (const n of names) out[n] = String((await c.query(`SHOW ${n}`)).rows[0]?.[n] ?? '');
    out.version = String((await c.query('SHOW server_version')).rows[0]?.server_version ?? '');
    return out;
  });
}
