/**
 * Handoff: 32 waiters blocked in `getLock(name, {wait: 30})` on one lock. Each handoff is timed
 * from the moment the holder's `unlock` reply arrives to the moment the next waiter's grant
 * arrives (both on one client connection, so they arrive in that order). The new holder then
 * unlocks at once and queues again, so 32 stay waiting.
 */
import { performance } from 'node:perf_hooks';
import type { NatsConnection, RequestOptions } from 'nats';
import type { Bench, Store } from '../lib/context';
import { cpuWindow, settle } from '../lib/load';
import { loadAverage, sleep } from '../lib/procs';
import { Samples } from '../lib/stats';

export const WAITERS = 32;

const GRANT_PREFIX = new TextEncoder().encode('{"ok":true');
/** A successful reply (the daemon encodes `{"ok":true,...}` first), without decoding all of it. */
function isGrant(data: Uint8Array): boolean {
  return GRANT_PREFIX.every((b, i) => data[i] === b);
}

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
    // Reply arrival times are taken where nats.js hands the reply over (the first continuation
    // of its request promise), before LockClient's own decoding, so both ends of a handoff are
    // timed at the same layer. On one connection an unlock reply always arrives before the grant
    // it leads to, and exactly one handoff is in progress at a time.
    let unlockedAt: number | undefined;
    const sample = (ms: number) => {
      if (!measuring) return;
      handoffs += 1;
      samples.push(ms);
    };
    const nc = client.nc as NatsConnection & { request: NatsConnection['request'] };
    const request = nc.request.bind(nc);
    const unlockSubject = `${d.prefix}.unlock`;
    const getSubject = `${d.prefix}.get`;
    nc.request = (subject: string, data?: Uint8Array, o?: RequestOptions) =>
      request(subject, data, o).then((m) => {
        const t = performance.now();
        if (subject === unlockSubject) unlockedAt = t;
        else if (subject === getSubject && unlockedAt !== undefined && isGrant(m.data)) {
          sample(t - unlockedAt);
          unlockedAt = undefined;
        }
        return m;
      });

    await settle();
    await client.getLock(name);
    const waiter = async () => {
      while (!stopped) {
        try {
          await client.getLock(name, { wait: 30 });
        } catch (err) {
          errors += 1;
          firstError ??= (err as Error).message;
          continue;
        }
        await client.unlock(name);
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
