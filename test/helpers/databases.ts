/**
 * Test databases: a fresh SQLite file, or a fresh PostgreSQL database per call, on the real
 * server at 127.0.0.1:5432 (override with LOCKMGR_TEST_PG_URL).
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Client } from 'pg';
import { databaseUrl, withPg } from '../../bench/lib/pg';

export type StoreKind = 'sqlite' | 'postgres';
export const STORES: StoreKind[] = ['sqlite', 'postgres'];

export const PG_ADMIN_URL = process.env.LOCKMGR_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

let counter = 0;

export interface TestDatabase {
  url: string;
  kind: StoreKind;
  drop(): Promise<void>;
}

function admin<T>(fn: (c: Client) => Promise<T>): Promise<T> {
  return withPg(PG_ADMIN_URL, fn);
}

export async function createTestDatabase(kind: StoreKind): Promise<TestDatabase> {
  if (kind === 'sqlite') {
    const dir = mkdtempSync(join(tmpdir(), 'lockmgr-db-'));
    return { kind, url: join(dir, 'locks.sqlite'), drop: async () => undefined };
  }
  const name = `lockmgr_test_${process.pid}_${Date.now().toString(36)}_${++counter}`;
  await admin((c) => c.query(`CREATE DATABASE ${name}`));
  const url = databaseUrl(PG_ADMIN_URL, name);
  return {
    kind,
    url,
    drop: () =>
      admin(async (c) => {
        await c.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`, [name]);
        await c.query(`DROP DATABASE IF EXISTS ${name}`);
      }),
  };
}
