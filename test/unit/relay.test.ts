/**
 * EventRelay (daemon/relay/relay.ts): how the outbox reaches NATS. Over the in-memory store with
 * fake publishers and a ManualClock: delivery in seq order from memory, backoff and its probe,
 * partial acknowledgements, offline mode, the core NATS fallback, standby behind another daemon's
 * relay lease, flush and stop. Time moves only through the clock; settling uses setImmediate
 * turns, never timers.
 */
import { toLockRecord } from '../../daemon/lock-records';
import { createLogger } from '../../daemon/logger';
import { JetStreamAbsent, type PublishResult, type Publisher, type StreamPublisher } from '../../daemon/relay/publisher';
import { EventRelay, type RelayOptions } from '../../daemon/relay/relay';
import type { CommittedEvent, OutboxEvent } from '../../daemon/store/store';
import type { EventCause } from '../../shared/events';
import { ManualClock } from '../helpers/manual-clock';
import { MemoryStore, type MemoryStoreOptions } from '../helpers/memory-store';

const who = { lockedBy: 'tester', process: 1, client: null };
const cause: EventCause = { locked_by: 'tester', process_id: 1, client: null, operation: 'test' };
const logger = createLogger({ silent: true });
const OPTIONS: RelayOptions = {
  stream: 'EVENTS',
  subjects: 'lockmgr.events.>',
  retryMinMs: 1000,
  retryMaxMs: 8000,
  standbyRetryMs: 2000,
  pollIntervalMs: 1000,
};

type Round = (events: readonly OutboxEvent[]) => PublishResult;

/** Core NATS: takes everything it is given. */
class FakeCore implements Publisher {
  readonly rounds: OutboxEvent[][] = [];
  async publish(events: readonly OutboxEvent[]): Promise<PublishResult> {
    this.rounds.push([...events]);
    return { delivered: [...events] };
  }
}

/** A JetStream stream: keeps what it acknowledged; rounds can be scripted to fail. */
class FakeStream implements StreamPublisher {
  readonly rounds: OutboxEvent[][] = [];
  /** When each round was published, on the test's clock. */
  readonly times: number[] = [];
  /** Events the stream holds, in the order it stored them. */
  readonly stored: OutboxEvent[] = [];
  /** What the next rounds do instead of acknowledging everything. */
  readonly script: Round[] = [];
  prepareError?: unknown;
  prepareCalls = 0;
  abandonCalls = 0;
  closeCalls = 0;

  constructor(private readonly clock: ManualClock) {}

  async prepare(): Promise<void> {
    this.prepareCalls += 1;
    if (this.prepareError !== undefined) throw this.prepareError;
  }

  async publish(events: readonly OutboxEvent[]): Promise<PublishResult> {
    this.rounds.push([...events]);
    this.times.push(this.clock.now());
    const result = this.script.shift()?.(events) ?? { delivered: [...events] };
    this.stored.push(...result.delivered);
    return result;
  }

  async storedIds(): Promise<Set<string>> {
    return new Set(this.stored.map((e) => e.id));
  }

  abandon(): void {
    this.abandonCalls += 1;
  }

  close(): void {
    this.closeCalls += 1;
  }

  /** The next round is acknowledged up to `n` events, then fails (n = 0: nothing gets through). */
  failNext(n = 0): void {
    this.script.push((events) => ({ delivered: events.slice(0, n), error: new Error('no acknowledgement') }));
  }

  /** The next round is stored but its acknowledgements are lost (a server died after storing). */
  loseAcksNext(): void {
    this.script.push((events) => {
      this.stored.push(...events);
      return { delivered: [], error: new Error('acknowledgements lost') };
    });
  }

  /** Names per round. */
  names(): string[][] {
    return this.rounds.map((r) => r.map((e) => e.name));
  }
}

