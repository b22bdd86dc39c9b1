/**
 * The request side of the daemon: decode, validate, hand to the endpoint's handler, reply. Every
 * request gets exactly one reply, whatever happens: a result, or a coded error with the NATS
 * service error headers set. (A get that asked for progress may get a WaitingNotice before it.)
 */
import type { Msg, MsgHdrs } from 'nats';
import {
  bodyBytes,
  CLIENT_HEADER,
  ERROR_STATUS,
  ErrorCode,
  MAX_PAYLOAD_BYTES,
  type Api,
  type Endpoint,
  type Reply,
  type WaitingNotice,
  type WireError,
} from '../shared/protocol';
import { RequestInvalid, validateRequest, type NormalizedRequests } from '../shared/validate';
import { requestChannel } from './diagnostics';
import { DaemonStopping, requesterOf, type Handlers, type RequestContext } from './handlers';
import { LockRuleError } from './lock-ops';
import type { Logger } from './logger';
import { CommitInDoubt, RowBusy, StoreUnavailable } from './store/store';

/** What the handlers reply through: a minimal view of a NATS service message. */
export interface Responder {
  readonly data: Uint8Array;
  /** The client's reply subject. */
  readonly reply?: string;
  readonly headers?: MsgHdrs;
  respond(data: Uint8Array): boolean;
  respondError(code: number, description: string, data?: Uint8Array): boolean;
}

const decoder = new TextDecoder();

const WAITING_NOTICE = bodyBytes(JSON.stringify({ waiting: true } satisfies WaitingNotice));

/** How a request ended: `ok`, or the code of the error it was answered with. */
export type Outcome = 'ok' | ErrorCode;

/** Told of every request once it is answered, with how long it took in all (ms). */
export type RequestObserver = (endpoint: Endpoint, outcome: Outcome, ms: number) => void;

export function encodeReply<E extends Endpoint>(reply: Reply<Api[E]['result']>): Uint8Array {
  return bodyBytes(JSON.stringify(reply));
}

export class LockService {
  private inflight = 0;
  private idleWaiters: (() => void)[] = [];

  constructor(
    private readonly handlers: Handlers,
    private readonly logger: Logger,
    /** Why this daemon must not serve right now (another authority on the prefix), or null. */
    private readonly refusal: () => WireError | null = () => null,
    /**
     * Sends `data` as a request to a client's reply subject: `gone` when nobody listens there any
     * more ("no responders"), else `sent`. Without it, grants after a wait are plain replies.
     */
    private readonly requestTo?: (subject: string, data: Uint8Array) => Promise<'sent' | 'gone'>,
    private readonly observe?: RequestObserver,
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
    const started = performance.now();
    const original = msg as Responder;
    const responder = requestChannel.hasSubscribers ? traced(endpoint, original) : original;
    let outcome: Outcome = ErrorCode.INTERNAL;
    void this.process(endpoint, responder, original)
      .then(
        (o) => (outcome = o),
        (err: unknown) =>
          (outcome = this.fail(responder, { code: ErrorCode.INTERNAL, message: `internal error: ${(err as Error).message}` })),
      )
      .finally(() => {
        this.inflight -= 1;
        if (this.inflight === 0) for (const w of this.idleWaiters.splice(0)) w();
        // The whole request, its asynchronous work and waits included.
        const ms = performance.now() - started;
        this.observe?.(endpoint, outcome, ms);
        if (this.logger.isDebugEnabled()) this.logger.debug('request', { endpoint, ms });
      });
  }

