/**
 * Find the byte sizes of lockmgr's real requests and replies, by watching one set/unlock/get cycle
 * of LockClient go over NATS. The floors then send and answer payloads of exactly these sizes.
 */
import { sleep } from '../lib/procs';
import type { Bench, PayloadSizes } from '../lib/context';

/** Lock names in the cycle scenarios look like this (same length), so payloads match. */
export const workerName = (w: number) => `job.w${String(w).padStart(3, '0')}`;

export async function measurePayloadSizes(bench: Bench): Promise<PayloadSizes> {
  return bench.withDaemon('sqlite', {}, async (d) => {
    const spy = bench.nc;
    const kindByInbox = new Map<string, string>();
    const sizes: Record<string, number> = {};
    // setLock (renewing) and unlock by name go to the admin subjects; their bodies are the same.
    const kinds: Record<string, string> = { set: 'set', 'admin.set': 'set', unlock: 'unlock', 'admin.unlock': 'unlock', get: 'get' };
    const subs = [
      spy.subscribe(`${d.prefix}.>`, {
        callback: (_e, m) => {
          const kind = kinds[m.subject.slice(d.prefix.length + 1)];
          if (!kind) return;
          sizes[`${kind}Request`] = m.data.length;
          if (m.reply) kindByInbox.set(m.reply, kind);
        },
      }),
    ];
    const inbox = spy.subscribe('_INBOX.>', {
      callback: (_e, m) => {
        const kind = kindByInbox.get(m.subject);
        if (kind) sizes[`${kind}Reply`] = m.data.length;
      },
    });
    await spy.flush();
    const name = workerName(999);
    await d.client.setLock(name);
    await d.client.unlock(name);
    await d.client.getLock(name);
    await d.client.unlock(name);
    await sleep(200);
    for (const s of [...subs, inbox]) s.unsubscribe();
    const need = ['setRequest', 'setReply', 'unlockRequest', 'unlockReply', 'getRequest', 'getReply'];
    for (const k of need) if (!(k in sizes)) throw new Error(`could not observe ${k} (saw ${JSON.stringify(sizes)})`);
    return sizes as unknown as PayloadSizes;
  });
}
