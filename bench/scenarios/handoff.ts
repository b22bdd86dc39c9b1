/**
 * Handoff: 32 waiters blocked in `getLock(name, {wait: 30})` on one lock. Each handoff is timed
 * from the moment the holder's `unlock` reply arrives to the moment the next waiter's grant
 * arrives (both on one client connection, so they arrive in that order). The new holder then
 * unlocks at once and queues again, so 32 stay waiting.
 */
import { performance } from 'node:perf_hooks';
import type { Bench, Store } from '../lib/context';
import { cpuWindow, settle } from '../lib/load';
import { loadAverage, sleep } from '../lib/procs';
import { Samples } from '../lib/stats';

export const WAITERS = 32;

export async function handoff(bench: Bench, store: Store, rep: number): Promise<void> {
  const a = bench.args;
  await bench.withDaemon(store, {}, async (d) => {
    const name = 'handoff.lock';
    const client = d.client;
    const samples = new Samples();
    let measuring = false;
    let stopped = false;
    let handoffs = 0;
    let errors = 0;
    let firstError: string | undefined;
    // Both ends of a handoff are timed where LockClient hands its result over, so they are timed
    // at the same layer. On one connection an unlock reply always arrives before the grant it
    // leads to, and exactly one handoff is in progress at a time.
    let unlockedAt: number | undefined;
    const granted = () => {
      const t = performance.now();
      if (measuring && unlockedAt !== undefined) {
        handoffs += 1;
        samples.push(t - unlockedAt);
      }
      unlockedAt = undefined;
    };

    await settle();
    await client.getLock(name);
    const waiter = async () => {
      while (!stopped) {
        try {
          await client.getLock(name, { wait: 30 });
          granted();
        } catch (err) {
          errors += 1;
          firstError ??= (err as Error).message;
          continue;
        }
        await client.unlock(name);
        unlockedAt = performance.now();
      }
    };
    const waiters = Array.from({ length: WAITERS }, () => waiter());
    await sleep(500); // let them all queue behind the first holder
    await client.unlock(name);

    await sleep(a.warmupMs);
    const cpu = await cpuWindow(d.watch);
    measuring = true;
    await sleep(a.durationMs);
    measuring = false;
    const cpuReport = await cpu.end(handoffs);
    stopped = true;
    await Promise.race([Promise.all(waiters), sleep(60_000)]);
    bench.record({
      key: `handoff.${store}`,
      label: `handoff: ${WAITERS} waiters on one lock, ${store}, unlock reply -> next grant`,
      group: 'handoff',
      store,
      inFlight: WAITERS,
      unit: 'handoffs/s',
      rep,
      opsPerSec: handoffs / (a.durationMs / 1000),
      latency: samples.summary(),
      errors,
      firstError,
      cpu: cpuReport,
      loadavg: loadAverage(),
    });
  });
}
