/**
 * Diagnostic hooks: the daemon reports what it does on `node:diagnostics_channel` channels, for
 * tools such as the bench's per-request breakdown. Nothing is built or timed unless a channel has
 * a subscriber. Subscribe with `diagnostics_channel.subscribe(CHANNELS.request, fn)`.
 */
import { channel } from 'node:diagnostics_channel';

export const CHANNELS = {
  /** A request: {phase: 'received' | 'replying' | 'replied', endpoint, msg}. */
  request: 'lockmgr:request',
  /**
   * A batch transaction: {phase: 'start', trace, size} before it begins, {phase: 'end', trace,
   * ok} after it committed or failed. `trace` is one object per attempt.
   */
  transaction: 'lockmgr:transaction',
  /**
   * An operation: {phase: 'queued', tag} when handed to the batcher; {phase: 'start' | 'end', tag,
   * trace} around its statements inside the transaction `trace`. `tag` is what the caller gave
   * (the request's message for requests).
   */
  operation: 'lockmgr:operation',
  /** A SQL statement of the transaction `trace` ran: {trace, sql, us}. */
  statement: 'lockmgr:statement',
  /** The event relay published a round: {events, us}. */
  publish: 'lockmgr:publish',
} as const;

export const requestChannel = channel(CHANNELS.request);
export const transactionChannel = channel(CHANNELS.transaction);
export const operationChannel = channel(CHANNELS.operation);
export const statementChannel = channel(CHANNELS.statement);
export const publishChannel = channel(CHANNELS.publish);

/** Microseconds on the monotonic clock. */
export function micros(): number {
  return Number(process.hrtime.bigint()) / 1e3;
}

/** Times a statement of the transaction `trace` and reports it. */
export type StatementTracer = <T>(sql: string, run: () => Promise<T>) => Promise<T>;

/** A tracer for the transaction `trace`, or undefined when nobody listens. */
export function statementTracer(trace: object | undefined): StatementTracer | undefined {
  if (!trace || !statementChannel.hasSubscribers) return undefined;
  return async (sql, run) => {
    const started = micros();
    try {
      return await run();
    } finally {
      statementChannel.publish({ trace, sql, us: micros() - started });
    }
  };
}
