/**
 * What each endpoint does with a validated request: one typed handler per endpoint, whose result
 * type is the protocol's (`Api[E]['result']`), so a reply that does not match the protocol does
 * not compile.
 */
import { hostname } from 'node:os';
import type { Api, Endpoint, LockRecord } from '../shared/protocol';
import type { NormalizedRequests } from '../shared/validate';
import type { Batcher } from './batcher';
import type { Clock } from './clock';
import { toLockRecord } from './lock-records';
import { EXPIRED_PAGE, lockedError, ops } from './lock-ops';
import type { Requester } from './store/store';
import type { WaitQueue } from './waiters';

export interface RequestContext {
  who: Requester;
  /** Names the request in the diagnostics (the request's message). */
  tag?: object;
}

export type Handler<E extends Endpoint> = (req: NormalizedRequests[E], ctx: RequestContext) => Promise<Api[E]['result']>;
export type Handlers = { [E in Endpoint]: Handler<E> };

/** The seed's default owner: requests that name none are recorded as this host's. */
const FALLBACK_OWNER = hostname();

/** Who a request says it is (`locked_by`, process id) and which NATS client sent it. */
export function requesterOf(req: NormalizedRequests[Endpoint], client: string | null): Requester {
  const r = req as { lockedBy?: string | null; process?: number | null };
  return { lockedBy: r.lockedBy ?? FALLBACK_OWNER, process: r.process ?? null, client };
}

export function lockHandlers(batcher: Batcher, waiters: WaitQueue, clock: Clock): Handlers {
  /** get: try now; if held and the request may wait, sleep until a release or expiry, then retry. */
  async function getWithWait(req: NormalizedRequests['get'], ctx: RequestContext): Promise<LockRecord> {
    const op = ops.get(req, ctx.who);
    if (req.waitMs === 0) {
      const r = await batcher.run(op, ctx.tag);
      if ('granted' in r) return toLockRecord(r.granted);
      throw lockedError(r.held);
    }
    const deadline = clock.now() + req.waitMs;
    // Follow releases of the name from before the first look, so none is missed in between.
    const ticket = await waiters.follow(req.name);
    try {
      let front = false;
      for (;;) {
        const r = await batcher.run(op, ctx.tag);
        if ('granted' in r) return toLockRecord(r.granted);
        if (clock.now() >= deadline || waiters.closed) throw lockedError(r.held);
        const heldUntil = r.held.locked_until ?? Infinity;
        await waiters.wait(ticket, Math.min(deadline, heldUntil + 1), front);
        front = true;
      }
    } finally {
      waiters.unfollow(ticket);
    }
  }

  return {
    set: (req, ctx) => batcher.run(ops.set(req, ctx.who), ctx.tag),
    get: getWithWait,
    unlock: async (req, ctx) => ({ unlocked: await batcher.run(ops.unlock(req, ctx.who), ctx.tag) }),
    renew: async (req, ctx) => toLockRecord(await batcher.run(ops.renew(req, ctx.who), ctx.tag)),
    is_locked: async (req, ctx) => {
      const row = await batcher.run(ops.isLocked(req.name), ctx.tag);
      return { locked: row !== null, lock: row ? toLockRecord(row) : null };
    },
    list: (req, ctx) => batcher.run(ops.list(req), ctx.tag),
    clean: async (_req, ctx) => {
      let removed = 0;
      for (;;) {
        const rows = await batcher.run(ops.deleteExpired(EXPIRED_PAGE, ctx.who, 'clean'), ctx.tag);
        removed += rows.length;
        if (rows.length < EXPIRED_PAGE) return { removed };
      }
    },
    reset: async (_req, ctx) => ({ removed: (await batcher.run(ops.reset(ctx.who), ctx.tag)).length }),
  };
}
