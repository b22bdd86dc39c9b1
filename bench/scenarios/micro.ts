/**
 * The daemon's parts timed on their own, without NATS: decoding and validating a request,
 * encoding a reply, and a transaction of the Batcher at several batch sizes (what group commit
 * buys per operation). The same code the daemon runs, called directly.
 */
import { hostname } from 'node:os';
import { performance } from 'node:perf_hooks';
import { Batcher } from '../../daemon/batcher';
import { toLockRecord } from '../../daemon/lock-records';
import { ops } from '../../daemon/lock-ops';
import { encodeReply } from '../../daemon/lock-service';
import { PostgresStore } from '../../daemon/store/postgres/postgres-store';
import { SqliteStore } from '../../daemon/store/sqlite/sqlite-store';
import type { Requester } from '../../daemon/store/store';
import { validateRequest } from '../../shared/validate';
import type { Bench, Store } from '../lib/context';
import { round } from '../lib/stats';
import { preload } from './scale';
import { workerName } from './sizes';

export interface MicroResult {
  /** Nanoseconds per call. */
  cpuNs: Record<string, number>;
  /** Per store and batch size: ms per transaction and µs per operation (set and unlock alike). */
  batches: { store: Store; batch: number; txMs: number; usPerOp: number; opsPerSec: number; label?: string }[];
}

function timeNs(fn: () => void, minMs = 300): number {
  for (let i = 0; i < 2000; i++) fn(); // warm up the JIT
  let n = 0;
  const start = performance.now();
  let now = start;
  while (now - start < minMs) {
    for (let i = 0; i < 1000; i++) fn();
    n += 1000;
    now = performance.now();
  }
  return ((now - start) * 1e6) / n;
}

export function cpuMicro(): Record<string, number> {
  const enc = new TextEncoder();
  const dec = new TextDecoder();
  const name = workerName(1);
  const setBody = enc.encode(JSON.stringify({ locks: [name], timeout: 600, locked_by: hostname() }));
  const unlockBody = enc.encode(JSON.stringify({ name }));
  const now = Date.now();
  const row = {
    name,
    locked_by: hostname(),
    lock_process: null,
    locked_until: now + 600_000,
    created_at: now,
    updated_at: now,
    token: 42,
    session_id: null,
  };
  const record = toLockRecord(row);
  const setReply = {
    ok: true as const,
    result: {
      locks: [record],
      counts: { created: 1, renewed: 0, skip_create: 0, skip_renew: 0 },
      statuses: [[name, { was_locked: false, status: 'create', locked: true }]],
    },
  };
  const setReplyBytes = encodeReply(setReply);
  let sink: unknown;
  const out = {
    'decode+validate set request': round(timeNs(() => (sink = validateRequest('set', JSON.parse(dec.decode(setBody)))))),
    'decode+validate unlock request': round(timeNs(() => (sink = validateRequest('admin_unlock', JSON.parse(dec.decode(unlockBody)))))),
    'encode set reply': round(timeNs(() => (sink = encodeReply(setReply)))),
    'encode unlock reply': round(timeNs(() => (sink = encodeReply({ ok: true, result: { unlocked: true } })))),
    'row -> wire record (toLockRecord)': round(timeNs(() => (sink = toLockRecord(row)))),
    'client: parse set reply': round(timeNs(() => (sink = JSON.parse(dec.decode(setReplyBytes))))),
    'event JSON (lock + cause) for the outbox': round(
      timeNs(() => (sink = [JSON.stringify(record), JSON.stringify({ locked_by: 'x', process_id: null, client: 'c', operation: 'set' })])),
    ),
  };
  microSink = sink;
  return out;
}

/** Keeps the timed calls' results alive. */
export let microSink: unknown;

/**
 * Transactions of `sizes` set (then unlock) operations through the daemon's Batcher. With
 * `heldLocks`, the table first holds that many locks; `pragmas` are run on the daemon's SQLite
 * connection first (to see what a setting would change).
 */
export async function batchMicro(
  bench: Bench,
  store: Store,
  sizes: number[],
  opts: { msPerSize?: number; heldLocks?: number; pragmas?: string; label?: string } = {},
): Promise<MicroResult['batches']> {
  const msPerSize = opts.msPerSize ?? 1200;
  const fresh = await bench.freshDatabase(store);
  const pragmas = opts.pragmas ? [opts.pragmas.replace(/^PRAGMA\s+/i, '')] : [];
  // One transaction at a time on both, so that each batch size is what it says.
  const db =
    store === 'sqlite'
      ? new SqliteStore({ file: fresh.url, daemonId: 'bench', pragmas })
      : new PostgresStore({ url: fresh.url, daemonId: 'bench', poolSize: 2 });
  const out: MicroResult['batches'] = [];
  try {
    await db.migrate();
    if (opts.heldLocks) await preload(store, fresh.url, opts.heldLocks);
    const batcher = new Batcher(db, { maxBatch: Math.max(...sizes) });
    const who: Requester = { lockedBy: hostname(), process: null, client: null };
    for (const size of sizes) {
      const setReqs = Array.from({ length: size }, (_, i) => validateRequest('set', { locks: [`mb.${size}.${i}`], timeout: 600 }));
      const unlockReqs = Array.from({ length: size }, (_, i) => validateRequest('admin_unlock', { name: `mb.${size}.${i}` }));
      let txs = 0;
      const runOnce = async () => {
        await Promise.all(setReqs.map((req) => batcher.run({ run: ops.set(req, who).run })));
        await Promise.all(unlockReqs.map((req) => batcher.run({ run: ops.unlock(req, who).run })));
        txs += 2;
      };
      await runOnce(); // warm up (statements prepared)
      txs = 0;
      const start = performance.now();
      while (performance.now() - start < msPerSize) await runOnce();
      const ms = performance.now() - start;
      const txMs = ms / txs;
      out.push({
        store,
        batch: size,
        txMs: round(txMs),
        usPerOp: round((txMs * 1000) / size),
        opsPerSec: round((size * txs) / (ms / 1000)),
        ...(opts.label ? { label: opts.label } : {}),
      });
      // Keep the outbox (no relay here) from growing without end.
      const lease = db.relayLease();
      if (await lease.acquire()) await lease.removeThrough(Number.MAX_SAFE_INTEGER);
    }
  } finally {
    await db.close();
    await fresh.drop();
  }
  return out;
}
