/**
 * The request side of the daemon: decode, validate, run in a transaction, reply. Every request
 * gets exactly one reply, whatever happens: a result, or a coded error with the NATS service
 * error headers set.
 */
import { hostname } from 'node:os';
import type { Msg, MsgHdrs } from 'nats';
import {
  ERROR_STATUS,
  ErrorCode,
  MAX_PAYLOAD_BYTES,
  type Endpoint,
  type LockRecord,
  type Reply,
  type WireError,
} from '../shared/protocol';
import { RequestInvalid, validateRequest, type NormalizedRequests } from '../shared/validate';
import { isUnavailableError } from './store/database';
import {
  EXPIRED_PAGE,
  LockRuleError,
  deleteExpired,
  getLock,
  isLocked,
  listLocks,
  lockedError,
  renewLock,
  resetLocks,
  setLocks,
  toLockRecord,
  unlock,
  type FirstStatement,
  type Requester,
} from './store/lock-ops';
import type { Batcher } from './store/transaction';
import type { WaitQueue } from './waiters';
import type { Logger } from './logger';

/** Header a client may send to say who it is; recorded in events as the cause's `client`. */
export const CLIENT_HEADER = 'Lockmgr-Client';

/** What the handlers reply: a minimal view of a NATS service message. */
export interface Responder {
  readonly data: Uint8Array;
  readonly headers?: MsgHdrs;
  respond(data: Uint8Array): boolean;
  respondError(code: number, description: string, data?: Uint8Array): boolean;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const fallbackOwner = hostname();

export function encodeReply<T>(reply: Reply<T>): Uint8Array {
  return encoder.encode(JSON.stringify(reply));
}

export class LockService {
  private inflight = 0;
  private idleWaiters: (() => void)[] = [];

  constructor(
    private readonly batcher: Batcher,
    private readonly waiters: WaitQueue,
    private readonly logger: Logger,
  ) {}

  /** Requests being handled right now. */
  get inFlight(): number {
    return this.inflight;
  }

  /** Resolves when no request is in flight. */
  idle(): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Entry point for the NATS service framework: synchronous, never throws. */
  handle(endpoint: Endpoint, msg: Responder | Msg): void {
    this.inflight += 1;
    const started = process.hrtime.bigint();
    this.process(endpoint, msg as Responder)
      .catch((err) => this.fail(msg as Responder, { code: ErrorCode.INTERNAL, message: `internal error: ${(err as Error).message}` }))
      .finally(() => {
        this.inflight -= 1;
        if (this.logger.isDebugEnabled()) {
          this.logger.debug('request', { endpoint, ms: Number(process.hrtime.bigint() - started) / 1e6 });
        }
        if (this.inflight === 0) for (const w of this.idleWaiters.splice(0)) w();
      });
  }

  private async process(endpoint: Endpoint, msg: Responder): Promise<void> {
    let body: unknown;
    if (msg.data.length > MAX_PAYLOAD_BYTES) {
      const problem = `is ${msg.data.length} bytes; the limit is ${MAX_PAYLOAD_BYTES}`;
      return this.fail(msg, { code: ErrorCode.INVALID_REQUEST, message: `request body ${problem}`, details: [{ field: '(body)', problem }] });
    }
    try {
      body = msg.data.length === 0 ? {} : JSON.parse(decoder.decode(msg.data));
    } catch (err) {
      const problem = `is not JSON: ${(err as Error).message}`;
      return this.fail(msg, { code: ErrorCode.INVALID_REQUEST, message: `request body ${problem}`, details: [{ field: '(body)', problem }] });
    }
    let req: NormalizedRequests[Endpoint];
    try {
      req = validateRequest(endpoint, body);
    } catch (err) {
      if (!(err instanceof RequestInvalid)) throw err;
      return this.fail(msg, { code: ErrorCode.INVALID_REQUEST, message: `invalid ${endpoint} request: ${err.message}`, details: err.details });
    }
    try {
      const result = await this.execute(endpoint, req, requesterOf(req, msg.headers));
      msg.respond(encodeReply({ ok: true, result }));
    } catch (err) {
      if (err instanceof LockRuleError) {
        const error: WireError = { code: err.code, message: err.message };
        if (err.lock) error.lock = err.lock;
        return this.fail(msg, error);
      }
      if (isUnavailableError(err)) {
        this.logger.error(`store unavailable: ${(err as Error).message}`);
        return this.fail(msg, { code: ErrorCode.STORE_UNAVAILABLE, message: `the lock database is unavailable, try again: ${(err as Error).message}` });
      }
      this.logger.error(`${endpoint} failed: ${(err as Error).stack ?? err}`);
      return this.fail(msg, { code: ErrorCode.INTERNAL, message: `internal error: ${(err as Error).message}` });
    }
  }

