/**
 * Races: many clients (separate NATS connections) acquiring the same names at once must resolve
 * to exactly one winner and `Locked` for the rest, never another error; a lock has at most one
 * holder at any time and fencing tokens grow with every grant. Runs on SQLite and PostgreSQL with
 * one in-process daemon, and on PostgreSQL with two daemon processes sharing the database and the
 * prefix (the queue group spreads the requests between them).
 */
import { type LockClient, Locked, LockFail, type Lock, type LockSetResult } from '../../client/index';
import { STORES } from '../helpers/databases';
import { spawnDaemon, startStack, type DaemonProcess, type Stack } from '../helpers/stack';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const CLIENTS = 6;

function shuffled<T>(items: T[]): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

/** What went wrong in a race, described so a failing assertion says it plainly. */
function unexpected(results: PromiseSettledResult<unknown>[], allowed: (err: unknown) => boolean): string[] {
  return results
    .filter((r): r is PromiseRejectedResult => r.status === 'rejected' && !allowed(r.reason))
    .map((r) => `${(r.reason as Error).name}: ${(r.reason as Error).message}`);
}

/** The race cases, run against whatever daemons `ctx()` has behind its clients. */
function raceCases(ctx: () => { clients: LockClient[]; tag: string }) {
  let seq = 0;
  const uniq = (base: string) => `${base}_${ctx().tag}_${++seq}`;

  it('N clients racing getLock for the same free names: exactly one winner per name, Locked for the rest', async () => {
    const { clients } = ctx();
    const names = Array.from({ length: 25 }, (_, i) => uniq(`get${i}`));
    const attempts = clients.flatMap((c) => shuffled(names).map((name) => ({ name, p: c.getLock(name, { expires: 60 }) })));
    const settled = await Promise.allSettled(attempts.map((a) => a.p));
    expect(unexpected(settled, (e) => e instanceof Locked && !(e instanceof LockFail) && e.code === 'LOCKED')).toEqual([]);
    for (const name of names) {
      const mine = settled.filter((_, i) => attempts[i]!.name === name);
      const winners = mine.filter((r): r is PromiseFulfilledResult<Lock> => r.status === 'fulfilled');
      expect({ name, winners: winners.length }).toEqual({ name, winners: 1 });
      const winner = winners[0]!.value;
      // Every loser was told who holds it, and it is the winner.
      for (const r of mine) if (r.status === 'rejected') expect((r.reason as Locked).lock?.token).toBe(winner.token);
      expect((await clients[0]!.lockInfo(name))?.token).toBe(winner.token);
    }
    const tokens = settled.filter((r) => r.status === 'fulfilled').map((r) => (r as PromiseFulfilledResult<Lock>).value.token);
    expect(new Set(tokens).size).toBe(names.length);
  });

  it('setLock(fail=true) of the same names from every client: one request takes them all, the rest LockFail', async () => {
    const { clients } = ctx();
    const names = Array.from({ length: 10 }, (_, i) => uniq(`setfail${i}`));
    const settled = await Promise.allSettled(clients.map((c) => c.setLock(...names, { fail: true, timeout: 60 })));
    expect(unexpected(settled, (e) => e instanceof LockFail)).toEqual([]);
    const winners = settled.filter((r): r is PromiseFulfilledResult<LockSetResult> => r.status === 'fulfilled');
    expect(winners).toHaveLength(1);
    const won = winners[0]!.value;
    expect(won.counts).toEqual({ created: names.length, renewed: 0, skip_create: 0, skip_renew: 0 });
    for (const [i, name] of names.entries()) expect((await clients[0]!.lockInfo(name))?.token).toBe(won.locks[i]!.token);
  });

  it('setLock(fail=true) in different name orders: one winner, and a failed request keeps nothing', async () => {
    const { clients } = ctx();
    const names = Array.from({ length: 8 }, (_, i) => uniq(`setorder${i}`));
    const settled = await Promise.allSettled(clients.map((c) => c.setLock(...shuffled(names), { fail: true, timeout: 60 })));
    expect(unexpected(settled, (e) => e instanceof LockFail)).toEqual([]);
    const winners = settled.filter((r): r is PromiseFulfilledResult<LockSetResult> => r.status === 'fulfilled');
    // The daemon takes a request's rows in name order, so the request that takes the first name
    // takes them all: no two requests block each other into failing both.
    expect(winners).toHaveLength(1);
    const won = winners[0]!.value;
    expect(won.counts.created).toBe(names.length);
    const grantedTokens = new Set(won.locks.map((l) => l.token));
    for (const name of names) {
      const row = await clients[0]!.lockInfo(name);
      expect(row !== null && grantedTokens.has(row.token)).toBe(true);
    }
  });

  it('setLock (renew) of the same names from every client: each name created once and extended by the others', async () => {
    const { clients } = ctx();
    const names = Array.from({ length: 10 }, (_, i) => uniq(`setrenew${i}`));
    const settled = await Promise.allSettled(clients.map((c) => c.setLock(...shuffled(names), { timeout: 60 })));
    expect(unexpected(settled, () => false)).toEqual([]);
    const results = settled.map((r) => (r as PromiseFulfilledResult<LockSetResult>).value);
    for (const name of names) {
      const statuses = results.map((res) => res.statuses.find(([n]) => n === name)![1].status);
      expect(statuses.filter((s) => s === 'create')).toHaveLength(1);
      expect(statuses.filter((s) => s === 'extend')).toHaveLength(clients.length - 1);
      const tokens = new Set(results.map((res) => res.locks.find((l) => l.name === name)!.token));
      expect(tokens.size).toBe(1);
    }
    const created = results.reduce((n, res) => n + res.counts.created, 0);
    expect(created).toBe(names.length);
  });

  it('getLock and setLock(fail=true) mixed on one name: one winner, Locked (or LockFail) for the rest', async () => {
    const { clients } = ctx();
    for (let round = 0; round < 5; round++) {
      const name = uniq('mixed');
      const attempts = clients.flatMap((c, i) =>
        i % 2 === 0 ? [c.getLock(name), c.setLock(name, { fail: true })] : [c.setLock(name, { fail: true }), c.getLock(name)],
      );
      const settled = await Promise.allSettled<unknown>(attempts);
      expect(unexpected(settled, (e) => e instanceof Locked)).toEqual([]);
      expect(settled.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    }
  });

  it('holder count never exceeds 1 and fencing tokens strictly increase across grants (get -> check -> unlock)', async () => {
    const { clients } = ctx();
    const name = uniq('counter');
    const until = Date.now() + 2500;
    let holders = 0;
    let lastToken = 0;
    let grants = 0;
    const problems: string[] = [];
    await Promise.all(
      clients.map(async (c, i) => {
        const waits = i % 2 === 0; // half block in the daemon's wait queue, half retry on Locked
        while (Date.now() < until) {
          let lock: Lock;
          try {
            lock = await c.getLock(name, { expires: 30, wait: waits ? 2 : 0 });
          } catch (err) {
            if (!(err instanceof Locked)) problems.push(`getLock: ${(err as Error).name}: ${(err as Error).message}`);
            else if (!waits) await sleep(Math.random() * 3);
            continue;
          }
          holders += 1;
          grants += 1;
          if (holders !== 1) problems.push(`${holders} holders at once`);
          if (lock.token <= lastToken) problems.push(`token ${lock.token} after ${lastToken}`);
          lastToken = Math.max(lastToken, lock.token);
          await sleep(Math.random() * 3);
          holders -= 1;
          try {
            // By object: only this grant; it must still be ours.
            if (!(await c.unlock(lock))) problems.push(`grant ${lock.token} was gone at unlock`);
          } catch (err) {
            problems.push(`unlock: ${(err as Error).name}: ${(err as Error).message}`);
          }
        }
      }),
    );
    expect(problems).toEqual([]);
    expect(grants).toBeGreaterThan(20);
    expect(await clients[0]!.isLocked(name)).toBe(false);
  });

  it('a waiter is woken by a release that happens while its first attempt is still in flight', async () => {
    const { clients } = ctx();
    const [holder, waiter] = [clients[0]!, clients[1]!];
    const slow: number[] = [];
    for (let trial = 0; trial < 15; trial++) {
      const name = uniq('wake');
      const held = await holder.getLock(name);
      const waiting = waiter.getLock(name, { wait: 5 });
      await sleep(trial % 5); // release around the time the waiter's first attempt runs
      const released = Date.now();
      await holder.unlock(held);
      const lock = await waiting;
      const ms = Date.now() - released;
      if (ms > 1000) slow.push(ms);
      await waiter.unlock(lock);
    }
    expect(slow).toEqual([]);
  });
}

describe.each(STORES)('races on %s (one daemon)', (store) => {
  let stack: Stack;
  const clients: LockClient[] = [];
  beforeAll(async () => {
    stack = await startStack({ store });
    clients.push(stack.client);
    for (let i = 1; i < CLIENTS; i++) clients.push(await stack.newClient());
  });
  afterAll(async () => {
    await stack?.stop();
  });

  raceCases(() => ({ clients, tag: store }));
});

describe('races on postgres with two daemon processes sharing the database and the prefix', () => {
  let stack: Stack;
  const daemons: DaemonProcess[] = [];
  const clients: LockClient[] = [];
  beforeAll(async () => {
    stack = await startStack({ store: 'postgres', daemons: 0 });
    const env = {
      LOCKMGR_DB: stack.db.url,
      LOCKMGR_NATS_URL: stack.nats.url,
      LOCKMGR_PREFIX: stack.prefix,
      LOCKMGR_EVENTS_STREAM: `EV_RACES_${stack.prefix}`,
      LOCKMGR_SWEEP_INTERVAL: '0.2',
    };
    // Both at once: they also race to apply the migrations.
    daemons.push(...(await Promise.all([spawnDaemon(env), spawnDaemon(env)])));
    clients.push(stack.client);
    for (let i = 1; i < CLIENTS; i++) clients.push(await stack.newClient());
  }, 60_000);
  afterAll(async () => {
    await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
    await Promise.all(daemons.map((d) => d.stop()));
    await stack?.stop();
  });

  raceCases(() => ({ clients, tag: 'pg2' }));

  it('both daemons served requests (the queue group spread them)', async () => {
    const stats = await stack.client.nc.services.client().stats('lockmgr');
    const perDaemon = new Map<string, number>();
    for await (const s of stats) {
      const served = s.endpoints?.reduce((n, e) => n + (e.num_requests ?? 0), 0) ?? 0;
      perDaemon.set(s.id, served);
    }
    expect(perDaemon.size).toBe(2);
    for (const served of perDaemon.values()) expect(served).toBeGreaterThan(50);
    // Neither daemon logged an error while racing.
    for (const d of daemons) expect(d.output()).not.toMatch(/"level":"error"/);
  });
});
