/**
 * A waiter whose caller is gone is never left holding the lock: a grant made after a wait is
 * handed to the caller as a request, and when nobody listens for it any more (the process was
 * killed, the call was cancelled or ended) it is withdrawn at once and the next waiter gets the name.
 */
import { type NatsConnection, RequestStrategy } from 'nats';
import { Cancelled, type Lock } from '../../client/index';
import type { LockEvent } from '../../shared/events';
import { eventSubject } from '../../shared/events';
import { STORES } from '../helpers/databases';
import { startCli, until } from '../helpers/cli';
import { startStack, type Stack } from '../helpers/stack';

jest.setTimeout(60_000);

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Every event of `name`, as it comes. */
function follow(nc: NatsConnection, prefix: string, name: string): LockEvent[] {
  const seen: LockEvent[] = [];
  nc.subscribe(eventSubject(prefix, '*', name), { callback: (_err, m) => seen.push(JSON.parse(decoder.decode(m.data)) as LockEvent) });
  return seen;
}

describe.each(STORES)('waiters that are gone, on %s', (store) => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack({ store });
  });
  afterAll(async () => stack?.stop());

  it('a waiting process killed with SIGKILL is not left holding the lock: the next waiter gets it at once', async () => {
    const name = 'gone.killed';
    const daemon = stack.daemons[0]!;
    const events = follow(stack.client.nc, stack.prefix, name);
    await stack.client.nc.flush();
    const holder = await stack.client.getLock(name);

    // The first in line: a `lockmgr run` waiting for the lock, then killed.
    const env = { LOCKMGR_NATS_URL: stack.nats.url, LOCKMGR_PREFIX: stack.prefix };
    const doomed = startCli(['run', name, '--wait', '30', '--', 'sleep', '30'], { env, timeoutMs: 40_000 });
    await until(() => daemon.requestsInFlight === 1, 10_000, 'the killed process to wait');
    // Second in line: a live waiter.
    const other = await stack.newClient({ locked_by: 'next' });
    const next = other.getLock(name, { wait: 30 });
    await until(() => daemon.requestsInFlight === 2, 10_000, 'the live waiter to wait');
    doomed.child.kill('SIGKILL');
    await doomed.done;

    const released = performance.now();
    await stack.client.unlock(holder);
    const lock: Lock = await next;
    expect(lock.locked_by).toBe('next');
    // "At once": well before the dead process' grant could have run out by itself (600 s).
    expect(performance.now() - released).toBeLessThan(5_000);

    // The dead process' grant, if one was made, was withdrawn before the live waiter's.
    await until(() => events.some((e) => e.type === 'created' && e.lock.locked_by === 'next'), 5_000, 'the events');
    const trail = events.map((e) => `${e.type}${e.cause.operation === 'withdraw' ? ' (withdraw)' : ''} ${e.lock.locked_by}`);
    expect(trail[0]).toBe(`created ${holder.locked_by}`);
    expect(trail[1]).toBe(`released ${holder.locked_by}`);
    expect(trail.slice(2)).toEqual(expect.arrayContaining([`created next`]));
    const afterRelease = trail.slice(2, trail.indexOf('created next'));
    expect(afterRelease.length === 0 || afterRelease.length === 2).toBe(true);
    if (afterRelease.length === 2) expect(afterRelease[1]).toMatch(/^released \(withdraw\)/);
    await other.unlock(lock);
    await other.close();
  });

  it('a waiting getLock cancelled with its signal is not granted: the next waiter gets the lock at once', async () => {
    const name = 'gone.cancelled';
    const daemon = stack.daemons[0]!;
    const events = follow(stack.client.nc, stack.prefix, name);
    await stack.client.nc.flush();
    const holder = await stack.client.getLock(name);
    const quitter = await stack.newClient({ locked_by: 'quitter' });
    const controller = new AbortController();
    const cancelled = quitter.getLock(name, { wait: 30, signal: controller.signal }).catch((e: unknown) => e);
    await until(() => daemon.requestsInFlight === 1, 10_000, 'the cancelled call to wait');
    const other = await stack.newClient({ locked_by: 'next' });
    const next = other.getLock(name, { wait: 30 });
    await until(() => daemon.requestsInFlight === 2, 10_000, 'the live waiter to wait');
    controller.abort();
    expect(await cancelled).toBeInstanceOf(Cancelled);

    await stack.client.unlock(holder);
    const lock = await next;
    expect(lock.locked_by).toBe('next');
    await until(() => events.some((e) => e.type === 'created' && e.lock.locked_by === 'next'), 5_000, 'the events');
    // A grant the cancelled call got, if one was made, was withdrawn before the live waiter's.
    const quitterGrants = events.filter((e) => e.lock.locked_by === 'quitter').map((e) => `${e.type} ${e.cause.operation}`);
    expect(quitterGrants.length === 0 || quitterGrants.join(',') === 'created get,released withdraw').toBe(true);
    await other.unlock(lock);
    await quitter.close();
    await other.close();
  });

  it('a waiting call that ended (its caller stopped listening) is not granted: the lock stays free', async () => {
    const name = 'gone.ended';
    const daemon = stack.daemons[0]!;
    const holder = await stack.client.getLock(name);
    // A raw waiting get that stops listening after 500 ms, while the daemon still waits for it.
    const body = encoder.encode(JSON.stringify({ name, wait: 30, progress: true, request_id: 'ended-1', locked_by: 'ended' }));
    const replies = await stack.client.nc.requestMany(`${stack.prefix}.get`, body, {
      strategy: RequestStrategy.Timer,
      maxWait: 500,
      noMux: true,
    });
    const got: unknown[] = [];
    for await (const m of replies) got.push(JSON.parse(decoder.decode(m.data)));
    expect(got).toEqual([{ waiting: true }]);
    expect(daemon.requestsInFlight).toBe(1);

    await stack.client.unlock(holder);
    await until(() => daemon.requestsInFlight === 0, 5_000, 'the waiting get to end');
    expect(await stack.client.isLocked(name)).toBe(false);
  });
});
