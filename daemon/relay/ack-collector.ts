/**
 * JetStream acknowledgements of a round of published events, collected on one inbox
 * subscription, and the JetStream errors the relay tells apart.
 */
import { createInbox, type Msg, type NatsConnection, type Subscription } from 'nats';

/** A JetStream refusal, shaped like nats.js's errors so that the checks below read both. */
export class StreamRefusal extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly api_error?: { code?: number; err_code?: number; description?: string },
  ) {
    super(message);
  }
}

function errorCode(err: unknown): string {
  return String((err as { code?: unknown })?.code ?? '');
}
function apiErrorCode(err: unknown): number | undefined {
  return (err as { api_error?: { err_code?: number } })?.api_error?.err_code;
}
/** nats.js: 503 = no responders, i.e. JetStream is not enabled on the server (or no stream listens). */
export function isJetStreamAbsent(err: unknown): boolean {
  return errorCode(err) === '503' || /jetstream not enabled/i.test(String((err as Error)?.message));
}
export function isStreamNotFound(err: unknown): boolean {
  return apiErrorCode(err) === 10059 || /stream not found/i.test(String((err as Error)?.message));
}
export function isWrongLastMsgId(err: unknown): boolean {
  return apiErrorCode(err) === 10070 || /wrong last msg id/i.test(String((err as Error)?.message));
}

/** Per event of a round: undefined while unacknowledged, null once stored, or the refusal. */
export type AckResult = Error | null | undefined;

/**
 * Publishes a round of events as plain messages whose reply subjects lie under one inbox
 * subscription, and matches the stream's acknowledgements to them by number. (nats.js's
 * `js.publish` makes a request, a timer and, in 2.29, an error object per message: at one event
 * per lock change that was a tenth of the daemon's CPU.) One round is in flight at a time.
 */
export class AckCollector {
  private inbox = '';
  private sub?: Subscription;
  /** Number of the first message of the current round; replies are `<inbox>.<number>`. */
  private base = 0;
  private next = 0;
  private results: AckResult[] = [];
  private missing = 0;
  private finish?: () => void;
  private readonly decoder = new TextDecoder();

  constructor(private readonly nc: NatsConnection) {}

  /** Publish `count` messages (by `send`) and wait for their acknowledgements, at most `timeoutMs`. */
  async round(count: number, timeoutMs: number, send: (i: number, reply: string) => void): Promise<AckResult[]> {
    if (!this.sub || this.sub.isClosed()) {
      this.inbox = createInbox();
      this.sub = this.nc.subscribe(`${this.inbox}.*`, { callback: (_err, msg) => this.acknowledged(msg) });
    }
    this.base = this.next;
    this.next += count;
    this.results = new Array<AckResult>(count);
    this.missing = count;
    const done = new Promise<void>((resolve) => (this.finish = resolve));
    for (let i = 0; i < count; i++) send(i, `${this.inbox}.${this.base + i}`);
    const timer = setTimeout(() => this.abandon(), timeoutMs);
    await done;
    clearTimeout(timer);
    return this.results;
  }

  /** Stop waiting: the acknowledgements still missing will not be waited for (timeout, disconnect). */
  abandon(): void {
    const finish = this.finish;
    this.finish = undefined;
    // Late acknowledgements of an abandoned round are ignored: their numbers are below the next base.
    this.base = this.next;
    finish?.();
  }

  close(): void {
    this.abandon();
    this.sub?.unsubscribe();
    this.sub = undefined;
  }

  private acknowledged(msg: Msg): void {
    const i = Number(msg.subject.slice(this.inbox.length + 1)) - this.base;
    if (!(i >= 0 && i < this.results.length) || this.results[i] !== undefined || !this.finish) return;
    this.results[i] = this.refusal(msg);
    if (--this.missing === 0) this.abandon();
  }

  private refusal(msg: Msg): Error | null {
    if (msg.data.length === 0 && msg.headers?.code === 503) {
      return new StreamRefusal('no responders: JetStream is not enabled or no stream takes the subject', '503');
    }
    const text = this.decoder.decode(msg.data);
    if (!text.includes('"error"')) return null; // {"stream":..,"seq":..}: stored
    try {
      const { error } = JSON.parse(text) as { error?: { code?: number; err_code?: number; description?: string } };
      return error ? new StreamRefusal(error.description ?? 'refused by JetStream', String(error.code ?? ''), error) : null;
    } catch (err) {
      return new StreamRefusal(`unreadable JetStream acknowledgement: ${(err as Error).message}`, 'BAD_ACK');
    }
  }
}
