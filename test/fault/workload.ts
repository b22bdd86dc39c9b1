/**
 * The fault workload: LockClients looping get -> fenced write -> unlock on a few names, every
 * call recorded (client, op, name, start/end on performance.now(), its budget, its outcome) for
 * the checker. The "resource" is a fenced store in memory: per name the highest token it has
 * accepted, refusing writes with a lower one, as a storage service checking fencing tokens would.
 */
import type { Lock, LockClient } from '../../client/index';
import { LockError } from '../../client/errors';
import { FENCED, type CallRecord } from './checker';

export interface WorkloadOptions {
  /** Each client works on one name, names[i % names.length], so faults on one name leave the others' clients free. */
  clients: readonly { id: string; client: LockClient }[];
  names: readonly string[];
  /** Lock lifetime, seconds. */
  expiresS: number;
  /** getLock's wait, seconds. */
  waitS: number;
  /** Time spent "using" the resource between the write and the unlock, ms (uniform in the range). */
  holdMs: readonly [number, number];
  /** Pause between cycles, ms. */
  thinkMs: readonly [number, number];
  /**
   * One grant in this many is never unlocked (left to expire; 0: none). A blocked name slows its
   * clients for a whole lifetime, so keep it rare where the rate before a fault is the yardstick.
   */
  forgetOneIn: number;
  seed: number;
  /** Upper bound of cycles per client (loops are bounded in count as well as time). */
  maxCycles?: number;
}

/** Writes by token, refusing a token lower than the highest accepted for the name. */
export class FencedResource {
  private readonly highest = new Map<string, number>();
  write(name: string, token: number): boolean {
    if (token < (this.highest.get(name) ?? 0)) return false;
    this.highest.set(name, token);
    return true;
  }
}

/** A small deterministic PRNG (mulberry32), so a run's choices repeat with its seed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** The code an error carries: a LockError's, else whatever `code` it has (nats.js errors), else its class. */
export function codeOf(err: unknown): string {
  if (err instanceof LockError) return err.code;
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && code !== '') return code;
  return `UNCODED:${(err as Error)?.name ?? typeof err}`;
}

/** Codes after which a client backs off a little (the failure comes at once, so do not spin). */
const FAST_FAILURES = new Set(['NO_DAEMON', 'STORE_UNAVAILABLE', 'AUTHORITY_CONFLICT']);

export class Workload {
  readonly calls: CallRecord[] = [];
  readonly resource = new FencedResource();
  private stopped = false;
  private running: Promise<void>[] = [];
  private nextId = 1;

  constructor(private readonly opts: WorkloadOptions) {}

  start(): void {
    this.running = this.opts.clients.map((c, i) => this.loop(c.id, c.client, this.opts.names[i % this.opts.names.length]!, i));
  }

  /** Stop after each client's current call (each bounded by its timeout); a lock held then is left held. */
  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all(this.running);
  }

  private record(c: Omit<CallRecord, 'id'>): CallRecord {
    const rec = { id: this.nextId++, ...c };
    this.calls.push(rec);
    return rec;
  }

  private async loop(id: string, client: LockClient, name: string, index: number): Promise<void> {
    const o = this.opts;
    const rand = prng(o.seed * 1000 + index);
    const between = ([lo, hi]: readonly [number, number]) => lo + rand() * (hi - lo);
    const getBudget = client.timeout + o.waitS * 1000;
    for (let cycle = 0; cycle < (o.maxCycles ?? 100_000) && !this.stopped; cycle++) {
      const getting = { client: id, op: 'get' as const, name, start: performance.now(), timeoutMs: getBudget };
      let lock: Lock;
      try {
        lock = await client.getLock(name, { expires: o.expiresS, wait: o.waitS });
        const end = performance.now();
        // The expiry on this timeline: the wall-clock time left, from the moment of the reply.
        const lockedUntil = lock.locked_until === null ? null : lock.locked_until.getTime() - Date.now() + end;
        this.record({ ...getting, end, ok: true, token: lock.token, lockedUntil });
      } catch (err) {
        const code = codeOf(err);
        this.record({ ...getting, end: performance.now(), ok: false, code, message: String(err) });
        await sleep(FAST_FAILURES.has(code) ? 100 : 20);
        continue;
      }
      const token = lock.token;
      const start = performance.now();
      const accepted = this.resource.write(name, token);
      this.record({
        client: id,
        op: 'write',
        name,
        start,
        end: performance.now(),
        timeoutMs: null,
        ok: accepted,
        token,
        ...(accepted ? {} : { code: FENCED }),
      });
      await sleep(between(o.holdMs));
      // A client stopped while holding goes away without unlocking: its grant must still be in the
      // database at the end (the checker's end-state check).
      if (this.stopped) break;
      if (o.forgetOneIn > 0 && rand() * o.forgetOneIn < 1) {
        await sleep(between(o.thinkMs));
        continue; // left to expire
      }
      const unlocking = { client: id, op: 'unlock' as const, name, start: performance.now(), timeoutMs: client.timeout, token };
      try {
        const unlocked = await client.unlock(lock); // by token: only this grant
        this.record({ ...unlocking, end: performance.now(), ok: true, unlocked });
      } catch (err) {
        this.record({ ...unlocking, end: performance.now(), ok: false, code: codeOf(err), message: String(err) });
      }
      await sleep(between(o.thinkMs));
    }
  }
}
