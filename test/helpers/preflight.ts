/**
 * jest globalSetup: the tests need nats-server and docker-compose on PATH and PostgreSQL
 * reachable. Say so once, with what to do, instead of failing every test.
 */
import { execFileSync } from 'node:child_process';
import { Client } from 'pg';
import { PG_ADMIN_URL } from './databases';

export default async function preflight(): Promise<void> {
  try {
    execFileSync('nats-server', ['--version'], { stdio: 'ignore' });
  } catch {
    throw new Error('nats-server is not on PATH: install it (apt-get install nats-server) or run .ci/run, which does');
  }
  try {
    execFileSync('docker-compose', ['version', '--short'], { stdio: 'ignore' });
  } catch {
    throw new Error(
      'docker-compose is not on PATH (it validates docker-compose.yml; no Docker engine is needed): install it (apt-get install docker-compose) or run .ci/run, which does',
    );
  }
  const c = new Client({ connectionString: PG_ADMIN_URL, connectionTimeoutMillis: 5000 });
  try {
    await c.connect();
    await c.query('SELECT 1');
  } catch (err) {
    throw new Error(
      `PostgreSQL is not reachable at ${PG_ADMIN_URL} (${(err as Error).message}): start it (pg_ctlcluster 15 main start) or set LOCKMGR_TEST_PG_URL; .ci/run starts it`,
      { cause: err },
    );
  } finally {
    await c.end().catch(() => undefined);
  }
}
