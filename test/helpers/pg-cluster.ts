/**
 * A PostgreSQL 15 cluster of the test's own (initdb + pg_ctl, run as the postgres user), on a free
 * loopback port with trust auth, in a temp dir: for tests that crash and restart the database,
 * which they must never do to the shared server on 5432.
 */
import { execFile } from 'node:child_process';
import { chownSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { databaseUrl, withPg } from '../../bench/lib/pg';
import { freePort } from './nats-server';

const run = promisify(execFile);

/** Where Debian/Ubuntu install the PostgreSQL 15 binaries (override with LOCKMGR_TEST_PG_BIN). */
export const PG_BIN = process.env.LOCKMGR_TEST_PG_BIN ?? '/usr/lib/postgresql/15/bin';

export interface PgCluster {
  port: number;
  /** postgres://postgres@127.0.0.1:PORT/postgres */
  adminUrl: string;
  /** URL of database `name` on this cluster (optionally through another port, e.g. a proxy's). */
  url(name: string, port?: number): string;
  createDatabase(name: string): Promise<string>;
  /** A crash: `pg_ctl stop -m immediate` (no shutdown checkpoint; recovery runs at the next start). */
  crash(): Promise<void>;
  /** Start it again after crash() (same data dir, same port). */
  start(): Promise<void>;
  /** Stop it and remove its data dir. Safe to call twice. */
  destroy(): Promise<void>;
  log(): string;
}

/** The postgres user's uid/gid, for the data dir's owner (initdb refuses to run as root). */
async function postgresIds(): Promise<{ uid: number; gid: number }> {
  const uid = Number((await run('id', ['-u', 'postgres'])).stdout.trim());
  const gid = Number((await run('id', ['-g', 'postgres'])).stdout.trim());
  return { uid, gid };
}

function asPostgres(cmd: string, args: string[], timeoutMs = 60_000) {
  return run('runuser', ['-u', 'postgres', '--', join(PG_BIN, cmd), ...args], { timeout: timeoutMs });
}

export async function startPgCluster(): Promise<PgCluster> {
  const dir = mkdtempSync(join(tmpdir(), 'lockmgr-pgcluster-'));
  const data = join(dir, 'data');
  const logFile = join(dir, 'postgres.log');
  const port = await freePort();
  let running = false;
  let destroyed = false;
  const { uid, gid } = await postgresIds();
  chownSync(dir, uid, gid);
  // fsync off: a crash here is a process crash (the OS keeps its page cache), so it loses nothing
  // a real crash of the server process would keep, and the tests run faster.
  const options = `-c listen_addresses=127.0.0.1 -p ${port} -k ${dir} -c fsync=off -c max_connections=100`;
  const start = async () => {
    await asPostgres('pg_ctl', ['-D', data, '-l', logFile, '-o', options, '-w', '-t', '30', 'start']);
    running = true;
  };
  try {
    await asPostgres('initdb', ['-D', data, '-A', 'trust', '-U', 'postgres', '-E', 'UTF8', '--no-sync']);
    await start();
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const adminUrl = `postgres://postgres@127.0.0.1:${port}/postgres`;
  const stop = async (mode: 'immediate' | 'fast') => {
    if (!running) return;
    running = false;
    await asPostgres('pg_ctl', ['-D', data, '-m', mode, '-w', '-t', '30', 'stop']);
  };
  return {
    port,
    adminUrl,
    url: (name, viaPort = port) => databaseUrl(`postgres://postgres@127.0.0.1:${viaPort}/postgres`, name),
    createDatabase: async (name) => {
      await withPg(adminUrl, (c) => c.query(`CREATE DATABASE ${name}`));
      return databaseUrl(adminUrl, name);
    },
    crash: () => stop('immediate'),
    start,
    destroy: async () => {
      if (destroyed) return;
      destroyed = true;
      try {
        await stop('fast');
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
    log: () => {
      try {
        return readFileSync(logFile, 'utf8');
      } catch {
        return '';
      }
    },
  };
}