  private fail(msg: Responder, error: WireError): void {
    // A NATS header value cannot hold CR or LF (nats.js throws), and messages may quote the
    // request (JSON.parse errors do): flatten them for the header; the body keeps the original.
    const description = error.message.replace(/[\r\n]+/g, ' ');
    msg.respondError(ERROR_STATUS[error.code], description, encodeReply({ ok: false, error }));
  }

  /** Run one validated request. Exported shape: what goes into `result`. */
  async execute(endpoint: Endpoint, req: NormalizedRequests[Endpoint], who: Requester): Promise<unknown> {
    const b = this.batcher;
    switch (endpoint) {
      case 'set': {
        const set = req as NormalizedRequests['set'];
        // Its rows are taken in name order, so it queues in the batch by its first name in that order.
        const key = set.names.length ? set.names.reduce((m, n) => (n < m ? n : m)) : undefined;
        // One name, created if free, no all-or-nothing savepoint: it starts with the lock insert.
        const single = set.names.length === 1 && set.create && !set.fail;
        const first: FirstStatement | undefined = single ? { kind: 'insert', name: key!, expiresMs: set.expiresMs, who } : undefined;
        return b.run((tx) => setLocks(tx, set, who), key, first);
      }
      case 'get':
        return this.getWithWait(req as NormalizedRequests['get'], who);
      case 'unlock': {
        const r = req as NormalizedRequests['unlock'];
        return { unlocked: await b.run((tx) => unlock(tx, r, who), r.name, { kind: 'unlock', name: r.name, token: r.token }) };
      }
      case 'renew':
        return toLockRecord(await b.run((tx) => renewLock(tx, req as NormalizedRequests['renew'], who), (req as NormalizedRequests['renew']).name));
      case 'is_locked': {
        const row = await b.run((tx) => isLocked(tx, (req as NormalizedRequests['is_locked']).name));
        return { locked: row !== null, lock: row ? toLockRecord(row) : null };
      }
      case 'list':
        return b.run((tx) => listLocks(tx, req as NormalizedRequests['list']));
      case 'clean': {
        let removed = 0;
        for (;;) {
          const rows = await b.run((tx) => deleteExpired(tx, EXPIRED_PAGE, who, 'clean'));
          removed += rows.length;
          if (rows.length < EXPIRED_PAGE) return { removed };
        }
      }
      case 'reset': {
        const rows = await b.run((tx) => resetLocks(tx, who));
        return { removed: rows.length };
      }
    }
  }

  /** get: try now; if held and the request may wait, sleep until a release or expiry, then retry. */
  private async getWithWait(req: NormalizedRequests['get'], who: Requester): Promise<LockRecord> {
    const first: FirstStatement = { kind: 'insert', name: req.name, expiresMs: req.expiresMs, who };
    const attempt = () => this.batcher.run((tx) => getLock(tx, req, who), req.name, first);
    if (req.waitMs === 0) {
      const r = await attempt();
      if ('granted' in r) return toLockRecord(r.granted);
      throw lockedError(r.held);
    }
    const deadline = Date.now() + req.waitMs;
    // Follow releases of the name from before the first look, so none is missed in between.
    const ticket = await this.waiters.follow(req.name);
    try {
      let front = false;
      for (;;) {
        const r = await attempt();
        if ('granted' in r) return toLockRecord(r.granted);
        if (Date.now() >= deadline || this.waiters.closed) throw lockedError(r.held);
        const heldUntil = r.held.locked_until ?? Infinity;
        await this.waiters.wait(ticket, Math.min(deadline, heldUntil + 1), front);
        front = true;
      }
    } finally {
      this.waiters.unfollow(ticket);
    }
  }
}

function requesterOf(req: NormalizedRequests[Endpoint], hdrs?: MsgHdrs): Requester {
  const r = req as { lockedBy?: string | null; process?: number | null };
  return {
    lockedBy: r.lockedBy ?? fallbackOwner,
    process: r.process ?? null,
    client: hdrs?.get(CLIENT_HEADER) || null,
  };
}