  /** `original` is the message as it came (it names the request in the diagnostics). */
  private async process<E extends Endpoint>(endpoint: E, msg: Responder, original: Responder): Promise<Outcome> {
    const refused = this.refusal();
    if (refused) return this.fail(msg, refused);
    if (msg.data.length > MAX_PAYLOAD_BYTES) {
      const problem = `is ${msg.data.length} bytes; the limit is ${MAX_PAYLOAD_BYTES}`;
      return this.fail(msg, {
        code: ErrorCode.INVALID_REQUEST,
        message: `request body ${problem}`,
        details: [{ field: '(body)', problem }],
      });
    }
    let body: unknown;
    try {
      body = msg.data.length === 0 ? {} : JSON.parse(decoder.decode(msg.data));
    } catch (err) {
      const problem = `is not JSON: ${(err as Error).message}`;
      return this.fail(msg, {
        code: ErrorCode.INVALID_REQUEST,
        message: `request body ${problem}`,
        details: [{ field: '(body)', problem }],
      });
    }
    let req;
    try {
      req = validateRequest(endpoint, body);
    } catch (err) {
      if (!(err instanceof RequestInvalid)) throw err;
      return this.fail(msg, {
        code: ErrorCode.INVALID_REQUEST,
        message: `invalid ${endpoint} request: ${err.message}`,
        details: err.details,
      });
    }
    const handler: Handlers[E] = this.handlers[endpoint];
    try {
      const ctx: RequestContext = { who: requesterOf(req, msg.headers?.get(CLIENT_HEADER) || null), tag: original };
      if ((req as Partial<NormalizedRequests['get']>).progress) {
        ctx.waiting = () => void original.respond(WAITING_NOTICE);
        const replyTo = original.reply;
        const requestTo = this.requestTo;
        if (replyTo && requestTo) ctx.deliver = (lock) => requestTo(replyTo, encodeReply<'get'>({ ok: true, result: lock }));
      }
      const result = await handler(req, ctx);
      if (!ctx.delivered) msg.respond(encodeReply<E>({ ok: true, result }));
      return 'ok';
    } catch (err) {
      if (err instanceof LockRuleError) {
        const error: WireError = { code: err.code, message: err.message };
        if (err.lock) error.lock = err.lock;
        return this.fail(msg, error);
      }
      if (err instanceof CommitInDoubt) {
        this.logger.error(`commit in doubt: ${err.message}`);
        return this.fail(msg, {
          code: ErrorCode.OUTCOME_UNKNOWN,
          message: `the lock database stopped answering while committing: send the request again with the same request_id to learn whether it was done (${err.message})`,
        });
      }
      if (err instanceof StoreUnavailable) {
        this.logger.error(`store unavailable: ${err.message}`);
        return this.fail(msg, {
          code: ErrorCode.STORE_UNAVAILABLE,
          message: `the lock database is unavailable, try again: ${err.message}`,
        });
      }
      if (err instanceof DaemonStopping) {
        return this.fail(msg, { code: ErrorCode.DAEMON_STOPPING, message: err.message });
      }
      if (err instanceof RowBusy) {
        // Acquiring a name whose row another session holds: as good as held. Anything else: retry.
        const code = endpoint === 'get' || endpoint === 'set' ? ErrorCode.LOCKED : ErrorCode.STORE_UNAVAILABLE;
        return this.fail(msg, { code, message: `${err.message}; try again` });
      }
      this.logger.error(`${endpoint} failed: ${(err as Error).stack ?? String(err)}`);
      return this.fail(msg, { code: ErrorCode.INTERNAL, message: `internal error: ${(err as Error).message}` });
    }
  }

  /** Answer with `error`; returns its code. */
  private fail(msg: Responder, error: WireError): ErrorCode {
    // A NATS header value cannot hold CR or LF (nats.js throws), and messages may quote the
    // request (JSON.parse errors do): flatten them for the header; the body keeps the original.
    const description = error.message.replace(/[\r\n]+/g, ' ');
    msg.respondError(ERROR_STATUS[error.code], description, bodyBytes(JSON.stringify({ ok: false, error } satisfies Reply<never>)));
    return error.code;
  }
}

/** The message, reporting its arrival and its reply on the request diagnostics channel. */
function traced(endpoint: Endpoint, msg: Responder): Responder {
  requestChannel.publish({ phase: 'received', endpoint, msg });
  const reply =
    (send: (...args: never[]) => boolean) =>
    (...args: never[]): boolean => {
      requestChannel.publish({ phase: 'replying', endpoint, msg });
      const sent = send(...args);
      requestChannel.publish({ phase: 'replied', endpoint, msg });
      return sent;
    };
  return {
    data: msg.data,
    headers: msg.headers,
    respond: reply(msg.respond.bind(msg) as (...args: never[]) => boolean),
    respondError: reply(msg.respondError.bind(msg) as (...args: never[]) => boolean),
  };
}
