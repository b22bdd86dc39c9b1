/**
 * django-lockmgr conformance, through the client against a real daemon, on SQLite and PostgreSQL.
 *
 * - §5.1-5.3: the seed's own 20 tests, titled "#n test_name". Time-based cases use short expiries
 *   and real waiting instead of editing rows or faking clocks.
 * - §2.7: every set_lock case.
 * - §5.5: the contract rows, and every bug row of §5.5/§6 as its fixed behaviour.
 *
 * "remaining" is the lock's expiry as the daemon reports it now, minus the local clock.
 *
 * `withLock` keeps its locks alive in a session by default; the cases about the seed's own expiry
 * and renewal semantics ask for django-lockmgr's expiring locks with `keepalive: false`.
 */
import { hostname } from 'node:os';
import {
  close as closeDefaultClient,
  getLock as defaultGetLock,
  InvalidRequest,
  isLocked as defaultIsLocked,
  Lock,
  type LockClient,
  Locked,
  LockFail,
  LockNotFound,
  LockSetResult,
  NotOwner,
  setLock as defaultSetLock,
  unlock as defaultUnlock,
} from '../../client/index';
import { STORES } from '../helpers/databases';
import { startStack, type Stack } from '../helpers/stack';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe.each(STORES)('django-lockmgr conformance on %s', (store) => {
  let stack: Stack;
  let client: LockClient;
  /** A second party, as another service would be. */
  let other: LockClient;
  let seq = 0;
  /** A lock name no other test uses. */
  const uniq = (base: string) => `${base}_${store}_${++seq}`;

  /** Seconds until `name` expires, read from the daemon; null for a lock that never expires. */
  async function remaining(name: string): Promise<number | null> {
    const lock = await client.lockInfo(name);
    if (lock === null) throw new Error(`lock ${name} does not exist`);
    return lock.expires_seconds;
  }

  /** The error a promise rejects with (fails the test if it resolves). */
  async function rejection(p: Promise<unknown>): Promise<Error> {
    try {
      await p;
    } catch (err) {
      return err as Error;
    }
    throw new Error('expected the call to fail, but it succeeded');
  }

  beforeAll(async () => {
    stack = await startStack({ store });
    client = stack.client;
    other = await stack.newClient({ locked_by: 'other-service' });
  });
  afterAll(async () => {
    await stack?.stop();
  });

  // ---------------------------------------------------------------------------------------------
  describe('§5.1 tests/test_lockmgr.py TestLockMgrModule', () => {
    it('#1 test_getlock_clean: a second getLock of a held name throws Locked', async () => {
      const name = uniq('test_getlock');
      const first = await client.getLock(name);
      const err = await rejection(client.getLock(name));
      expect(err).toBeInstanceOf(Locked);
      expect(err).not.toBeInstanceOf(LockFail);
      expect((err as Locked).code).toBe('LOCKED');
      expect((err as Locked).message).toBe(`Lock with name ${name} already exists.`);
      // The error names the lock that stood in the way.
      expect((err as Locked).lock?.name).toBe(name);
      expect((err as Locked).lock?.token).toBe(first.token);
    });

    it('#2 test_is_locked: true for a held name, false for a name never locked', async () => {
      const name = uniq('test_is_locked');
      await client.getLock(name);
      expect(await client.isLocked(name)).toBe(true);
      expect(await client.isLocked(uniq('test_is_locked_nonexistent'))).toBe(false);
    });

    it('#3 test_getlock_unlock: unlock by name frees the name; unlock by Lock object works', async () => {
      const name = uniq('test_unlock');
      const first = await client.getLock(name);
      expect(await client.unlock(name)).toBe(true);
      expect(await client.isLocked(name)).toBe(false);
      const lck = await client.getLock(name);
      expect(lck).toBeInstanceOf(Lock);
      expect(lck.name).toBe(name);
      expect(lck.token).toBeGreaterThan(first.token);
      expect(await client.unlock(lck)).toBe(true);
      expect(await client.isLocked(name)).toBe(false);
    });

    it('#4 test_lock_expiry: an expired lock counts as unlocked (1 s expiry, real wait)', async () => {
      const name = uniq('test_expire');
      const lck = await client.getLock(name, { expires: 1 });
      expect(await client.isLocked(name)).toBe(true);
      expect(lck.expired).toBe(false);
      await sleep(1200);
      expect(lck.expired).toBe(true);
      expect(await client.isLocked(name)).toBe(false);
      expect(await client.lockInfo(name)).toBeNull();
    });

    it.each([
      { title: '#5 test_lock_no_expiry', base: 'test_no_expire', expires: null },
      { title: '#6 test_lock_zero_expiry', base: 'test_no_expire_zero', expires: 0 },
    ] as const)('$title: expires=$expires never expires and survives cleanLocks', async ({ base, expires }) => {
      const name = uniq(base);
      const lck = await client.getLock(name, { expires });
      expect(lck.locked_until).toBeNull();
      expect(lck.expired).toBe(false);
      expect(lck.expires_seconds).toBeNull();
      expect(lck.expires_in).toBeNull();
      await client.cleanLocks();
      const row = await client.lockInfo(name);
      expect(row).not.toBeNull();
      expect(row!.token).toBe(lck.token);
      expect(row!.locked_until).toBeNull();
      expect(row!.expired).toBe(false);
    });
  });

  // ---------------------------------------------------------------------------------------------
  describe('§5.2 tests/test_lockmgr_class.py TestLockMgrClass (withLock)', () => {
    it('#7 test_lockmgr: extra locks in the manager; the held name throws Locked; all released after', async () => {
      const main = uniq('test_lockmgr');
      const extra = uniq('test_lockmgr2');
      const ret = await client.withLock(main, async (lck) => {
        expect(lck.main_lock?.name).toBe(main);
        expect(await lck.lock(extra)).toBe(true);
        await expect(lck.lock(main)).rejects.toBeInstanceOf(Locked);
        expect(await client.isLocked(extra)).toBe(true);
        expect(await client.isLocked(main)).toBe(true);
        return 'body ran';
      });
      expect(ret).toBe('body ran');
      expect(await client.isLocked(main)).toBe(false);
      expect(await client.isLocked(extra)).toBe(false);
    });

    it('#8 test_lockmgr_except: an error in the body propagates and the lock is released', async () => {
      const name = uniq('test_except');
      class BodyError extends Error {}
      let bodyRan = false;
      const err = await rejection(
        client.withLock(name, async () => {
          bodyRan = true;
          expect(await client.isLocked(name)).toBe(true);
          throw new BodyError('raised in the body');
        }),
      );
      expect(bodyRan).toBe(true);
      // The very error the body threw, not swallowed and not replaced.
      expect(err).toBeInstanceOf(BodyError);
      expect(err.message).toBe('raised in the body');
      expect(await client.isLocked(name)).toBe(false);
    });

    it('#9 test_lock_wait: a manager with wait gets the lock once the holder expires', async () => {
      const name = uniq('test_wait');
      await other.getLock(name, { expires: 1 });
      const start = Date.now();
      let entered = 0;
      await client.withLock(name, { wait: 3 }, async (mgr) => {
        entered = Date.now();
        expect(mgr.main_lock?.locked_by).toBe(client.lockedBy);
      });
      expect(entered).toBeGreaterThanOrEqual(start + 900);
      // Granted at the expiry, not at the end of the wait.
      expect(entered).toBeLessThan(start + 2500);
    });

    it('#10 test_lock_wait_timeout: the wait runs out, Locked is thrown and the body never runs', async () => {
      const name = uniq('test_wait');
      await other.getLock(name, { expires: 15 });
      const start = Date.now();
      let bodyRan = false;
      const err = await rejection(
        client.withLock(name, { wait: 1 }, () => {
          bodyRan = true;
        }),
      );
      const elapsed = Date.now() - start;
      expect(err).toBeInstanceOf(Locked);
      expect(bodyRan).toBe(false);
      expect(elapsed).toBeGreaterThanOrEqual(950);
      expect(elapsed).toBeLessThan(5000);
      expect((await client.lockInfo(name))?.locked_by).toBe('other-service');
    });
  });

  // ---------------------------------------------------------------------------------------------
  describe('§5.3 tests/test_renew.py TestLockRenew', () => {
    it('#11 test_renew_existing_name: renew by name sets now + expires', async () => {
      const name = uniq('test_renew');
      await client.getLock(name, { expires: 20 });
      await client.renewLock(name, { expires: 60 });
      const rem = (await remaining(name))!;
      expect(rem).toBeGreaterThanOrEqual(50);
      expect(rem).toBeLessThanOrEqual(60);
    });

    it('#12 test_renew_existing_name_add_time: add_time adds to the current expiry', async () => {
      const name = uniq('test_renew');
      await client.getLock(name, { expires: 10 });
      await client.renewLock(name, { expires: 20, add_time: true });
      const rem = (await remaining(name))!;
      expect(rem).toBeGreaterThanOrEqual(25);
      expect(rem).toBeLessThanOrEqual(30);
    });

    it('#13 test_renew_non_existing_name: renewing a missing lock throws LockNotFound', async () => {
      const name = uniq('test_no_exist_lock_renew');
      const err = await rejection(client.renewLock(name, { expires: 60 }));
      expect(err).toBeInstanceOf(LockNotFound);
      expect((err as LockNotFound).code).toBe('LOCK_NOT_FOUND');
      expect(err.message).toContain(name);
      expect(await client.isLocked(name)).toBe(false);
    });

    it('#14 test_renew_non_existing_name_create: create=true creates the lock', async () => {
      const name = uniq('test_renew_create');
      const lck = await client.renewLock(name, { expires: 60, create: true });
      expect(lck.name).toBe(name);
      expect(await client.isLocked(name)).toBe(true);
      expect((await remaining(name))!).toBeGreaterThanOrEqual(50);
    });

    it('#15 test_renew_lock_object: renew by Lock object', async () => {
      const name = uniq('test_renew');
      const lck = await client.getLock(name, { expires: 20 });
      await client.renewLock(lck, { expires: 60 });
      expect((await remaining(name))!).toBeGreaterThanOrEqual(50);
    });

    it('#16 test_renew_existing_object_add_time: renew by Lock object with add_time', async () => {
      const name = uniq('test_renew');
      const lck = await client.getLock(name, { expires: 10 });
      await client.renewLock(lck, { expires: 20, add_time: true });
      const rem = (await remaining(name))!;
      expect(rem).toBeGreaterThanOrEqual(25);
      expect(rem).toBeLessThanOrEqual(30);
    });

    it('#17 test_renew_shorter_expiration: a renewal never shortens a lock', async () => {
      const name = uniq('test_renew_shorten');
      await client.getLock(name, { expires: 120 });
      await client.renewLock(name, { expires: 30, add_time: false });
      const rem = (await remaining(name))!;
      expect(rem).toBeGreaterThanOrEqual(115);
      expect(rem).toBeLessThanOrEqual(120);
    });

    it('#18 test_renew_shorter_expiration_add_time: add_time adds even a shorter time', async () => {
      const name = uniq('test_renew_shorten');
      await client.getLock(name, { expires: 120 });
      await client.renewLock(name, { expires: 30, add_time: true });
      const rem = (await remaining(name))!;
      expect(rem).toBeGreaterThanOrEqual(140);
      expect(rem).toBeLessThanOrEqual(150);
    });

    it('#19 test_lockmgr_renew_main: mgr.renew adds time to the main lock by default', async () => {
      const name = uniq('test_renew_lockmgr');
      await client.withLock(name, { keepalive: false, expires: 20 }, async (lm) => {
        const rem = lm.main_lock!.expires_seconds!;
        expect(rem).toBeGreaterThanOrEqual(15);
        expect(rem).toBeLessThanOrEqual(20);
        await lm.renew(undefined, { expires: 30 });
        const db = (await remaining(name))!;
        expect(db).toBeGreaterThanOrEqual(40);
        expect(db).toBeLessThanOrEqual(50);
      });
      expect(await client.isLocked(name)).toBe(false);
    });

    it("#20 test_lockmgr_renew_expired: mgr.renew re-creates an expired main lock (keeping the manager's owner)", async () => {
      const name = uniq('test_renew_lockmgr_ex');
      await client.withLock(name, { keepalive: false, expires: 1, locked_by: 'renewing-manager', lock_process: 77 }, async (lm) => {
        const rem = lm.main_lock!.expires_seconds!;
        expect(rem).toBeGreaterThan(0);
        expect(rem).toBeLessThanOrEqual(1);
        const firstToken = lm.main_lock!.token;
        await sleep(1200);
        expect(lm.main_lock!.expired).toBe(true);
        const renewed = await lm.renew(undefined, { expires: 30 });
        const db = await client.lockInfo(name);
        expect(db).not.toBeNull();
        expect(db!.expires_seconds!).toBeGreaterThanOrEqual(25);
        expect(db!.expires_seconds!).toBeLessThanOrEqual(30);
        // Fixed (§5.5 "owner lost"): the new grant keeps the manager's owner fields...
        expect(db!.locked_by).toBe('renewing-manager');
        expect(db!.lock_process).toBe(77);
        // ...and becomes the manager's main lock.
        expect(renewed.token).toBeGreaterThan(firstToken);
        expect(lm.main_lock!.token).toBe(db!.token);
        expect(lm.main_lock!.expired).toBe(false);
      });
      // Leaving releases the re-created grant.
      expect(await client.isLocked(name)).toBe(false);
    });
  });

  // ---------------------------------------------------------------------------------------------
  describe('§2.7 set_lock', () => {
    it('creates new locks: statuses, counts and locks read like the seed', async () => {
      const [hello, world] = [uniq('hello'), uniq('world')];
      const res = await client.setLock(hello, world);
      expect(res).toBeInstanceOf(LockSetResult);
      expect(res.counts).toEqual({ created: 2, renewed: 0, skip_create: 0, skip_renew: 0 });
      expect(res.statuses).toEqual([
        [hello, { was_locked: false, status: 'create', locked: true }],
        [world, { was_locked: false, status: 'create', locked: true }],
      ]);
      expect(res.locks.map((l) => l.name)).toEqual([hello, world]);
      for (const l of res.locks) {
        expect(l).toBeInstanceOf(Lock);
        expect(l.locked_by).toBe(hostname());
        expect(l.expires_seconds!).toBeGreaterThan(595);
        expect(l.expires_seconds!).toBeLessThanOrEqual(600);
      }
      expect(res.locks[1]!.token).toBeGreaterThan(res.locks[0]!.token);
      // The serialised form is the wire's LockSetResult.
      const json = JSON.parse(JSON.stringify(res));
      expect(Object.keys(json)).toEqual(['locks', 'counts', 'statuses']);
      expect(json.statuses[0]).toEqual([hello, { was_locked: false, status: 'create', locked: true }]);
    });

    it('renews held locks (extend) and never shortens them', async () => {
      const [hello, world, fresh] = [uniq('hello'), uniq('world'), uniq('new')];
      const first = await client.setLock(hello, world);
      const res = await client.setLock(hello, world, fresh, { timeout: 30 });
      expect(res.counts).toEqual({ created: 1, renewed: 2, skip_create: 0, skip_renew: 0 });
      expect(res.statuses).toEqual([
        [hello, { was_locked: true, status: 'extend', locked: true }],
        [world, { was_locked: true, status: 'extend', locked: true }],
        [fresh, { was_locked: false, status: 'create', locked: true }],
      ]);
      // Same grants, still about 600 s, not cut down to 30.
      expect(res.locks.slice(0, 2).map((l) => l.token)).toEqual(first.locks.map((l) => l.token));
      expect((await remaining(hello))!).toBeGreaterThan(590);
      expect((await remaining(world))!).toBeGreaterThan(590);
      const rem = (await remaining(fresh))!;
      expect(rem).toBeGreaterThan(25);
      expect(rem).toBeLessThanOrEqual(30);
    });

    it('renews a held lock to now + timeout when that is longer', async () => {
      const name = uniq('grow');
      await client.setLock(name, { timeout: 10 });
      const res = await client.setLock(name, { timeout: 60 });
      expect(res.statuses[0]).toEqual([name, { was_locked: true, status: 'extend', locked: true }]);
      expect(res.locks[0]!.expires_seconds!).toBeGreaterThan(55);
      expect((await remaining(name))!).toBeGreaterThan(55);
    });

    it('renew=false and create=false skip: skip_renew, skip_create, and only held locks in locks', async () => {
      const [hello, nope] = [uniq('hello'), uniq('nope')];
      const held = await client.getLock(hello, { expires: 100 });
      const res = await client.setLock(hello, nope, { renew: false, create: false, timeout: 500 });
      expect(res.counts).toEqual({ created: 0, renewed: 0, skip_create: 1, skip_renew: 1 });
      expect(res.statuses).toEqual([
        [hello, { was_locked: true, status: 'skip', locked: true }],
        [nope, { was_locked: false, status: 'skip', locked: false }],
      ]);
      expect(res.locks.map((l) => l.name)).toEqual([hello]);
      expect(res.locks[0]!.token).toBe(held.token);
      // Not renewed, not created.
      expect((await remaining(hello))!).toBeLessThanOrEqual(100);
      expect(await client.isLocked(nope)).toBe(false);
    });

    it('create=false still renews held names (only-renew)', async () => {
      const [held, missing] = [uniq('held'), uniq('missing')];
      await client.getLock(held, { expires: 10 });
      const res = await client.setLock(held, missing, { create: false, timeout: 60 });
      expect(res.counts).toEqual({ created: 0, renewed: 1, skip_create: 1, skip_renew: 0 });
      expect(res.statuses[0]).toEqual([held, { was_locked: true, status: 'extend', locked: true }]);
      expect((await remaining(held))!).toBeGreaterThan(55);
      expect(await client.isLocked(missing)).toBe(false);
    });

    it('renew=false still creates free names', async () => {
      const name = uniq('norenew');
      const res = await client.setLock(name, { renew: false });
      expect(res.counts).toEqual({ created: 1, renewed: 0, skip_create: 0, skip_renew: 0 });
      expect(res.statuses[0]).toEqual([name, { was_locked: false, status: 'create', locked: true }]);
    });

    it('fail=true: LockFail (a Locked) carrying the existing lock, and nothing of the request is kept', async () => {
      const [c1, c2, exists, c3] = [uniq('c1'), uniq('c2'), uniq('exists'), uniq('c3')];
      const before = await other.getLock(exists, { expires: 100 });
      await sleep(20); // so a renewal would show in updated_at
      const err = await rejection(client.setLock(c1, c2, exists, c3, { fail: true, timeout: 500 }));
      expect(err).toBeInstanceOf(LockFail);
      expect(err).toBeInstanceOf(Locked);
      expect((err as LockFail).code).toBe('LOCK_FAIL');
      expect(err.message).toBe(`Lock '${exists}' already existed. Aborting!`);
      expect((err as LockFail).lock?.name).toBe(exists);
      expect((err as LockFail).lock?.token).toBe(before.token);
      // c1 and c2 (created before the failure) are rolled back; c3 was never reached.
      for (const n of [c1, c2, c3]) expect(await client.isLocked(n)).toBe(false);
      // The held lock is neither renewed nor changed.
      const after = await client.lockInfo(exists);
      expect(after?.token).toBe(before.token);
      expect(after?.locked_until?.getTime()).toBe(before.locked_until?.getTime());
      expect(after?.updated_at.getTime()).toBe(before.updated_at.getTime());
      expect(after?.locked_by).toBe('other-service');
    });

    it('statuses and locks follow the order of the request, not the order of the names', async () => {
      const [z, a, m] = [uniq('zz_order'), uniq('aa_order'), uniq('mm_order')];
      await client.getLock(m);
      const res = await client.setLock(z, a, m, { renew: false });
      expect(res.statuses.map(([n, st]) => [n, st.status])).toEqual([
        [z, 'create'],
        [a, 'create'],
        [m, 'skip'],
      ]);
      expect(res.locks.map((l) => l.name)).toEqual([z, a, m]);
    });

    it('fail=true reports the first held lock in request order', async () => {
      const [free, zz, aa] = [uniq('free'), uniq('zz_held'), uniq('aa_held')];
      await other.getLock(aa);
      const zzLock = await other.getLock(zz);
      const err = await rejection(client.setLock(free, zz, aa, { fail: true }));
      expect(err).toBeInstanceOf(LockFail);
      expect((err as LockFail).lock?.name).toBe(zz);
      expect((err as LockFail).lock?.token).toBe(zzLock.token);
      expect(await client.isLocked(free)).toBe(false);
    });

    it('fail=true rolls back a lock renewed earlier in the same request (duplicate name)', async () => {
      const [a, b] = [uniq('dupfail_a'), uniq('dupfail_b')];
      const err = await rejection(client.setLock(a, b, a, { fail: true }));
      expect(err).toBeInstanceOf(LockFail);
      expect((err as LockFail).lock?.name).toBe(a);
      expect(await client.isLocked(a)).toBe(false);
      expect(await client.isLocked(b)).toBe(false);
    });

    it('fail=true with create=false still fails on a held name', async () => {
      const [held, free] = [uniq('held'), uniq('free')];
      const lock = await client.getLock(held, { expires: 50 });
      const err = await rejection(client.setLock(free, held, { fail: true, create: false, timeout: 500 }));
      expect(err).toBeInstanceOf(LockFail);
      expect((err as LockFail).lock?.token).toBe(lock.token);
      expect((await remaining(held))!).toBeLessThanOrEqual(50);
      expect(await client.isLocked(free)).toBe(false);
    });

    it('fail=true with every name free creates them all', async () => {
      const names = [uniq('all_a'), uniq('all_b'), uniq('all_c')];
      const res = await client.setLock(...names, { fail: true });
      expect(res.counts).toEqual({ created: 3, renewed: 0, skip_create: 0, skip_renew: 0 });
      for (const n of names) expect(await client.isLocked(n)).toBe(true);
    });

    it('a name given twice is created, then extended', async () => {
      const name = uniq('dup');
      const res = await client.setLock(name, name);
      expect(res.counts).toEqual({ created: 1, renewed: 1, skip_create: 0, skip_renew: 0 });
      expect(res.statuses).toEqual([
        [name, { was_locked: false, status: 'create', locked: true }],
        [name, { was_locked: true, status: 'extend', locked: true }],
      ]);
      expect(res.locks).toHaveLength(2);
      expect(res.locks[1]!.token).toBe(res.locks[0]!.token);
    });

    it('no names: an empty result with every count at 0', async () => {
      const res = await client.setLock();
      expect(res.locks).toEqual([]);
      expect(res.statuses).toEqual([]);
      expect(res.counts).toEqual({ created: 0, renewed: 0, skip_create: 0, skip_renew: 0 });
      const withOptions = await client.setLock({ timeout: 30, fail: true });
      expect(withOptions.counts).toEqual({ created: 0, renewed: 0, skip_create: 0, skip_renew: 0 });
    });

    it.each([null, 0] as const)('timeout=%s creates locks that never expire (fixed: null works)', async (timeout) => {
      const name = uniq('forever');
      const res = await client.setLock(name, { timeout });
      expect(res.counts.created).toBe(1);
      expect(res.locks[0]!.locked_until).toBeNull();
      expect(res.locks[0]!.expired).toBe(false);
      await client.cleanLocks();
      expect(await remaining(name)).toBeNull();
    });

    it('timeout=60 on a never-expiring lock extends it and keeps it never-expiring (fixed: no TypeError)', async () => {
      const name = uniq('t0');
      const first = await client.setLock(name, { timeout: null });
      const res = await client.setLock(name, { timeout: 60 });
      expect(res.statuses[0]).toEqual([name, { was_locked: true, status: 'extend', locked: true }]);
      expect(res.counts.renewed).toBe(1);
      expect(res.locks[0]!.token).toBe(first.locks[0]!.token);
      expect(res.locks[0]!.locked_until).toBeNull();
      expect(await remaining(name)).toBeNull();
    });

    it('locked_by and process_id are stored', async () => {
      const name = uniq('owner');
      const res = await client.setLock(name, { locked_by: 'set-owner', process_id: 4242 });
      expect(res.locks[0]!.locked_by).toBe('set-owner');
      expect(res.locks[0]!.lock_process).toBe(4242);
      const row = await client.lockInfo(name);
      expect(row?.locked_by).toBe('set-owner');
      expect(row?.lock_process).toBe(4242);
    });

    it('a negative timeout is InvalidRequest and creates nothing (fixed: no silent "forever")', async () => {
      const name = uniq('negative');
      const err = await rejection(client.setLock(name, { timeout: -5 }));
      expect(err).toBeInstanceOf(InvalidRequest);
      expect((err as InvalidRequest).details.map((d) => d.field)).toEqual(['timeout']);
      expect(await client.isLocked(name)).toBe(false);
    });
  });

  // ---------------------------------------------------------------------------------------------
  describe('§5.5 contract rows', () => {
    it("getLock defaults: locked_by is the client's hostname, lock_process null, about 600 s", async () => {
      const name = uniq('a');
      const lck = await client.getLock(name);
      expect(lck.locked_by).toBe(hostname());
      expect(lck.lock_process).toBeNull();
      expect(lck.expires_seconds!).toBeGreaterThan(595);
      expect(lck.expires_seconds!).toBeLessThanOrEqual(600);
      expect(lck.created_at).toBeInstanceOf(Date);
      expect(lck.updated_at).toBeInstanceOf(Date);
      expect(Number.isInteger(lck.token)).toBe(true);
    });

    it('getLock with expires=0 or null never expires', async () => {
      for (const expires of [0, null]) {
        const lck = await client.getLock(uniq('x'), { expires });
        expect(lck.locked_until).toBeNull();
      }
    });

    it("getLock with expires='30' (a numeric string) lasts 30 s", async () => {
      const name = uniq('x');
      // The TypeScript API takes numbers; the wire accepts the seed's lenient strings.
      const record = await client.call('get', { name, expires: '30' as unknown as number });
      const lck = Lock.fromRecord(record);
      expect(lck.expires_seconds!).toBeGreaterThan(25);
      expect(lck.expires_seconds!).toBeLessThanOrEqual(30);
    });

    it("getLock with locked_by='' uses the hostname", async () => {
      const lck = await client.getLock(uniq('x'), { locked_by: '' });
      expect(lck.locked_by).toBe(hostname());
    });

    it('unlock of a missing name is not an error', async () => {
      await expect(client.unlock(uniq('missing'))).resolves.toBe(false);
    });

    it('unlock by Lock object twice: the second call is a no-op (fixed: idempotent)', async () => {
      const name = uniq('twice');
      const lck = await client.getLock(name);
      expect(await client.unlock(lck)).toBe(true);
      expect(await client.unlock(lck)).toBe(false);
      expect(await client.isLocked(name)).toBe(false);
    });

    it('isLocked accepts a Lock object', async () => {
      const lck = await client.getLock(uniq('obj'));
      expect(await client.isLocked(lck)).toBe(true);
      await client.unlock(lck);
      expect(await client.isLocked(lck)).toBe(false);
    });

    it('getLock on an expired name succeeds with a new grant', async () => {
      const name = uniq('expired');
      const old = await other.getLock(name, { expires: 0.3 });
      await sleep(400);
      const lck = await client.getLock(name);
      expect(lck.token).toBeGreaterThan(old.token);
      expect(lck.locked_by).toBe(hostname());
    });

    it.each([false, true])(
      'renewing a never-expiring lock with expires > 0 (add_time=%s) works and keeps it never-expiring (fixed)',
      async (add_time) => {
        const name = uniq('forever');
        const lck = await client.getLock(name, { expires: null });
        const renewed = await client.renewLock(name, { expires: 60, add_time });
        expect(renewed.locked_until).toBeNull();
        expect(renewed.token).toBe(lck.token);
        expect(await remaining(name)).toBeNull();
      },
    );

    it.each([0, null] as const)('renewLock(x, expires=%s) makes the lock never expire', async (expires) => {
      const name = uniq('x');
      await client.getLock(name, { expires: 30 });
      const renewed = await client.renewLock(name, { expires });
      expect(renewed.locked_until).toBeNull();
      expect(await remaining(name)).toBeNull();
    });

    it('renewLock(expired Lock) without create throws LockNotFound naming the lock', async () => {
      const name = uniq('r3');
      const lck = await client.getLock(name, { expires: 0.3 });
      await sleep(400);
      const err = await rejection(client.renewLock(lck, { expires: 60 }));
      expect(err).toBeInstanceOf(LockNotFound);
      expect(err.message).toContain(name);
      expect(await client.isLocked(name)).toBe(false);
    });

    it('renewLock(expired Lock, create, locked_by, lock_process) re-creates it with that owner', async () => {
      const name = uniq('recreate');
      const lck = await client.getLock(name, { expires: 0.3 });
      await sleep(400);
      const renewed = await client.renewLock(lck, { expires: 60, create: true, locked_by: 'me', lock_process: 7 });
      expect(renewed.locked_by).toBe('me');
      expect(renewed.lock_process).toBe(7);
      const row = await client.lockInfo(name);
      expect(row?.locked_by).toBe('me');
      expect(row?.lock_process).toBe(7);
      expect(row?.token).toBe(renewed.token);
    });

    it('renewLock of an existing lock ignores locked_by (the owner is unchanged)', async () => {
      const name = uniq('owned');
      await other.getLock(name);
      const renewed = await client.renewLock(name, { locked_by: 'zzz', lock_process: 9 });
      expect(renewed.locked_by).toBe('other-service');
      expect(renewed.lock_process).toBeNull();
    });

    it('renewLock(obj) updates and returns the same object', async () => {
      const name = uniq('same');
      const lck = await client.getLock(name, { expires: 20 });
      const before = lck.locked_until!.getTime();
      const renewed = await client.renewLock(lck, { expires: 100 });
      expect(renewed).toBe(lck);
      expect(lck.locked_until!.getTime()).toBeGreaterThan(before + 70_000);
    });

    it('renewLock with create=false (explicit) on a missing name throws LockNotFound', async () => {
      await expect(client.renewLock(uniq('nf'), { create: false })).rejects.toBeInstanceOf(LockNotFound);
    });

    it('withLock with wait=7 (not a multiple of 5) is fine, contended or not (fixed)', async () => {
      const name = uniq('wait7');
      await expect(client.withLock(name, { wait: 7 }, () => 'free')).resolves.toBe('free');
      const held = await other.getLock(name);
      setTimeout(() => void other.unlock(held), 200);
      await expect(client.withLock(name, { wait: 7 }, () => 'contended')).resolves.toBe('contended');
    });

    it('mgr.lock(busy, ret=true) returns false instead of throwing', async () => {
      const busy = uniq('busy');
      await other.getLock(busy);
      await client.withLock(uniq('ctx'), async (m) => {
        expect(await m.lock(busy, { ret: true })).toBe(false);
        expect(m.locks.map((l) => l.name)).not.toContain(busy);
      });
      expect(await client.isLocked(busy)).toBe(true);
    });

    it('mgr.lock(busy, ret=true, wait=1) waits, then returns false', async () => {
      const busy = uniq('busy');
      await other.getLock(busy);
      await client.withLock(uniq('ctx'), async (m) => {
        const start = Date.now();
        expect(await m.lock(busy, { ret: true, wait: 1 })).toBe(false);
        expect(Date.now() - start).toBeGreaterThanOrEqual(950);
      });
    });

    it('a negative wait is InvalidRequest at once: getLock, mgr.lock and withLock (fixed: no endless retry)', async () => {
      const busy = uniq('busy');
      await other.getLock(busy);
      const start = Date.now();
      await expect(client.getLock(busy, { wait: -5 })).rejects.toBeInstanceOf(InvalidRequest);
      await client.withLock(uniq('ctx'), async (m) => {
        await expect(m.lock(busy, { wait: -5 })).rejects.toBeInstanceOf(InvalidRequest);
      });
      let bodyRan = false;
      const err = await rejection(
        client.withLock(uniq('neg'), { wait: -5 }, () => {
          bodyRan = true;
        }),
      );
      expect(err).toBeInstanceOf(InvalidRequest);
      expect(bodyRan).toBe(false);
      expect(Date.now() - start).toBeLessThan(2000);
    });

    it('withLock(expires=0, locked_by, lock_process): never-expiring main lock with that owner; extra locks inherit', async () => {
      const [ctx, extra] = [uniq('ctx'), uniq('extra')];
      await client.withLock(ctx, { keepalive: false, expires: 0, locked_by: 'me', lock_process: 42 }, async (m) => {
        expect(m.main_lock?.locked_until).toBeNull();
        expect(m.main_lock?.locked_by).toBe('me');
        expect(m.main_lock?.lock_process).toBe(42);
        await m.lock(extra);
        const row = await client.lockInfo(extra);
        expect(row?.locked_until).toBeNull();
        expect(row?.locked_by).toBe('me');
        expect(row?.lock_process).toBe(42);
      });
      expect(await client.isLocked(ctx)).toBe(false);
      expect(await client.isLocked(extra)).toBe(false);
    });

    it("mgr.lock('o3', expires=30) lasts 30 s", async () => {
      const o3 = uniq('o3');
      await client.withLock(uniq('ctx'), async (m) => {
        await m.lock(o3, { expires: 30 });
        const rem = (await remaining(o3))!;
        expect(rem).toBeGreaterThan(25);
        expect(rem).toBeLessThanOrEqual(30);
      });
    });

    it('mgr.unlock() of the main lock, then leaving, is fine and releases nobody else (fixed)', async () => {
      const name = uniq('mm');
      let taken: Lock | undefined;
      await client.withLock(name, async (m) => {
        expect(await m.unlock()).toBe(true);
        expect(await client.isLocked(name)).toBe(false);
        taken = await other.getLock(name);
      });
      const row = await client.lockInfo(name);
      expect(row?.token).toBe(taken!.token);
      expect(row?.locked_by).toBe('other-service');
    });

    it("mgr.lock('b'); mgr.unlock('b'); another party takes 'b'; leaving leaves theirs alone (fixed)", async () => {
      const b = uniq('b');
      let theirs: Lock | undefined;
      await client.withLock(uniq('ctx'), async (m) => {
        await m.lock(b);
        expect(await m.unlock(b)).toBe(true);
        theirs = await other.getLock(b);
      });
      expect((await client.lockInfo(b))?.token).toBe(theirs!.token);
    });

    it('leaving after the main lock expired and was re-granted to someone else releases only what is still held (fixed)', async () => {
      const [name, extra] = [uniq('lapsed'), uniq('extra')];
      let theirs: Lock | undefined;
      await client.withLock(name, { keepalive: false, expires: 0.5 }, async (m) => {
        await m.lock(extra, { expires: 60 });
        await sleep(700);
        theirs = await other.getLock(name);
      });
      expect((await client.lockInfo(name))?.token).toBe(theirs!.token);
      expect(await client.isLocked(extra)).toBe(false);
    });

    it('mgr.renew() adds 120 s', async () => {
      const name = uniq('plus120');
      await client.withLock(name, { keepalive: false, expires: 60 }, async (m) => {
        const renewed = await m.renew();
        expect(renewed.expires_seconds!).toBeGreaterThan(175);
        expect(renewed.expires_seconds!).toBeLessThanOrEqual(180);
        expect((await remaining(name))!).toBeGreaterThan(175);
      });
    });

    it('mgr.renew() of a never-expiring main lock works and keeps it never-expiring (fixed)', async () => {
      const name = uniq('mgr_forever');
      await client.withLock(name, { keepalive: false, expires: null }, async (m) => {
        const renewed = await m.renew();
        expect(renewed.locked_until).toBeNull();
        expect(renewed.token).toBe(m.main_lock!.token);
        await m.renew(undefined, { expires: 30, add_time: false });
        expect(await remaining(name)).toBeNull();
      });
      expect(await client.isLocked(name)).toBe(false);
    });

    it('mgr.renew(name) of a lock another party holds extends it but leaving does not release it', async () => {
      const theirs = uniq('theirs');
      const lock = await other.getLock(theirs, { expires: 30 });
      await client.withLock(uniq('ctx'), async (m) => {
        const renewed = await m.renew(theirs);
        expect(renewed.expires_seconds!).toBeGreaterThan(145);
      });
      const row = await client.lockInfo(theirs);
      expect(row?.token).toBe(lock.token);
      expect(row?.locked_by).toBe('other-service');
    });

    it('listLocks: live locks in name order, filtered by prefix, expired ones left out', async () => {
      const p = uniq('listing');
      await client.setLock(`${p}.b`, `${p}.a`, `${p}.c`);
      await client.getLock(`${p}.gone`, { expires: 0.2 });
      await sleep(300);
      const locks = await client.listLocks({ prefix: `${p}.` });
      expect(locks.map((l) => l.name)).toEqual([`${p}.a`, `${p}.b`, `${p}.c`]);
      expect(locks.every((l) => l instanceof Lock)).toBe(true);
      const page = await client.listLocksPage({ prefix: `${p}.`, limit: 2 });
      expect(page.locks.map((l) => l.name)).toEqual([`${p}.a`, `${p}.b`]);
      expect(page.next).toBe(`${p}.b`);
      const rest = await client.listLocksPage({ prefix: `${p}.`, limit: 2, after: page.next });
      expect(rest.locks.map((l) => l.name)).toEqual([`${p}.c`]);
      expect(rest.next).toBeUndefined();
    });

    it('a Lock token guards unlock and renew: after a re-grant, NotOwner and the new holder keeps the lock (fixed)', async () => {
      const name = uniq('fenced');
      const mine = await client.getLock(name, { expires: 0.3 });
      await sleep(400);
      const theirs = await other.getLock(name, { expires: 60 });
      expect(theirs.token).toBeGreaterThan(mine.token);
      const unlockErr = await rejection(client.unlock(mine));
      expect(unlockErr).toBeInstanceOf(NotOwner);
      expect((unlockErr as NotOwner).code).toBe('NOT_OWNER');
      expect((unlockErr as NotOwner).lock?.token).toBe(theirs.token);
      const renewErr = await rejection(client.renewLock(mine, { expires: 600, create: true }));
      expect(renewErr).toBeInstanceOf(NotOwner);
      const row = await client.lockInfo(name);
      expect(row?.token).toBe(theirs.token);
      expect(row?.locked_until?.getTime()).toBe(theirs.locked_until?.getTime());
      // Their own token still works.
      expect(await other.unlock(theirs)).toBe(true);
    });

    it('get with wait is woken by the release, well before any fixed poll (wait=10)', async () => {
      const name = uniq('woken');
      const held = await other.getLock(name);
      const waiting = client.getLock(name, { wait: 10 });
      await sleep(300);
      const released = Date.now();
      expect(await other.unlock(held)).toBe(true);
      const lck = await waiting;
      expect(Date.now() - released).toBeLessThan(1000);
      expect(lck.token).toBeGreaterThan(held.token);
      expect(lck.locked_by).toBe(hostname());
    });

    it('wait takes any non-negative number: 0.5 s runs out with Locked', async () => {
      const name = uniq('halfsec');
      await other.getLock(name);
      const start = Date.now();
      await expect(client.getLock(name, { wait: 0.5 })).rejects.toBeInstanceOf(Locked);
      const elapsed = Date.now() - start;
      expect(elapsed).toBeGreaterThanOrEqual(450);
      expect(elapsed).toBeLessThan(2000);
    });

    it('a very long wait (30 days) still waits for the release', async () => {
      const name = uniq('longwait');
      const held = await other.getLock(name);
      const waiting = client.getLock(name, { wait: 30 * 24 * 3600 });
      let settled = false;
      void waiting.then(
        () => (settled = true),
        () => (settled = true),
      );
      await sleep(500);
      expect(settled).toBe(false);
      await other.unlock(held);
      const lck = await waiting;
      expect(lck.name).toBe(name);
      expect((await client.lockInfo(name))?.token).toBe(lck.token);
    });

    it('waiters are served one at a time as each holder releases', async () => {
      const name = uniq('queue');
      const first = await other.getLock(name);
      let holders = 0;
      let maxHolders = 0;
      const granted: Lock[] = [];
      const waiters = [0, 1, 2].map(() =>
        client.getLock(name, { wait: 10 }).then(async (l) => {
          holders += 1;
          maxHolders = Math.max(maxHolders, holders);
          granted.push(l);
          await sleep(50);
          holders -= 1;
          await client.unlock(l);
        }),
      );
      await sleep(200);
      expect(granted).toHaveLength(0);
      await other.unlock(first);
      await Promise.all(waiters);
      expect(maxHolders).toBe(1);
      const tokens = granted.map((l) => l.token);
      expect(tokens).toHaveLength(3);
      expect([...tokens].sort((a, b) => a - b)).toEqual(tokens);
      expect(tokens[0]).toBeGreaterThan(first.token);
    });

    it('module-level functions use a default client configured from the environment', async () => {
      const saved = { url: process.env.LOCKMGR_NATS_URL, prefix: process.env.LOCKMGR_PREFIX };
      process.env.LOCKMGR_NATS_URL = stack.nats.url;
      process.env.LOCKMGR_PREFIX = stack.prefix;
      try {
        const name = uniq('module');
        const res = await defaultSetLock(name, { timeout: 30 });
        expect(res.counts.created).toBe(1);
        expect(await defaultIsLocked(name)).toBe(true);
        await expect(defaultGetLock(name)).rejects.toBeInstanceOf(Locked);
        expect(await client.isLocked(name)).toBe(true);
        expect(await defaultUnlock(name)).toBe(true);
        expect(await client.isLocked(name)).toBe(false);
      } finally {
        await closeDefaultClient();
        process.env.LOCKMGR_NATS_URL = saved.url;
        process.env.LOCKMGR_PREFIX = saved.prefix;
        if (saved.url === undefined) delete process.env.LOCKMGR_NATS_URL;
        if (saved.prefix === undefined) delete process.env.LOCKMGR_PREFIX;
      }
    });

    it('resetLocks removes every lock, never-expiring ones included', async () => {
      await client.setLock(uniq('r1'), uniq('r2'), { timeout: null });
      const removed = await client.resetLocks();
      expect(removed).toBeGreaterThanOrEqual(2);
      expect(await client.listLocks()).toEqual([]);
    });
  });
});
