/**
 * The sweeper: every `intervalMs` it removes the expired locks, a page per transaction, recording
 * an `expired` event for each, so expiries are published without anyone calling; and the recorded
 * request outcomes kept past their time.
 */
import { hostname } from 'node:os';
import type { Batcher, Operation } from './batcher';
import { sleep, type Cancel, type Clock } from './clock';
import { EXPIRED_PAGE, ops } from './lock-ops';
import type { Logger } from './logger';
import type { Requester } from './store/store';

/** After each full page of expired locks, the sweeper pauses this fraction of the page's time. */
const SWEEP_PAUSE = 1;
/** Outcomes (and lapsed sessions) removed per transaction: small rows, no events. */
const OUTCOMES_PAGE = 2000;

export class Sweeper {
  private cancelTimer?: Cancel;
  private sweeping?: Promise<void>;
  private stopped = false;
  private readonly who: Requester = { lockedBy: hostname(), process: process.pid, client: null };
  /** When the last sweep that removed every expired lock began (every lock expired before it is gone). */
  private clearedAt?: number;

  constructor(
    private readonly batcher: Batcher,
    private readonly intervalMs: number,
    private readonly logger: Logger,
    private readonly clock: Clock,
  ) {}

  start(): void {
    this.clearedAt = this.clock.now();
    this.cancelTimer = this.clock.schedule(() => this.tick(), this.intervalMs);
  }

  /** ms since the start of the last sweep that removed every expired lock; undefined before start. */
  get lagMs(): number | undefined {
    return this.clearedAt === undefined ? undefined : this.clock.now() - this.clearedAt;
  }

  /** No more sweeps; resolves once the one running (if any) has finished. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.cancelTimer?.();
    await this.sweeping;
  }

  private tick(): void {
    this.sweeping = this.sweep().finally(() => {
      this.sweeping = undefined;
      if (!this.stopped) this.cancelTimer = this.clock.schedule(() => this.tick(), this.intervalMs);
    });
  }

  /**
   * Remove every expired lock, a page at a time, then the outcomes kept past their time and the
   * sessions that lapsed (their locks expire by themselves, a lock-delay later).
   */
  private async sweep(): Promise<void> {
    await this.sweepLocks();
    await this.sweepRows('request outcomes', ops.deleteExpiredOutcomes(OUTCOMES_PAGE));
    await this.sweepRows('lapsed sessions', ops.deleteExpiredSessions(OUTCOMES_PAGE));
  }

  /** Run `op` (a removal of up to OUTCOMES_PAGE rows) until it removes fewer, at most 10 times. */
  private async sweepRows(what: string, op: Operation<number>): Promise<void> {
    try {
      for (let page = 0; page < 10 && !this.stopped; page++) {
        if ((await this.batcher.run(op)) < OUTCOMES_PAGE) return;
      }
    } catch (err) {
      this.logger.warn(`sweep of ${what} failed, will retry: ${(err as Error).message}`);
    }
  }

  private async sweepLocks(): Promise<void> {
    const began = this.clock.now();
    try {
      for (;;) {
        const started = performance.now();
        const rows = await this.batcher.run(ops.deleteExpired(EXPIRED_PAGE, this.who, 'sweeper'));
        if (rows.length > 0) this.logger.debug('swept expired locks', { count: rows.length });
        if (rows.length < EXPIRED_PAGE) {
          this.clearedAt = began;
          return;
        }
        if (this.stopped) return;
        // A long run of expiries (thousands at once): leave requests, and the relay publishing
        // the expiries, a share of the thread between pages.
        await sleep(this.clock, (performance.now() - started) * SWEEP_PAUSE);
      }
    } catch (err) {
      this.logger.warn(`expiry sweep failed, will retry: ${(err as Error).message}`);
    }
  }
}