describe('EventRelay', () => {
  let clock: ManualClock;
  let store: MemoryStore;
  let stream: FakeStream;
  let core: FakeCore;
  let relay: EventRelay;

  function setup(storeOptions: MemoryStoreOptions = {}, withStream = true, relayOptions: Partial<RelayOptions> = {}): void {
    clock = new ManualClock();
    store = new MemoryStore({ clock, ...storeOptions });
    stream = new FakeStream(clock);
    core = new FakeCore();
    relay = new EventRelay(store, { stream: withStream ? stream : null, core }, { ...OPTIONS, ...relayOptions }, logger, clock);
  }

  /** Commit one `created` event per name and hand the events to the relay, as the batcher does. */
  async function commit(...names: string[]): Promise<CommittedEvent[]> {
    const { events } = await store.transaction(async (tx) => {
      for (const name of names) tx.emit('created', toLockRecord((await tx.insertLock(name, null, who))!), cause);
    });
    relay.committed(events);
    await clock.flush();
    return events;
  }

  /** Commit without telling the relay: another daemon writing to the shared outbox. */
  async function commitElsewhere(...names: string[]): Promise<void> {
    await store.transaction(async (tx) => {
      for (const name of names) tx.emit('created', toLockRecord((await tx.insertLock(name, null, who))!), cause);
    });
  }

  /** A change of a held lock by this daemon: a `renewed` event of `name`. */
  async function commitRenewal(name: string): Promise<CommittedEvent[]> {
    const { events } = await store.transaction(async (tx) => tx.emit('renewed', toLockRecord(store.locks.get(name)!), cause));
    relay.committed(events);
    await clock.flush();
    return events;
  }

  /** A `renewed` event of `name` by another daemon (not handed to this relay). */
  async function commitRenewalElsewhere(name: string): Promise<void> {
    await store.transaction(async (tx) => tx.emit('renewed', toLockRecord(store.locks.get(name)!), cause));
  }

  async function start(): Promise<void> {
    await relay.start();
    await clock.flush();
  }

  beforeEach(() => setup());
  afterEach(async () => {
    // A round may be paused between pages on the clock: let it end so that stop() can return.
    let stopped = false;
    const stopping = relay.stop().then(() => (stopped = true));
    for (let i = 0; i < 100 && !stopped; i++) await clock.advance(1000);
    await stopping;
  });

  it('publishes committed events in seq order, from memory, and removes them from the outbox', async () => {
    await start();
    expect(relay.state).toBe('relaying');
    expect(relay.deliveryMode).toBe('jetstream');
    const read = jest.spyOn(store.lease, 'read');
    const first = await commit('a', 'b');
    const second = await commit('c');
    expect(stream.names()).toEqual([['a', 'b'], ['c']]);
    // The very events the transactions returned: nothing was read back from the outbox.
    expect(stream.rounds.flat()).toEqual([...first, ...second]);
    expect(stream.rounds[0]![0]).toBe(first[0]);
    expect(read).not.toHaveBeenCalled();
    const seqs = stream.stored.map((e) => e.seq);
    expect(seqs).toEqual([...seqs].sort((x, y) => x - y));
    expect(await store.countOutbox()).toBe(0);
  });

  it('a backlog goes out in pages of 250, pausing between full pages on the clock', async () => {
    await start();
    const names = Array.from({ length: 600 }, (_, i) => `n${String(i).padStart(3, '0')}`);
    await commit(...names);
    // The first page went out; the next waits for the pause (half the page's time) to pass.
    expect(stream.rounds.map((r) => r.length)).toEqual([250]);
    await clock.advance(1000);
    expect(stream.rounds.map((r) => r.length)).toEqual([250, 250, 100]);
    expect(stream.stored.map((e) => e.name)).toEqual(names);
    expect(await store.countOutbox()).toBe(0);
  });

  it('stop() during a backlog ends the round after the page in flight: the rest waits in the outbox', async () => {
    await start();
    await commit(...Array.from({ length: 600 }, (_, i) => `s${String(i).padStart(3, '0')}`));
    expect(stream.rounds.map((r) => r.length)).toEqual([250]);
    const stopping = relay.stop();
    await clock.advance(1000); // the pause between pages ends; the round sees the stop
    await stopping;
    expect(stream.rounds.map((r) => r.length)).toEqual([250]);
    expect(await store.countOutbox()).toBe(350);
  });

  it('delivers at start what was waiting in the outbox from before', async () => {
    await commitElsewhere('old1', 'old2');
    await start();
    expect(stream.names()).toEqual([['old1', 'old2']]);
    expect(await store.countOutbox()).toBe(0);
  });

  it('a failed round: backoff, nothing lost; after the delay one event probes, then full pages, back to relaying', async () => {
    await start();
    stream.failNext();
    await commit('a', 'b', 'c');
    expect(relay.state).toBe('backoff');
    expect(await store.countOutbox()).toBe(3);
    // Commits during backoff wait in the outbox too.
    await commit('d');
    expect(stream.names()).toEqual([['a', 'b', 'c']]);
    // The first wait is retryMinMs with ±20% jitter: not before 800 ms, by 1200 ms.
    await clock.advance(799);
    expect(stream.rounds).toHaveLength(1);
    // (A little past 1200 ms: the pause between the probe and the next page is on the clock too.)
    await clock.advance(500);
    expect(stream.names()).toEqual([['a', 'b', 'c'], ['a'], ['b', 'c', 'd']]);
    expect(relay.state).toBe('relaying');
    expect(await store.countOutbox()).toBe(0);
    expect(stream.stored.map((e) => e.name)).toEqual(['a', 'b', 'c', 'd']);
    // The stream was checked again before the retry.
    expect(stream.prepareCalls).toBeGreaterThanOrEqual(3);
  });

  it('the backoff wait doubles while rounds keep failing', async () => {
    await start();
    stream.failNext();
    stream.failNext();
    await commit('a');
    await clock.advance(1200);
    expect(stream.rounds).toHaveLength(2);
    expect(relay.state).toBe('backoff');
    await clock.advance(2500);
    expect(stream.rounds).toHaveLength(3);
    expect(relay.state).toBe('relaying');
    expect(await store.countOutbox()).toBe(0);
    // Waits of retryMinMs, then twice that, each with ±20% jitter.
    const [t1, t2, t3] = stream.times as [number, number, number];
    expect(t2 - t1).toBeGreaterThanOrEqual(800);
    expect(t2 - t1).toBeLessThanOrEqual(1200);
    expect(t3 - t2).toBeGreaterThanOrEqual(1600);
    expect(t3 - t2).toBeLessThanOrEqual(2400);
  });

  it('a partial acknowledgement keeps the rest for the next round: no duplicates, no loss', async () => {
    await start();
    stream.failNext(2);
    const events = await commit('a', 'b', 'c', 'd', 'e');
    expect(relay.state).toBe('backoff');
    // The acknowledged prefix left the outbox at once.
    expect(await store.countOutbox()).toBe(3);
    await clock.advance(1300);
    expect(stream.names()).toEqual([['a', 'b', 'c', 'd', 'e'], ['c'], ['d', 'e']]);
    expect(stream.stored.map((e) => e.id)).toEqual(events.map((e) => e.id));
    expect(await store.countOutbox()).toBe(0);
  });

  it('events the stream stored without acknowledging are not sent again after the failure', async () => {
    await start();
    stream.loseAcksNext();
    const events = await commit('a', 'b');
    expect(relay.state).toBe('backoff');
    await commit('c');
    await clock.advance(1300);
    // Reconciled with the stream: a and b were dropped from the outbox, only c went out again.
    expect(stream.names()).toEqual([['a', 'b'], ['c']]);
    expect(stream.stored.map((e) => e.name)).toEqual(['a', 'b', 'c']);
    expect(stream.stored[0]!.id).toBe(events[0]!.id);
    expect(await store.countOutbox()).toBe(0);
  });

  it('disconnected(): offline, nothing published until reconnected(), then it delivers', async () => {
    await start();
    relay.disconnected();
    expect(relay.state).toBe('offline');
    expect(stream.abandonCalls).toBe(1);
    await commit('a', 'b');
    await clock.advance(60_000);
    expect(stream.rounds).toEqual([]);
    expect(await store.countOutbox()).toBe(2);
    relay.reconnected();
    await clock.flush();
    expect(relay.state).toBe('relaying');
    expect(stream.names()).toEqual([['a', 'b']]);
    expect(await store.countOutbox()).toBe(0);
  });

  it('a disconnect during backoff comes back in backoff, and retries at once', async () => {
    await start();
    stream.failNext();
    await commit('a', 'b');
    relay.disconnected();
    relay.reconnected();
    await clock.flush();
    // No wait for the backoff timer: one event probes at once...
    expect(stream.names()).toEqual([['a', 'b'], ['a']]);
    // ...then, after the pause between pages (on the clock), the rest.
    await clock.advance(1);
    expect(stream.names()).toEqual([['a', 'b'], ['a'], ['b']]);
    expect(relay.state).toBe('relaying');
    expect(await store.countOutbox()).toBe(0);
  });

  it('without JetStream on the server at start, events go out on core NATS', async () => {
    stream.prepareError = new JetStreamAbsent('JetStream not enabled');
    await start();
    expect(relay.deliveryMode).toBe('core');
    await commit('a', 'b');
    expect(core.rounds.map((r) => r.map((e) => e.name))).toEqual([['a', 'b']]);
    expect(stream.rounds).toEqual([]);
    expect(await store.countOutbox()).toBe(0);
  });

  it('with JetStream off (no stream publisher), events go out on core NATS', async () => {
    setup({}, false);
    await start();
    expect(relay.deliveryMode).toBe('core');
    await commit('a');
    expect(core.rounds.flat().map((e) => e.name)).toEqual(['a']);
  });

  it('another JetStream failure at start is not a fallback: events wait in the outbox, then go to the stream', async () => {
    stream.prepareError = new Error('timeout');
    await start();
    expect(relay.deliveryMode).toBe('jetstream');
    await commit('a');
    expect(core.rounds).toEqual([]);
    expect(stream.rounds).toEqual([]);
    expect(relay.state).toBe('backoff');
    stream.prepareError = undefined;
    await clock.advance(1300);
    expect(stream.names()).toEqual([['a']]);
    expect(relay.state).toBe('relaying');
  });

  describe('several daemons on one outbox (not the sole writer)', () => {
    // The store writes its events as 'memory-daemon'; this relay's daemon is another one unless a test says so.
    beforeEach(() => setup({ soleWriter: false, leaseAvailable: false }, true, { daemonId: 'this-daemon', staleMs: 2000 }));

    it('a daemon on standby publishes its own events at once, without the lease; it takes the lease once free', async () => {
      await start();
      expect(relay.state).toBe('standby');
      expect(store.lease.acquireCalls).toBe(1);
      await commit('a');
      expect(stream.names()).toEqual([['a']]);
      expect(await store.countOutbox()).toBe(0);
      // The other daemon lets go; the next try comes standbyRetryMs after the last one.
      store.lease.available = true;
      await clock.advance(1999);
      expect(store.lease.acquireCalls).toBe(1);
      expect(relay.state).toBe('standby');
      await clock.advance(1);
      expect(store.lease.held).toBe(true);
      expect(relay.state).toBe('relaying');
    });

    it("an event waits until its lock's event before it (another daemon's, still in the outbox) has left it", async () => {
      await start();
      await commitElsewhere('x');
      const [renewal] = await commitRenewal('x');
      expect(renewal!.prev).toBe(store.outbox[0]!.seq);
      expect(stream.rounds).toEqual([]);
      await clock.advance(100);
      expect(stream.rounds).toEqual([]);
      // The other daemon delivers its event and removes the row: this one goes at the next look.
      store.delivered([store.outbox[0]!.seq]);
      await clock.advance(25);
      expect(stream.rounds.map((r) => r.map((e) => `${e.type} ${e.name}`))).toEqual([['renewed x']]);
      expect(await store.countOutbox()).toBe(0);
    });

    it("a lock's own events go one per round, each after the one before it was acknowledged; other locks' beside them", async () => {
      setup({ soleWriter: false, leaseAvailable: false }, true, { daemonId: 'this-daemon' });
      stream.failNext(0); // nothing acknowledged: the first commit's events wait
      await start();
      await commit('a', 'b');
      await commitRenewal('a');
      await commitRenewal('a');
      await clock.advance(1000); // the backoff's probe (one event), then pages
      await clock.advance(8000);
      const rounds = stream.rounds.map((r) => r.map((e) => `${e.type} ${e.name}`));
      expect(rounds.slice(1).flat()).toEqual(['created a', 'created b', 'renewed a', 'renewed a']);
      for (const round of rounds) expect(new Set(round.map((e) => e.split(' ')[1])).size).toBe(round.length);
      expect(await store.countOutbox()).toBe(0);
    });

    it("a lock's events waiting one behind the other go in consecutive rounds, without waiting between them", async () => {
      await start();
      // Three changes of one lock committed before the relay's round runs.
      const { events } = await store.transaction(async (tx) => {
        const row = (await tx.insertLock('a', null, who))!;
        tx.emit('created', toLockRecord(row), cause);
        tx.emit('renewed', toLockRecord(row), cause);
        tx.emit('renewed', toLockRecord(row), cause);
      });
      const committedAt = clock.now();
      relay.committed(events);
      await clock.flush();
      // Between rounds only the loop's pause (half a round's own time: under 1 ms here), not the 25 ms of a held-back retry.
      await clock.advance(1);
      await clock.advance(1);
      expect(stream.rounds.map((r) => r.map((e) => `${e.type} ${e.name}`))).toEqual([['created a'], ['renewed a'], ['renewed a']]);
      expect(Math.max(...stream.times) - committedAt).toBeLessThanOrEqual(2);
      expect(await store.countOutbox()).toBe(0);
    });

    it('the relaying daemon delivers the rows their writer left behind once they are stale, one per lock per round', async () => {
      store.lease.available = true;
      await start();
      expect(relay.state).toBe('relaying');
      await commitElsewhere('x', 'y');
      await commitRenewalElsewhere('x');
      await clock.advance(2000);
      expect(stream.rounds).toEqual([]); // the writer may still deliver them
      await clock.advance(1000); // the next look, past 2000 ms: stale
      expect(stream.names()).toEqual([['x', 'y']]);
      await clock.advance(25); // more may wait: looked at again soon
      const names = stream.rounds.map((r) => r.map((e) => `${e.type} ${e.name}`));
      expect(names[0]).toEqual(['created x', 'created y']);
      expect(names.flat()).toEqual(['created x', 'created y', 'renewed x']);
      expect(await store.countOutbox()).toBe(0);
    });

    it("this daemon's own rows that memory does not hold (a commit whose answer was lost) go without waiting", async () => {
      setup({ soleWriter: false, leaseAvailable: true }, true, { daemonId: 'memory-daemon', staleMs: 2000 });
      await start();
      await commitElsewhere('x'); // written by this daemon, never handed to the relay
      await clock.advance(1000);
      expect(stream.names()).toEqual([['x']]);
    });

    it('after a failure, events another daemon delivered meanwhile are dropped, not sent again', async () => {
      await start();
      stream.failNext(0);
      await commit('a', 'b');
      expect(relay.state).toBe('backoff');
      // The relaying daemon delivered a's row in this one's place.
      store.delivered([store.outbox[0]!.seq]);
      await clock.advance(1000);
      await clock.advance(8000);
      expect(stream.stored.map((e) => e.name)).toEqual(['b']);
      expect(await store.countOutbox()).toBe(0);
    });

    it('after a failure, an event committed while the outbox is being asked about is still sent', async () => {
      await start();
      stream.failNext(0);
      await commit('a');
      expect(relay.state).toBe('backoff');
      // This daemon commits 'c' while its look for rows delivered elsewhere is out: the answer cannot speak for 'c'.
      const outboxHas = store.outboxHas.bind(store);
      let committedMeanwhile = false;
      store.outboxHas = async (seqs) => {
        const present = await outboxHas(seqs);
        if (!committedMeanwhile) {
          committedMeanwhile = true;
          const { events } = await store.transaction(async (tx) =>
            tx.emit('created', toLockRecord((await tx.insertLock('c', null, who))!), cause),
          );
          relay.committed(events);
        }
        return present;
      };
      await clock.advance(1000);
      await clock.advance(8000);
      expect(committedMeanwhile).toBe(true);
      expect(stream.stored.map((e) => e.name)).toEqual(['a', 'c']);
      expect(await store.countOutbox()).toBe(0);
    });

    it('a nudge (a daemon of an earlier version) makes the relaying daemon look at once; on standby it does nothing', async () => {
      await start();
      await commitElsewhere('x');
      relay.nudged();
      await clock.flush();
      expect(stream.rounds).toEqual([]);
      expect(store.lease.acquireCalls).toBe(1);
    });

    it('flush() waits for its own events only, and stop() gives the lease up', async () => {
      store.lease.available = true;
      await start();
      await commitElsewhere('x'); // another daemon's, not stale
      stream.failNext(0);
      await commit('a');
      const flushed = relay.flush(5000);
      await clock.advance(100);
      expect(await flushed).toBe(true);
      expect(stream.stored.map((e) => e.name)).toEqual(['a']);
      expect(store.lease.held).toBe(true);
      await relay.stop();
      expect(store.lease.held).toBe(false);
      expect(relay.state).toBe('stopped');
    });
  });

  it('flush() resolves true once everything is delivered, retrying at once whatever the backoff', async () => {
    await start();
    expect(await relay.flush(5000)).toBe(true); // nothing to deliver
    stream.failNext();
    await commit('a', 'b');
    expect(relay.state).toBe('backoff');
    const flushed = relay.flush(5000);
    await expect(flushed).resolves.toBe(true);
    expect(stream.names()).toEqual([['a', 'b'], ['a'], ['b']]);
    expect(await store.countOutbox()).toBe(0);
  });

  it('flush() resolves false when the time runs out first', async () => {
    await start();
    for (let i = 0; i < 20; i++) stream.failNext();
    await commit('a');
    let result: boolean | undefined;
    void relay.flush(500).then((r) => (result = r));
    await clock.advance(499);
    expect(result).toBeUndefined();
    await clock.advance(200);
    expect(result).toBe(false);
    expect(await store.countOutbox()).toBe(1);
  });

  it('stop(): stopped, the stream closed, and nothing published any more', async () => {
    await start();
    stream.failNext();
    await commit('a');
    expect(relay.state).toBe('backoff');
    await relay.stop();
    expect(relay.state).toBe('stopped');
    expect(stream.closeCalls).toBe(1);
    // Neither the pending retry nor new commits publish.
    await commit('b');
    relay.kick();
    await clock.advance(60_000);
    expect(stream.rounds).toHaveLength(1);
    expect(await store.countOutbox()).toBe(2);
  });
});
