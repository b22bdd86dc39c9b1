/**
 * Fault injection with a history checker: eight clients take, use (a fencing-checked write) and
 * release locks on four names while a fault hits the stack; then the checker examines every
 * recorded call and the database's final state. One test per row of the scenario table in
 * test/fault/scenarios.ts, on SQLite and PostgreSQL (a cluster of the test's own, since one
 * scenario crashes it).
 *
 * Short by default (about 3 minutes in all); LOCKMGR_FAULT_LONG=1 runs three rounds of longer
 * faults per scenario (about 15 minutes). Each scenario's figures are printed at the end and
 * saved with its history in test-results/fault-history/.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startPgCluster, type PgCluster } from '../helpers/pg-cluster';
import {
  describeResult,
  LONG,
  RESULTS_DIR,
  runScenario,
  scenarioBudgetMs,
  SCENARIOS,
  SHORT,
  type ScenarioResult,
} from '../fault/scenarios';

const timing = process.env.LOCKMGR_FAULT_LONG === '1' ? LONG : SHORT;

describe(`fault history (${timing === LONG ? 'long' : 'short'})`, () => {
  let pg: PgCluster | undefined;
  const results: ScenarioResult[] = [];

  beforeAll(async () => {
    pg = await startPgCluster();
  }, 60_000);

  afterAll(async () => {
    await pg?.destroy();
    if (results.length === 0) return;
    const text = results.map(describeResult).join('\n\n');
    try {
      writeFileSync(join(RESULTS_DIR, 'summary.txt'), `${text}\n`);
    } catch {
      // the directory exists once a scenario saved its history; printing is enough otherwise
    }
    // The figures are the point of the run, passing or not.
    console.log(`fault history, per scenario:\n\n${text}`);
  }, 60_000);

  for (const def of SCENARIOS) {
    it(
      `${def.id}: ${def.title}`,
      async () => {
        const r = await runScenario(def, { pg }, timing);
        results.push(r);
        expect({ scenario: def.id, failures: r.failures }).toEqual({ scenario: def.id, failures: [] });
      },
      scenarioBudgetMs(def, timing),
    );
  }
});
