/**
 * Sessions on the wire: a lock taken in a session lasts as long as the session is kept alive;
 * when it lapses (no keepalive within its ttl) every daemon treats its locks as expired once the
 * lock-delay has passed, with `expired` events that say so; a lock of a session released by name
 * (by force) stays through the lock-delay and leaves the session, whose keepalive tells the
 * holder; closing a session releases its locks at once. Sessions live in the store: a daemon
 * restart keeps them.
 */
import { requestSubject, type Api, type Endpoint, type Reply } from '../../shared/protocol';
import { publicSessionId } from '../../shared/sessions';
import type { LockEvent } from '../../shared/events';
import { eventSubject } from '../../shared/events';
import { STORES } from '../helpers/databases';
import { until } from '../helpers/cli';
import { startStack, type Stack } from '../helpers/stack';

jest.setTimeout(60_000);

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const LOCK_DELAY = 0.5;

async function raw<E extends Endpoint>(stack: Stack, endpoint: E, body: Api[E]['request']): Promise<Reply<Api[E]['result']>> {
  const subject = requestSubject(stack.prefix, endpoint);
  const msg = await stack.client.nc.request(subject, encoder.encode(JSON.stringify(body)), { timeout: 5000 });
  return JSON.parse(decoder.decode(msg.data)) as Reply<Api[E]['result']>;
}

async function ok<E extends Endpoint>(stack: Stack, endpoint: E, body: Api[E]['request']): Promise<Api[E]['result']> {
  const reply = await raw(stack, endpoint, body);
  if (!reply.ok) throw new Error(`${endpoint}: ${reply.error.code} ${reply.error.message}`);
  return reply.result;
}

function follow(stack: Stack, name: string): LockEvent[] {
  const seen: LockEvent[] = [];
  stack.client.nc.subscribe(eventSubject(stack.prefix, '*', name), {
    callback: (_err, m) => seen.push(JSON.parse(decoder.decode(m.data)) as LockEvent),
  });
  return seen;
}

