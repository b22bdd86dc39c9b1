/**
 * Everyday and admin subjects. The everyday `unlock` and `renew` act only on the grant whose token
 * they carry and the everyday `set` only creates, so an everyday client cannot release, extend or
 * make eternal a lock it does not hold; acting by name (the seed's behaviour) is on `P.admin.*`.
 * And the client sends each call where it belongs: a holder's calls never need the admin subjects.
 */
import type { Msg } from 'nats';
import type { Api, Endpoint, Reply } from '../../shared/protocol';
import { requestSubject } from '../../shared/protocol';
import { STORES } from '../helpers/databases';
import { startStack, type Stack } from '../helpers/stack';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

async function raw<E extends Endpoint>(stack: Stack, endpoint: E, body: object): Promise<Reply<Api[E]['result']>> {
  const msg = await stack.client.nc.request(requestSubject(stack.prefix, endpoint), encoder.encode(JSON.stringify(body)), {
    timeout: 5000,
  });
  return JSON.parse(decoder.decode(msg.data)) as Reply<Api[E]['result']>;
}

async function ok<E extends Endpoint>(stack: Stack, endpoint: E, body: object): Promise<Api[E]['result']> {
  const reply = await raw(stack, endpoint, body);
  if (!reply.ok) throw new Error(`${endpoint}: ${reply.error.code} ${reply.error.message}`);
  return reply.result;
}

describe.each(STORES)('everyday and admin subjects on %s', (store) => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack({ store });
  });
  afterAll(async () => stack?.stop());

  it('the everyday set creates free names and leaves held ones as they are (skip), however asked', async () => {
    const held = await ok(stack, 'get', { name: 'ev.set.held', expires: 30 });
    const r = await ok(stack, 'set', { locks: ['ev.set.held', 'ev.set.free'], timeout: 600 });
    expect(r.counts).toEqual({ created: 1, renewed: 0, skip_create: 0, skip_renew: 1 });
    const after = await ok(stack, 'is_locked', { name: 'ev.set.held' });
    expect(after.lock).toMatchObject({ token: held.token, locked_until: held.locked_until });
    expect(await raw(stack, 'set', { locks: ['ev.set.held'], renew: true })).toMatchObject({
      ok: false,
      error: { code: 'INVALID_REQUEST', details: [{ field: 'renew' }] },
    });
    // admin.set renews it: the seed's set_lock.
    const admin = await ok(stack, 'admin_set', { locks: ['ev.set.held'], timeout: 600 });
    expect(admin.counts.renewed).toBe(1);
    expect(Date.parse(admin.locks[0]!.locked_until!)).toBeGreaterThan(Date.parse(held.locked_until!));
  });

  it('unlock and renew by token act on that grant only; without a token they are refused and the lock stays', async () => {
    const first = await ok(stack, 'get', { name: 'ev.tok', expires: 30 });
    expect(await raw(stack, 'unlock', { name: 'ev.tok' })).toMatchObject({
      ok: false,
      error: { code: 'INVALID_REQUEST', details: [{ field: 'token' }] },
    });
    // Without a token, renew cannot make someone's lock eternal.
    expect(await raw(stack, 'renew', { name: 'ev.tok', expires: null })).toMatchObject({
      ok: false,
      error: { code: 'INVALID_REQUEST', details: [{ field: 'token' }] },
    });
    expect((await ok(stack, 'is_locked', { name: 'ev.tok' })).lock).toMatchObject({ token: first.token, locked_until: first.locked_until });

    const renewed = await ok(stack, 'renew', { name: 'ev.tok', token: first.token, expires: 60 });
    expect(Date.parse(renewed.locked_until!)).toBeGreaterThan(Date.parse(first.locked_until!));
    expect(await ok(stack, 'unlock', { name: 'ev.tok', token: first.token })).toEqual({ unlocked: true });
    // A stale token meets the next holder's lock: NOT_OWNER, and it stays.
    const second = await ok(stack, 'get', { name: 'ev.tok', expires: 30 });
    expect(await raw(stack, 'unlock', { name: 'ev.tok', token: first.token })).toMatchObject({ ok: false, error: { code: 'NOT_OWNER' } });
    expect(await raw(stack, 'renew', { name: 'ev.tok', token: first.token })).toMatchObject({ ok: false, error: { code: 'NOT_OWNER' } });
    expect((await ok(stack, 'is_locked', { name: 'ev.tok' })).lock?.token).toBe(second.token);
  });

  it('admin.renew and admin.unlock act by name, whoever holds the lock', async () => {
    const held = await ok(stack, 'get', { name: 'ev.admin', expires: 30 });
    const eternal = await ok(stack, 'admin_renew', { name: 'ev.admin', expires: null });
    expect(eternal).toMatchObject({ token: held.token, locked_until: null });
    expect(await ok(stack, 'admin_unlock', { name: 'ev.admin' })).toEqual({ unlocked: true });
    expect((await ok(stack, 'is_locked', { name: 'ev.admin' })).locked).toBe(false);
  });

  it('the client: a holder never uses an admin subject; by-name calls and the seed set_lock do', async () => {
    const admin: string[] = [];
    const spy = stack.client.nc.subscribe(`${stack.prefix}.>`, {
      callback: (_e, m: Msg) => {
        const suffix = m.subject.slice(stack.prefix.length + 1);
        if (suffix.startsWith('admin.') || suffix === 'clean' || suffix === 'reset') admin.push(suffix);
      },
    });
    await stack.client.nc.flush();
    const c = stack.client;
    await c.withLock('ev.client.with', async (mgr) => {
      await mgr.renew();
      await mgr.lock('ev.client.with2');
    });
    await c.withLock('ev.client.expiring', { keepalive: false }, async (mgr) => mgr.renew());
    {
      await using held = await c.hold('ev.client.hold');
      expect(held.token).toBeGreaterThan(0);
    }
    const lock = await c.getLock('ev.client.get');
    await c.renewLock(lock, { expires: 60 });
    await c.isLocked('ev.client.get');
    await c.listLocks({ prefix: 'ev.client' });
    await c.setLock('ev.client.set', { renew: false });
    await c.unlock(lock);
    await stack.client.nc.flush();
    expect(admin).toEqual([]);

    await c.setLock('ev.client.set');
    await c.renewLock('ev.client.set', { expires: 60 });
    await c.unlock('ev.client.set');
    await stack.client.nc.flush();
    spy.unsubscribe();
    expect(admin).toEqual(['admin.set', 'admin.renew', 'admin.unlock']);
  });

  it("a lock's record names its session by a public name: nobody who reads it can keep that session alive or close it", async () => {
    const s = await ok(stack, 'session_open', { ttl: 10 });
    const lock = await ok(stack, 'get', { name: 'ev.sess', session: s.session });
    const seen = (await ok(stack, 'is_locked', { name: 'ev.sess' })).lock!;
    const listed = (await ok(stack, 'list', { prefix: 'ev.sess' })).locks[0]!;
    expect(seen.session).toBe(lock.session);
    expect(listed.session).toBe(lock.session);
    expect(lock.session).not.toBe(s.session);
    expect(await raw(stack, 'session_keepalive', { session: seen.session })).toMatchObject({
      ok: false,
      error: { code: 'SESSION_NOT_FOUND' },
    });
    expect(await ok(stack, 'session_close', { session: seen.session })).toEqual({ closed: false, released: 0 });
    expect((await ok(stack, 'is_locked', { name: 'ev.sess' })).lock?.token).toBe(lock.token);
    expect(await ok(stack, 'session_close', { session: s.session })).toEqual({ closed: true, released: 1 });
  });
});
