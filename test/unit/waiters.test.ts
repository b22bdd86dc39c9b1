/**
 * WaitQueue (daemon/waiters.ts): who wakes on a release, in what order, when a wait times out,
 * and how following a name catches a release that lands before the wait starts. Time moves only
 * through a ManualClock.
 */
import { WaitQueue, type WaitHooks } from '../../daemon/waiters';
import { flushPromises, ManualClock } from '../helpers/manual-clock';

/** A promise's state, observable without awaiting it. */
function track(p: Promise<void>): { done: boolean } {
  const state = { done: false };
  void p.then(() => (state.done = true));
  return state;
}

class RecordingHooks implements WaitHooks {
  readonly calls: string[] = [];
  /** What watch() returns (a promise the test settles, to hold follow() up). */
  ready: Promise<void> | undefined;
  watch(name: string): void | Promise<void> {
    this.calls.push(`watch ${name}`);
    return this.ready;
  }
  unwatch(name: string): void {
    this.calls.push(`unwatch ${name}`);
  }
}

describe('WaitQueue', () => {
  let clock: ManualClock;
  let hooks: RecordingHooks;
  let queue: WaitQueue;
  const HOUR = 3_600_000;

  beforeEach(() => {
    clock = new ManualClock();
    hooks = new RecordingHooks();
    queue = new WaitQueue(hooks, clock);
  });

  it('a notify wakes only the first waiter; the next notify the next one (FIFO)', async () => {
    const tickets = [await queue.follow('n'), await queue.follow('n'), await queue.follow('n')];
    const waits = tickets.map((t) => track(queue.wait(t, clock.now() + HOUR)));
    await flushPromises();
    expect(waits.map((w) => w.done)).toEqual([false, false, false]);
    queue.notify('n');
    await flushPromises();
    expect(waits.map((w) => w.done)).toEqual([true, false, false]);
    queue.notify('n');
    await flushPromises();
    expect(waits.map((w) => w.done)).toEqual([true, true, false]);
    // A woken waiter's timer is cancelled: only the last one's is left.
    expect(clock.pending()).toBe(1);
  });

  it('a notify of another name wakes nobody here', async () => {
    const w = track(queue.wait(await queue.follow('n'), clock.now() + HOUR));
    queue.notify('other');
    await flushPromises();
    expect(w.done).toBe(false);
  });

  it('front=true puts a waiter that lost its race back at the head of the queue', async () => {
    const first = await queue.follow('n');
    const second = await queue.follow('n');
    const w1 = track(queue.wait(first, clock.now() + HOUR));
    const w2 = track(queue.wait(second, clock.now() + HOUR));
    queue.notify('n');
    await flushPromises();
    expect([w1.done, w2.done]).toEqual([true, false]);
    // The first waiter looked, found the lock taken again, and waits at the front.
    const again = track(queue.wait(first, clock.now() + HOUR, true));
    await flushPromises();
    expect(again.done).toBe(false);
    queue.notify('n');
    await flushPromises();
    expect([again.done, w2.done]).toEqual([true, false]);
  });

  it('without front, a waiter that waits again goes to the back', async () => {
    const first = await queue.follow('n');
    const second = await queue.follow('n');
    track(queue.wait(first, clock.now() + HOUR));
    const w2 = track(queue.wait(second, clock.now() + HOUR));
    queue.notify('n');
    await flushPromises();
    const again = track(queue.wait(first, clock.now() + HOUR));
    queue.notify('n');
    await flushPromises();
    expect([again.done, w2.done]).toEqual([false, true]);
  });

  it('a wait nobody notifies resolves at its `until`, not before', async () => {
    const ticket = await queue.follow('n');
    const w = track(queue.wait(ticket, clock.now() + 5000));
    await clock.advance(4999);
    expect(w.done).toBe(false);
    await clock.advance(1);
    expect(w.done).toBe(true);
    expect(clock.pending()).toBe(0);
  });

  it('a waiter that timed out leaves the queue: the next notify goes to the one behind it', async () => {
    const short = track(queue.wait(await queue.follow('n'), clock.now() + 1000));
    const long = track(queue.wait(await queue.follow('n'), clock.now() + HOUR));
    await clock.advance(1000);
    expect([short.done, long.done]).toEqual([true, false]);
    queue.notify('n');
    await flushPromises();
    expect(long.done).toBe(true);
  });

  it('a release between follow() and wait() makes the wait return at once', async () => {
    const ticket = await queue.follow('n');
    // The request looked ("held"); the holder releases before the request starts waiting.
    queue.notify('n');
    const w = track(queue.wait(ticket, clock.now() + HOUR));
    await flushPromises();
    expect(w.done).toBe(true);
    expect(clock.pending()).toBe(0);
    // That release is now taken into account: the next wait waits.
    const next = track(queue.wait(ticket, clock.now() + HOUR));
    await flushPromises();
    expect(next.done).toBe(false);
    queue.notify('n');
    await flushPromises();
    expect(next.done).toBe(true);
  });

  it('a release before follow() is not counted against the wait', async () => {
    queue.notify('n');
    const w = track(queue.wait(await queue.follow('n'), clock.now() + HOUR));
    await flushPromises();
    expect(w.done).toBe(false);
  });

  it('watch is called for the first follower only, unwatch when the last one leaves', async () => {
    const a = await queue.follow('n');
    const b = await queue.follow('n');
    expect(hooks.calls).toEqual(['watch n']);
    queue.unfollow(a);
    expect(hooks.calls).toEqual(['watch n']);
    queue.unfollow(b);
    expect(hooks.calls).toEqual(['watch n', 'unwatch n']);
    // Followed again from scratch: watched again.
    queue.unfollow(await queue.follow('n'));
    expect(hooks.calls).toEqual(['watch n', 'unwatch n', 'watch n', 'unwatch n']);
  });

  it('follow() resolves once watch() is ready (for every follower), and a failed watch does not fail it', async () => {
    let ready!: () => void;
    hooks.ready = new Promise<void>((resolve) => (ready = resolve));
    const first = track(queue.follow('n').then(() => undefined));
    const second = track(queue.follow('n').then(() => undefined));
    await flushPromises();
    expect([first.done, second.done]).toEqual([false, false]);
    ready();
    await flushPromises();
    expect([first.done, second.done]).toEqual([true, true]);
    hooks.ready = Promise.reject(new Error('no subscription'));
    await expect(queue.follow('m')).resolves.toEqual({ name: 'm', seen: 0 });
  });

  it('close() wakes every waiter, and later waits resolve at once', async () => {
    const waits = [
      track(queue.wait(await queue.follow('a'), clock.now() + HOUR)),
      track(queue.wait(await queue.follow('a'), clock.now() + HOUR)),
      track(queue.wait(await queue.follow('b'), clock.now() + HOUR)),
    ];
    queue.close();
    await flushPromises();
    expect(waits.map((w) => w.done)).toEqual([true, true, true]);
    expect(clock.pending()).toBe(0);
    const late = track(queue.wait(await queue.follow('c'), clock.now() + HOUR));
    await flushPromises();
    expect(late.done).toBe(true);
    expect(clock.pending()).toBe(0);
  });
});