describe.each(STORES)('sessions on %s', (store) => {
  let stack: Stack;
  beforeAll(async () => {
    // PostgreSQL with two daemons: any of them serves a session's requests.
    stack = await startStack({ store, daemons: store === 'postgres' ? 2 : 1, config: { lockDelay: LOCK_DELAY, sweepInterval: 0.1 } });
  });
  afterAll(async () => stack?.stop());

  it('a lock in a session lives while the session is kept alive, past its ttl', async () => {
    const s = await ok(stack, 'session_open', { ttl: 1, locked_by: 'worker' });
    expect(s.ttl).toBe(1);
    expect(Date.parse(s.expires_at)).toBeGreaterThan(Date.now());
    const lock = await ok(stack, 'get', { name: 'sess.kept', session: s.session });
    expect(lock.session).toBe(publicSessionId(s.session));
    // The lock's expiry is the session's plus the lock-delay.
    expect(Date.parse(lock.locked_until!)).toBe(Date.parse(s.expires_at) + LOCK_DELAY * 1000);
    for (let i = 0; i < 6; i++) {
      await new Promise((r) => setTimeout(r, 400));
      const kept = await ok(stack, 'session_keepalive', { session: s.session });
      expect(kept.locks).toEqual([{ name: 'sess.kept', token: lock.token }]);
    }
    // 2.4 s later, more than twice the ttl: still held, by the same grant.
    const held = await ok(stack, 'is_locked', { name: 'sess.kept' });
    expect(held.lock?.token).toBe(lock.token);
    const closed = await ok(stack, 'session_close', { session: s.session });
    expect(closed).toEqual({ closed: true, released: 1 });
    expect((await ok(stack, 'is_locked', { name: 'sess.kept' })).locked).toBe(false);
  });

  it('a session that lapses: its locks expire a lock-delay later, with events that say so; its keepalive answers SESSION_NOT_FOUND', async () => {
    const events = follow(stack, 'sess.lapsed');
    await stack.client.nc.flush();
    const s = await ok(stack, 'session_open', { ttl: 1 });
    const lock = await ok(stack, 'get', { name: 'sess.lapsed', session: s.session });
    const lapsesAt = Date.parse(s.expires_at);
    // Nobody keeps it alive. Past the ttl, the name is still held (the lock-delay)...
    await new Promise((r) => setTimeout(r, Math.max(0, lapsesAt - Date.now()) + 100));
    expect(await raw(stack, 'session_keepalive', { session: s.session })).toMatchObject({
      ok: false,
      error: { code: 'SESSION_NOT_FOUND' },
    });
    const refused = await raw(stack, 'get', { name: 'sess.lapsed' });
    expect(refused).toMatchObject({ ok: false, error: { code: 'LOCKED' } });
    // ...and free once the lock-delay has passed too, expired by the sweeper with its reason.
    await until(async () => !(await ok(stack, 'is_locked', { name: 'sess.lapsed' })).locked, 5_000, 'the lapsed lock to expire');
    expect(Date.now()).toBeGreaterThanOrEqual(lapsesAt + LOCK_DELAY * 1000);
    await until(() => events.some((e) => e.type === 'expired'), 5_000, 'the expired event');
    const expired = events.find((e) => e.type === 'expired')!;
    expect(expired.lock.token).toBe(lock.token);
    expect(expired.lock.session).toBe(publicSessionId(s.session));
    expect(expired.cause.reason).toBe('session lapsed');
    // A lapsed session binds no new lock.
    expect(await raw(stack, 'get', { name: 'sess.other', session: s.session })).toMatchObject({
      ok: false,
      error: { code: 'SESSION_NOT_FOUND' },
    });
  });

  it('a lock of a session released by name (by force) stays through the lock-delay, and its keepalive no longer lists it', async () => {
    const events = follow(stack, 'sess.forced');
    await stack.client.nc.flush();
    const s = await ok(stack, 'session_open', { ttl: 10 });
    const lock = await ok(stack, 'get', { name: 'sess.forced', session: s.session });
    const forcedAt = Date.now();
    expect(await ok(stack, 'admin_unlock', { name: 'sess.forced' })).toEqual({ unlocked: true });
    expect((await ok(stack, 'session_keepalive', { session: s.session })).locks).toEqual([]);
    expect(await raw(stack, 'get', { name: 'sess.forced' })).toMatchObject({ ok: false, error: { code: 'LOCKED' } });
    const next = await ok(stack, 'get', { name: 'sess.forced', wait: 5 });
    expect(Date.now() - forcedAt).toBeGreaterThanOrEqual(LOCK_DELAY * 1000 - 50);
    expect(next.token).toBeGreaterThan(lock.token);
    await until(() => events.length >= 4, 5_000, 'the events');
    expect(events.slice(0, 4).map((e) => `${e.type}${e.cause.reason ? ` (${e.cause.reason})` : ''}`)).toEqual([
      'created',
      'renewed (force-released)',
      'expired',
      'created',
    ]);
    // Released by its token, a lock of a session is free at once.
    const s2 = await ok(stack, 'session_open', {});
    const clean = await ok(stack, 'get', { name: 'sess.clean', session: s2.session });
    expect(await ok(stack, 'unlock', { name: 'sess.clean', token: clean.token })).toEqual({ unlocked: true });
    expect((await ok(stack, 'get', { name: 'sess.clean' })).token).toBeGreaterThan(clean.token);
    await ok(stack, 'session_close', { session: s2.session });
    await ok(stack, 'session_close', { session: s.session });
  });

  it('sessions live in the store: a daemon restart keeps them and their locks', async () => {
    const s = await ok(stack, 'session_open', { ttl: 30 });
    const lock = await ok(stack, 'get', { name: 'sess.restart', session: s.session });
    const daemon = stack.daemons[0]!;
    await daemon.stop();
    stack.daemons.splice(0, 1);
    await stack.startDaemon();
    const kept = await ok(stack, 'session_keepalive', { session: s.session });
    expect(kept.locks).toEqual([{ name: 'sess.restart', token: lock.token }]);
    await ok(stack, 'session_close', { session: s.session });
  });

  it('bad session requests are refused with INVALID_REQUEST, and unknown sessions with SESSION_NOT_FOUND', async () => {
    expect(await raw(stack, 'session_open', { ttl: 0 })).toMatchObject({ ok: false, error: { code: 'INVALID_REQUEST' } });
    expect(await raw(stack, 'session_keepalive', { session: 'no-such-session' })).toMatchObject({
      ok: false,
      error: { code: 'SESSION_NOT_FOUND' },
    });
    expect(await ok(stack, 'session_close', { session: 'no-such-session' })).toEqual({ closed: false, released: 0 });
    expect(await raw(stack, 'get', { name: 'x', session: 'S', expires: 5 })).toMatchObject({
      ok: false,
      error: { code: 'INVALID_REQUEST' },
    });
  });
});
