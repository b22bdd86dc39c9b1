/**
 * `signal` on every client call, against a real daemon and nats-server: an abort ends a call at
 * once with Cancelled (cause: the signal's reason) and no more copies of it are sent; an
 * already-aborted signal sends nothing at all. What reaches NATS is counted by a subscription of
 * the test's own on the request subjects.
 */
import { connect, type NatsConnection, type Subscription } from 'nats';
import { Cancelled, LockClient, type LockError } from '../../client/index';
import { ENDPOINTS, requestSubject } from '../../shared/protocol';
import { STORES } from '../helpers/databases';
import { startStack, type Stack } from '../helpers/stack';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const decoder = new TextDecoder();

/** Every request sent on `prefix`'s request subjects, as NATS carries them. */
class Spy {
  readonly seen: { subject: string; body: { request_id?: string } }[] = [];
  private readonly subs: Subscription[];
  constructor(
    private readonly nc: NatsConnection,
    prefix: string,
  ) {
    this.subs = ENDPOINTS.map((e) =>
      nc.subscribe(requestSubject(prefix, e), {
        callback: (_err, msg) =>
          this.seen.push({ subject: msg.subject, body: JSON.parse(decoder.decode(msg.data)) as { request_id?: string } }),
      }),
    );
  }
  /** The spy's subscriptions are in place, and what was sent before this has reached it. */
  async settle(): Promise<void> {
    await this.nc.flush();
  }
  stop(): void {
    for (const s of this.subs) s.unsubscribe();
  }
}

/** Reject if `p` has not settled within `ms`: it must be cancelled long before it could end by itself. */
async function within<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`not settled within ${ms} ms`)), ms)));
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

describe.each(STORES)('signal on %s', (store) => {
  let stack: Stack;
  let nc: NatsConnection;
  let seq = 0;
  const uniq = (base: string) => `${base}_${store}_${++seq}`;

  beforeAll(async () => {
    stack = await startStack({ store });
    nc = await connect({ servers: stack.nats.url });
  });
  afterAll(async () => {
    await nc?.close();
    await stack?.stop();
  });

  it('aborting a getLock that waits 30 s for a held lock: Cancelled at once, and no copy sent after', async () => {
    const name = uniq('busy');
    const holder = await stack.client.getLock(name, { expires: 60 });
    const spy = new Spy(nc, stack.prefix);
    await spy.settle();
    const waiter = await stack.newClient();
    const controller = new AbortController();
    const call = waiter.getLock(name, { wait: 30, signal: controller.signal });
    const failed = call.catch((e: unknown) => e);
    // The daemon has it and waits (it said so: no copy is sent while it waits).
    await sleep(600);
    await spy.settle();
    const sent = spy.seen.filter((s) => s.subject === `${stack.prefix}.get`).length;
    expect(sent).toBeGreaterThanOrEqual(1);

    const reason = new Error('the user closed the page');
    controller.abort(reason);
    const err = await within(failed, 5000);
    expect(err).toBeInstanceOf(Cancelled);
    expect((err as LockError).code).toBe('CANCELLED');
    expect((err as LockError).cause).toBe(reason);

    // Longer than any re-send interval: nothing more goes out for the cancelled call.
    await sleep(1500);
    await spy.settle();
    expect(spy.seen.filter((s) => s.subject === `${stack.prefix}.get`).length).toBe(sent);
    spy.stop();
    expect(await stack.client.unlock(holder)).toBe(true);
  });

  it('an already-aborted signal: every call fails Cancelled, and no request reaches NATS', async () => {
    const spy = new Spy(nc, stack.prefix);
    await spy.settle();
    const client = stack.client;
    const signal = AbortSignal.abort();
    const held = await client.getLock(uniq('held'));
    const before = spy.seen.length;
    for (const [call, fn] of [
      ['setLock', () => client.setLock(uniq('a'), { signal })],
      ['getLock', () => client.getLock(uniq('a'), { signal })],
      ['getLock wait', () => client.getLock(held.name, { wait: 30, signal })],
      ['unlock', () => client.unlock(held, { signal })],
      ['renewLock', () => client.renewLock(held, { signal })],
      ['isLocked', () => client.isLocked(held, { signal })],
      ['lockInfo', () => client.lockInfo(held.name, { signal })],
      ['listLocks', () => client.listLocks({ signal })],
      ['cleanLocks', () => client.cleanLocks({ signal })],
      ['resetLocks', () => client.resetLocks({ signal })],
      ['withLock', () => client.withLock(uniq('w'), { signal }, () => 'ran')],
      ['call', () => client.call('is_locked', { name: held.name }, 1000, { signal })],
    ] as const) {
      const err = await (fn as () => Promise<unknown>)().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect({ call, err }).toEqual({ call, err: expect.any(Cancelled) });
    }
    // One request of our own after them: it reaches the spy, and it is the only one.
    expect(await client.isLocked(held)).toBe(true);
    await spy.settle();
    expect(spy.seen.slice(before).map((s) => s.subject)).toEqual([`${stack.prefix}.is_locked`]);
    spy.stop();
    expect(await client.unlock(held)).toBe(true);
  });

  it('aborting any other call in flight (no answer coming): Cancelled, and its copies stop', async () => {
    // A prefix whose only responder never answers: every call stays in flight, sending copies.
    const prefix = `${stack.prefix}_mute`;
    const mute = nc.subscribe(`${prefix}.>`, { callback: () => undefined });
    const spy = new Spy(nc, prefix);
    await spy.settle();
    const client = new LockClient(stack.client.nc, { prefix, timeout: 20_000 });
    const lock = await stack.client.getLock(uniq('token'));
    try {
      for (const [call, fn] of [
        ['setLock', (signal: AbortSignal) => client.setLock('a', { signal })],
        ['getLock', (signal: AbortSignal) => client.getLock('a', { signal })],
        ['getLock wait', (signal: AbortSignal) => client.getLock('a', { wait: 30, signal })],
        ['unlock', (signal: AbortSignal) => client.unlock('a', { signal })],
        ['renewLock', (signal: AbortSignal) => client.renewLock(lock, { signal })],
        ['isLocked', (signal: AbortSignal) => client.isLocked('a', { signal })],
        ['listLocks', (signal: AbortSignal) => client.listLocks({ signal })],
        ['cleanLocks', (signal: AbortSignal) => client.cleanLocks({ signal })],
        ['resetLocks', (signal: AbortSignal) => client.resetLocks({ signal })],
        ['withLock', (signal: AbortSignal) => client.withLock('a', { signal }, () => 'ran')],
        ['call', (signal: AbortSignal) => client.call('is_locked', { name: 'a' }, 20_000, { signal })],
      ] as const) {
        const from = spy.seen.length;
        const controller = new AbortController();
        const failed = fn(controller.signal).then(
          () => undefined,
          (e: unknown) => e,
        );
        // Unanswered, it is sent again (after 0.1 s, 0.15 s, …).
        await sleep(400);
        await spy.settle();
        expect({ call, resent: spy.seen.length - from >= 2 }).toEqual({ call, resent: true });
        controller.abort();
        const err = await within(failed, 2000);
        expect({ call, err }).toEqual({ call, err: expect.any(Cancelled) });
        await spy.settle();
        const sent = spy.seen.length;
        await sleep(800);
        await spy.settle();
        expect({ call, after: spy.seen.length - sent }).toEqual({ call, after: 0 });
      }
    } finally {
      mute.unsubscribe();
      spy.stop();
      await stack.client.unlock(lock);
    }
  });
});
