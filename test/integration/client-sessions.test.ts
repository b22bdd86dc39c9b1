/**
 * Holders that are alive and know it, through the client: `withLock` keeps its lock alive past
 * the session's ttl; its signal fires before anyone else can be granted the lock (force-release,
 * a SIGSTOPped holder) and it then rejects LockLost; `await using` releases a held lock; a
 * SIGKILLed holder's lock is free within the ttl plus the lock-delay plus 1 s.
 *
 * The holders that are killed or paused are child processes running the built client (dist/).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { LockLost, Locked, type LockClient } from '../../client/index';
import { STORES } from '../helpers/databases';
import { until } from '../helpers/cli';
import { ROOT, startStack, type Stack } from '../helpers/stack';

jest.setTimeout(60_000);

const LOCK_DELAY = 2;
const TTL = 2;

/**
 * A holder process: takes `name` with withLock in a session of `ttl` seconds, then prints a line
 * per 20 ms of work ("work <epoch ms>") while its signal has not fired, then "aborted <epoch ms>",
 * then how withLock ended ("lost" / "returned").
 */
const HOLDER = `
const { LockClient, LockLost } = require(${JSON.stringify(join(ROOT, 'dist', 'client', 'index.js'))});
(async () => {
  const client = await LockClient.connect({ sessionTtl: Number(process.env.TTL) });
  try {
    await client.withLock(process.env.NAME, async (mgr) => {
      console.log('held ' + mgr.main_lock.token);
      while (!mgr.signal.aborted) {
        console.log('work ' + Date.now());
        await new Promise((r) => setTimeout(r, 20));
      }
      console.log('aborted ' + Date.now());
    });
    console.log('returned');
  } catch (err) {
    console.log(err instanceof LockLost ? 'lost' : 'error ' + err.message);
  }
  await client.close();
})();
`;

interface Holder {
  child: ChildProcess;
  lines(): string[];
  exited: Promise<void>;
}

function startHolder(stack: Stack, name: string): Holder {
  const child = spawn(process.execPath, ['-e', HOLDER], {
    env: { ...process.env, LOCKMGR_NATS_URL: stack.nats.url, LOCKMGR_PREFIX: stack.prefix, NAME: name, TTL: String(TTL) },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  return { child, lines: () => out.split('\n').filter(Boolean), exited };
}

describe.each(STORES)('sessions through the client, on %s', (store) => {
  let stack: Stack;
  let client: LockClient;
  beforeAll(async () => {
    // PostgreSQL with two daemons: any of them serves a session's requests.
    stack = await startStack({ store, daemons: store === 'postgres' ? 2 : 1, config: { lockDelay: LOCK_DELAY, sweepInterval: 0.1 } });
    client = await stack.newClient();
  });
  afterAll(async () => {
    await client?.close();
    await stack?.stop();
  });

  it('withLock keeps its lock past the session ttl while the callback runs, then releases it', async () => {
    const worker = await stack.newClient({ locked_by: 'worker', sessionTtl: 1 });
    const result = await worker.withLock('cs.kept', async (mgr) => {
      await new Promise((r) => setTimeout(r, 2500));
      await expect(client.getLock('cs.kept')).rejects.toBeInstanceOf(Locked);
      expect(mgr.signal.aborted).toBe(false);
      return 'done';
    });
    expect(result).toBe('done');
    expect(await client.isLocked('cs.kept')).toBe(false);
    await worker.close();
  });

  it('await using releases a held lock when its scope ends', async () => {
    {
      await using held = await client.hold('cs.scoped');
      expect(held.token).toBeGreaterThan(0);
      expect(await client.isLocked('cs.scoped')).toBe(true);
      expect(held.signal.aborted).toBe(false);
    }
    expect(await client.isLocked('cs.scoped')).toBe(false);
  });

  it('force-released: the signal fires before the name is granted again, and withLock rejects LockLost', async () => {
    const worker = await stack.newClient({ locked_by: 'worker', sessionTtl: TTL });
    let abortedAt = 0;
    let grantedAt = 0;
    let releaseSentAt = 0;
    const run = worker.withLock('cs.forced', async (mgr) => {
      mgr.signal.addEventListener('abort', () => (abortedAt = performance.now()));
      releaseSentAt = performance.now();
      expect(await client.unlock('cs.forced')).toBe(true); // by name, without the token: by force
      const next = client.getLock('cs.forced', { wait: 10 }).then((l) => ((grantedAt = performance.now()), l));
      await until(() => mgr.signal.aborted, 5_000, 'the signal');
      await next;
      return 'returned';
    });
    const lost = (await run.catch((err: unknown) => err)) as LockLost;
    expect(lost).toBeInstanceOf(LockLost);
    expect(lost.why).toContain('released by someone else');
    expect(abortedAt).toBeGreaterThan(0);
    expect(grantedAt).toBeGreaterThan(abortedAt);
    // lostAfter is no later than the release, and the name stayed blocked a lock-delay after it.
    expect(lost.lostAfter).toBeLessThanOrEqual(releaseSentAt);
    expect(grantedAt).toBeGreaterThanOrEqual(lost.lostAfter + LOCK_DELAY * 1000);
    await client.unlock('cs.forced');
    await worker.close();
  });

  it('a grant in the session whose reply never reached its caller is released by the next keepalive', async () => {
    const session = await client.openSession({ ttl: 1.5 });
    // A get whose reply is lost: sent under the session, answered to nobody in this client.
    const body = new TextEncoder().encode(JSON.stringify({ name: 'cs.stray', session: session.id }));
    await client.nc.request(`${stack.prefix}.get`, body, { timeout: 5000 });
    expect(await client.isLocked('cs.stray')).toBe(true);
    // A lock the client took itself in the same session is kept.
    const mine = await client.getLock('cs.mine', { session });
    await until(async () => !(await client.isLocked('cs.stray')), 3_000, 'the stray grant to be released');
    expect((await client.lockInfo('cs.mine'))?.token).toBe(mine.token);
    await session.close();
    expect(await client.isLocked('cs.mine')).toBe(false);
  });

  it('a SIGKILLed holder: its lock is free within the ttl plus the lock-delay plus 1 s', async () => {
    const holder = startHolder(stack, 'cs.killed');
    await until(() => holder.lines().some((l) => l.startsWith('work')), 10_000, 'the holder to work');
    holder.child.kill('SIGKILL');
    const killedAt = performance.now();
    await holder.exited;
    const lock = await client.getLock('cs.killed', { wait: 30 });
    const freeAfter = performance.now() - killedAt;
    expect(freeAfter).toBeLessThan((TTL + LOCK_DELAY + 1) * 1000);
    await client.unlock(lock);
  });

  it('a SIGSTOPped withLock holder: its signal fired before anyone else was granted the lock', async () => {
    const holder = startHolder(stack, 'cs.paused');
    await until(() => holder.lines().some((l) => l.startsWith('work')), 10_000, 'the holder to work');
    holder.child.kill('SIGSTOP');
    const lock = await client.getLock('cs.paused', { wait: 30 });
    const grantedAt = Date.now();
    holder.child.kill('SIGCONT');
    await holder.exited;
    const lines = holder.lines();
    const worked = lines.filter((l) => l.startsWith('work')).map((l) => Number(l.split(' ')[1]));
    // No work after the other grant: the holder saw its signal first thing when it resumed.
    expect(worked.filter((t) => t >= grantedAt)).toEqual([]);
    expect(lines).toContain('lost');
    expect(lines.some((l) => l.startsWith('aborted'))).toBe(true);
    await client.unlock(lock);
  });
});
