/**
 * The daemon's safety rules, each caused for real against real daemons, NATS and databases:
 * one authority per prefix (a second store refused at start and while serving; a SQLite file
 * serves one daemon), request ids (a re-sent request is never done twice), replies that always
 * fit, grants withdrawn when their reply would come too late, and a PostgreSQL row held by a stuck
 * session holding up only the requests for that name.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { Client } from 'pg';
import { AuthorityConflict, LockClient, Locked, ReplyTooLarge, StoreUnavailable } from '../../client/index';
import { AuthorityConflict as DaemonAuthorityConflict } from '../../daemon/authority';
import { CHANNELS } from '../../daemon/diagnostics';
import { StoreInUse, type Requester } from '../../daemon/store/store';
import { eventSubject, type LockEvent } from '../../shared/events';
import { requestSubject, servicePingSubject, type Api, type Endpoint, type LockRecord, type Reply } from '../../shared/protocol';
import { runCli } from '../helpers/cli';
import { createTestDatabase, STORES } from '../helpers/databases';
import { quietLogger, startStack, type Stack } from '../helpers/stack';
import { LockDaemon } from '../../daemon/lock-daemon';
import { Batcher, Recalled } from '../../daemon/batcher';
import { systemClock } from '../../daemon/clock';
import { lockHandlers } from '../../daemon/handlers';
import { WaitQueue } from '../../daemon/waiters';
import { validateRequest } from '../../shared/validate';
import { ops, type AcquireResult } from '../../daemon/lock-ops';
import { toLockRecord } from '../../daemon/lock-records';
import { PostgresStore } from '../../daemon/store/postgres/postgres-store';

jest.setTimeout(60_000);

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** One raw request, as any NATS client would send it; the parsed reply. */
/** The events of `name` published from now on: `seen` fills as they arrive. */
async function follow(
  stack: Stack,
  name: string,
): Promise<{ seen: LockEvent[]; settled(count: number): Promise<LockEvent[]>; stop(): void }> {
  const seen: LockEvent[] = [];
  const sub = stack.client.nc.subscribe(eventSubject(stack.prefix, '*', name), {
    callback: (_err, m) => seen.push(JSON.parse(decoder.decode(m.data)) as LockEvent),
  });
  await stack.client.nc.flush();
  return {
    seen,
    // Wait for `count` events, then a little longer for any that should not come.
    settled: async (count) => {
      for (let i = 0; i < 100 && seen.length < count; i++) await new Promise((r) => setTimeout(r, 50));
      await new Promise((r) => setTimeout(r, 300));
      return seen;
    },
    stop: () => sub.unsubscribe(),
  };
}

async function raw<E extends Endpoint>(stack: Stack, endpoint: E, body: object): Promise<Reply<Api[E]['result']>> {
  const msg = await stack.client.nc.request(requestSubject(stack.prefix, endpoint), encoder.encode(JSON.stringify(body)), {
    timeout: 5000,
  });
  return JSON.parse(decoder.decode(msg.data)) as Reply<Api[E]['result']>;
}

describe.each(STORES)('request ids on %s: a re-sent request is never done twice', (store) => {
  let stack: Stack;
  beforeAll(async () => {
    // Events stay in the outbox where the test can count them: no relay delivers them.
    stack = await startStack({ store, config: { eventsJetstream: 'off' } });
  });
  afterAll(async () => stack?.stop());

  it('a get sent again (a re-send, or the same first attempt twice) answers the first grant; one grant, one event', async () => {
    const events = await follow(stack, 'rid.get');
    const first = await raw(stack, 'get', { name: 'rid.get', request_id: 'g-1' });
    const resent = await raw(stack, 'get', { name: 'rid.get', request_id: 'g-1', attempt: 2 });
    const again = await raw(stack, 'get', { name: 'rid.get', request_id: 'g-1' });
    expect(first.ok && resent.ok && again.ok).toBe(true);
    expect(resent).toEqual(first);
    expect(again).toEqual(first);
    // Another request id is another request: Locked.
    const other = await raw(stack, 'get', { name: 'rid.get', request_id: 'g-2' });
    expect(other).toMatchObject({ ok: false, error: { code: 'LOCKED' } });
    expect((await events.settled(1)).map((e) => e.type)).toEqual(['created']);
    events.stop();
  });

  it('an unlock sent again answers unlocked: true, and does not release a grant made since', async () => {
    const lock = await stack.client.getLock('rid.unlock');
    const first = await raw(stack, 'admin_unlock', { name: 'rid.unlock', request_id: 'u-1' });
    expect(first).toEqual({ ok: true, result: { unlocked: true } });
    const next = await stack.client.getLock('rid.unlock');
    expect(next.token).toBeGreaterThan(lock.token);
    expect(await raw(stack, 'admin_unlock', { name: 'rid.unlock', request_id: 'u-1', attempt: 2 })).toEqual(first);
    expect((await stack.client.lockInfo('rid.unlock'))?.token).toBe(next.token);
  });

  it('copies of one request that arrive together are done once and answered alike (they join the first)', async () => {
    await stack.client.getLock('rid.together');
    // Two copies of one unlock in the same moment, as a re-send can arrive while the first runs.
    const copies = await Promise.all(
      [1, 2].map((attempt) => raw(stack, 'admin_unlock', { name: 'rid.together', request_id: 'u-2', attempt })),
    );
    expect(copies).toEqual([
      { ok: true, result: { unlocked: true } },
      { ok: true, result: { unlocked: true } },
    ]);
    // And copies of a get: one grant.
    const gets = await Promise.all([1, 2, 3].map((attempt) => raw(stack, 'get', { name: 'rid.together', request_id: 'g-3', attempt })));
    const tokens = gets.map((g) => (g.ok ? g.result.token : g.error.code));
    expect(new Set(tokens).size).toBe(1);
    expect(typeof tokens[0]).toBe('number');
  });

  it('a get that asked for progress is told when the daemon starts to wait, then answered; the client sends no copy meanwhile', async () => {
    const held = await stack.client.getLock('rid.wait', { expires: 60 });
    // Raw: a notice, then the answer, on the one reply subject.
    const inbox = stack.client.nc.subscribe('_INBOX.rid-wait', { max: 2 });
    stack.client.nc.publish(`${stack.prefix}.get`, encoder.encode(JSON.stringify({ name: 'rid.wait', wait: 0.3, progress: true })), {
      reply: '_INBOX.rid-wait',
    });
    const messages: unknown[] = [];
    for await (const m of inbox) messages.push(JSON.parse(decoder.decode(m.data)));
    expect(messages).toEqual([{ waiting: true }, { ok: false, error: expect.objectContaining({ code: 'LOCKED' }) }]);
    // Without `progress`, no notice: one answer.
    expect(await raw(stack, 'get', { name: 'rid.wait', wait: 0.1 })).toMatchObject({ ok: false, error: { code: 'LOCKED' } });

    // The client: resendAfter 100 ms, a wait of 3 s; the lock is released after 1 s.
    const client = await stack.newClient({ timeout: 5000 });
    const waiting = new LockClient(client.nc, { prefix: stack.prefix, resendAfter: 100 });
    const copies: unknown[] = [];
    const spy = client.nc.subscribe(`${stack.prefix}.get`, { callback: (_e, m) => copies.push(m.data) });
    try {
      const release = new Promise((r) => setTimeout(r, 1000)).then(() => stack.client.unlock(held));
      const lock = await waiting.getLock('rid.wait', { wait: 3, expires: 60 });
      await release;
      expect(lock.token).toBeGreaterThan(held.token);
      expect(copies).toHaveLength(1);
    } finally {
      spy.unsubscribe();
    }
  });

  it('a copy that arrives after its request was answered gets that answer, though the lock changed since', async () => {
    // LOCKED stays LOCKED: the copy does not take the lock freed meanwhile.
    const held = await stack.client.getLock('rid.late');
    expect(await raw(stack, 'get', { name: 'rid.late', request_id: 'late-1' })).toMatchObject({ ok: false, error: { code: 'LOCKED' } });
    await stack.client.unlock(held);
    expect(await raw(stack, 'get', { name: 'rid.late', request_id: 'late-1', attempt: 2 })).toMatchObject({
      ok: false,
      error: { code: 'LOCKED', lock: { token: held.token } },
    });
    expect(await stack.client.isLocked('rid.late')).toBe(false);
    // "Nothing to unlock" stays so: the copy does not release the lock taken since.
    expect(await raw(stack, 'admin_unlock', { name: 'rid.late', request_id: 'late-2' })).toEqual({ ok: true, result: { unlocked: false } });
    const taken = await stack.client.getLock('rid.late');
    expect(await raw(stack, 'admin_unlock', { name: 'rid.late', request_id: 'late-2', attempt: 2 })).toEqual({
      ok: true,
      result: { unlocked: false },
    });
    expect((await stack.client.lockInfo('rid.late'))?.token).toBe(taken.token);
  });

  it('a reset sent again answers the first count and removes nothing taken since', async () => {
    const prefixed = await startStack({ store, config: { eventsJetstream: 'off' }, nats: stack.nats });
    try {
      await prefixed.client.setLock('r.a', 'r.b');
      const first = await raw(prefixed, 'reset', { request_id: 'reset-1' });
      expect(first).toEqual({ ok: true, result: { removed: 2 } });
      await prefixed.client.getLock('r.after');
      expect(await raw(prefixed, 'reset', { request_id: 'reset-1', attempt: 2 })).toEqual(first);
      expect(await prefixed.client.isLocked('r.after')).toBe(true);
    } finally {
      await prefixed.stop();
    }
  });

  it('the client sends one request id per call and re-sends it: a daemon paused past resendAfter costs a re-send, not a double grant', async () => {
    // The first copy's reply is held back past the client's resendAfter (the daemon's event loop
    // is kept busy after the grant): the client sends the request again, same id. Client and
    // daemon share this process: when the client's socket is read in the same turn of the event
    // loop as the pause ends, the reply can arrive before its re-send timer fires, and that try
    // shows no re-send; so the pause is tried on fresh names until one shows it.
    const client = await stack.newClient({ timeout: 8000 });
    const slow = new LockClient(client.nc, { prefix: stack.prefix, timeout: 8000, resendAfter: 200 });
    const pausedOnce = async (name: string) => {
      const copies: { request_id?: string; attempt?: number }[] = [];
      const spy = client.nc.subscribe(`${stack.prefix}.get`, { callback: (_e, m) => copies.push(JSON.parse(decoder.decode(m.data))) });
      let stalls = 1;
      const stall = (m: unknown) => {
        const { phase } = m as { phase: string };
        if (phase !== 'end' || stalls === 0) return;
        stalls -= 1;
        const until = Date.now() + 600;
        while (Date.now() < until); // the daemon cannot answer meanwhile
      };
      const events = await follow(stack, name);
      subscribe(CHANNELS.operation, stall);
      subscribe(CHANNELS.transaction, stall);
      try {
        const lock = await slow.getLock(name, { expires: 60 });
        expect(lock.name).toBe(name);
        expect(await stack.client.lockInfo(name)).toMatchObject({ token: lock.token });
        // Granted once, however many copies went.
        expect((await events.settled(1)).map((e) => [e.type, e.lock.token])).toEqual([['created', lock.token]]);
        await client.nc.flush(); // every copy sent has reached the spy
        return copies;
      } finally {
        spy.unsubscribe();
        events.stop();
        unsubscribe(CHANNELS.operation, stall);
        unsubscribe(CHANNELS.transaction, stall);
      }
    };
    let copies: { request_id?: string; attempt?: number }[] = [];
    for (let i = 0; i < 8 && copies.length < 2; i++) copies = await pausedOnce(`rid.paused.${i}`);
    // Sent two or more times, under one id.
    expect(copies.length).toBeGreaterThanOrEqual(2);
    expect(new Set(copies.map((c) => c.request_id)).size).toBe(1);
    expect(copies.map((c) => c.attempt ?? 1).slice(0, 2)).toEqual([1, 2]);
  });
});

describe.each(STORES)('replies that always fit on %s', (store) => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack({ store, config: { eventsJetstream: 'off' } });
  });
  afterAll(async () => stack?.stop());

  it('a set whose reply would pass max_payload is refused (REPLY_TOO_LARGE) with nothing done', async () => {
    // 1000 long names, and a locked_by JSON must escape (each '"' takes 2 bytes): over 1 MiB of reply.
    const names = Array.from({ length: 1000 }, (_, i) => `big.${String(i).padStart(4, '0')}.${'n'.repeat(200)}`);
    const events = await follow(stack, 'big.>');
    const err = await stack.client.setLock(names, { locked_by: '"'.repeat(255) }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ReplyTooLarge);
    expect((err as ReplyTooLarge).message).toMatch(/would be \d+ bytes, more than the \d+ a NATS message may carry/);
    expect(await stack.client.listLocks({ prefix: 'big.' })).toEqual([]);
    // A set that fits is unaffected; its events are the only ones.
    expect((await stack.client.setLock(names.slice(0, 100), { locked_by: '"'.repeat(255) })).counts.created).toBe(100);
    expect((await events.settled(100)).length).toBe(100);
    events.stop();
  });

  it('list pages are bounded by size as well as count; listLocks() returns every lock', async () => {
    const long = (i: number) => `page.${String(i).padStart(5, '0')}.${'p'.repeat(230)}`;
    for (let i = 0; i < 7; i++) await stack.client.setLock(Array.from({ length: 1000 }, (_, j) => long(i * 1000 + j)));
    const page = await stack.client.listLocksPage({ prefix: 'page.', limit: 10_000 });
    expect(page.next).toBeDefined();
    expect(page.locks.length).toBeGreaterThan(100);
    expect(page.locks.length).toBeLessThan(7000);
    const all = await stack.client.listLocks({ prefix: 'page.' });
    expect(all.map((l) => l.name)).toEqual(Array.from({ length: 7000 }, (_, i) => long(i)));
  });
});

describe.each(STORES)('grants that would arrive too late on %s', (store) => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack({ store, config: { eventsJetstream: 'off' } });
  });
  afterAll(async () => stack?.stop());

  /** Holds the daemon up for `ms` once, after its next transaction (between its commit and its reply). */
  function stallAfterNextCommit(ms: number): () => void {
    let stalls = 1;
    const stall = (m: unknown) => {
      if ((m as { phase: string }).phase !== 'end' || stalls === 0) return;
      stalls -= 1;
      const until = Date.now() + ms;
      while (Date.now() < until);
    };
    subscribe(CHANNELS.transaction, stall);
    return () => unsubscribe(CHANNELS.transaction, stall);
  }

  it('a grant with less than a quarter of its lifetime left when the reply goes out is withdrawn, not sent', async () => {
    const events = await follow(stack, 'late.1');
    // 800 ms of a 1 s lock.
    const resume = stallAfterNextCommit(800);
    let err: unknown;
    try {
      const client = new LockClient(stack.client.nc, { prefix: stack.prefix, timeout: 5000, resendAfter: 4000 });
      err = await client.getLock('late.1', { expires: 1 }).catch((e: unknown) => e);
    } finally {
      resume();
    }
    expect(err).toBeInstanceOf(StoreUnavailable);
    expect((err as Error).message).toMatch(/less than a quarter of the lock's lifetime was left: released it/);
    // Released at once (not left to expire), with the cause saying why.
    expect(await stack.client.isLocked('late.1')).toBe(false);
    expect((await events.settled(2)).map((e) => [e.type, e.cause.operation])).toEqual([
      ['created', 'get'],
      ['released', 'withdraw'],
    ]);
    events.stop();
  });

  it('a setLock that would arrive too late withdraws the locks it created, not one it found held', async () => {
    // Held for 60 s before: the setLock below finds it held and leaves it be (it does not renew by name).
    await stack.client.setLock('late.kept', { timeout: 60 });
    const resume = stallAfterNextCommit(800);
    let err: unknown;
    try {
      const client = new LockClient(stack.client.nc, { prefix: stack.prefix, timeout: 5000, resendAfter: 4000 });
      err = await client.setLock('late.3', 'late.kept', 'late.4', { timeout: 1 }).catch((e: unknown) => e);
    } finally {
      resume();
    }
    expect(err).toBeInstanceOf(StoreUnavailable);
    expect((err as Error).message).toMatch(/granting late\.3, late\.4 took so long .*released them/);
    expect(await stack.client.isLocked('late.3')).toBe(false);
    expect(await stack.client.isLocked('late.4')).toBe(false);
    expect(await stack.client.isLocked('late.kept')).toBe(true);
  });

  it('a grant that arrives in good time is sent as usual', async () => {
    const lock = await stack.client.getLock('late.2', { expires: 1 });
    expect(lock.locked_until!.getTime() - lock.created_at.getTime()).toBe(1000);
  });
});

describe('one authority per prefix', () => {
  it('SQLite: a second daemon on the same file refuses to start; a daemon on another file and the same prefix too', async () => {
    const stack = await startStack({ store: 'sqlite' });
    try {
      const sameFile = new LockDaemon({
        config: { natsUrl: stack.nats.url, db: stack.db.url, prefix: `${stack.prefix}_x` },
        logger: quietLogger(),
      });
      await expect(sameFile.start()).rejects.toBeInstanceOf(StoreInUse);
      await sameFile.stop(1000);
      const other = await createTestDatabase('sqlite');
      const otherFile = new LockDaemon({ config: { natsUrl: stack.nats.url, db: other.url, prefix: stack.prefix }, logger: quietLogger() });
      const refused = await otherFile.start().catch((e: unknown) => e);
      await otherFile.stop(1000);
      expect(refused).toBeInstanceOf(DaemonAuthorityConflict);
      expect((refused as Error).message).toMatch(/also serves prefix ".*", but not from this daemon's sqlite store/);
      // The first daemon serves on, alone.
      expect((await stack.client.getLock('auth.a')).name).toBe('auth.a');
    } finally {
      await stack.stop();
    }
  });

  it('the lockmgr command: one line saying what to do, exit 75', async () => {
    const stack = await startStack({ store: 'sqlite' });
    try {
      const r = await runCli([
        'daemon',
        '--nats-url',
        stack.nats.url,
        '--db',
        stack.db.url,
        '--prefix',
        stack.prefix,
        '--log-format',
        'json',
      ]);
      expect(r.code).toBe(75);
      const lines = (r.stdout + r.stderr)
        .trim()
        .split('\n')
        .filter((l) => l.includes('"error"'));
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(/daemon refused to start: another daemon serves .*: one daemon per SQLite file; stop it first/);
    } finally {
      await stack.stop();
    }
  });

  it('PostgreSQL: daemons sharing the database serve together; a daemon on another database and the same prefix is refused', async () => {
    const stack = await startStack({ store: 'postgres', daemons: 2 });
    try {
      expect(stack.daemons).toHaveLength(2);
      const other = await createTestDatabase('postgres');
      const stranger = new LockDaemon({ config: { natsUrl: stack.nats.url, db: other.url, prefix: stack.prefix }, logger: quietLogger() });
      await expect(stranger.start()).rejects.toBeInstanceOf(DaemonAuthorityConflict);
      await stranger.stop(1000);
      await other.drop();
    } finally {
      await stack.stop();
    }
  });

  it('a conflicting peer appearing while a daemon serves: it refuses lock requests (AUTHORITY_CONFLICT) until the peer is gone', async () => {
    const stack = await startStack({ store: 'sqlite', config: { authorityCheckInterval: 0.2 } });
    try {
      // Another authority on the prefix, as the services framework sees it.
      const peer = await stack.client.nc.services.add({
        name: 'lockmgr',
        version: '0.0.0',
        metadata: { prefix: stack.prefix, store: 'sqlite', store_id: 'someone-else', writers: 'one', daemon: 'intruder' },
      });
      const probe = async () =>
        stack.client.isLocked('auth.b').then(
          () => 'served',
          (e: unknown) => e,
        );
      let answer: unknown;
      for (let i = 0; i < 50 && !(answer instanceof AuthorityConflict); i++) {
        answer = await probe();
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(answer).toBeInstanceOf(AuthorityConflict);
      expect((answer as Error).message).toMatch(/daemon intruder .* also serves prefix/);
      // Lock requests too, not only reads.
      await expect(stack.client.getLock('auth.b')).rejects.toBeInstanceOf(AuthorityConflict);
      await peer.stop();
      for (let i = 0; i < 50 && answer !== 'served'; i++) {
        answer = await probe();
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(answer).toBe('served');
      expect((await stack.client.getLock('auth.b')).name).toBe('auth.b');
    } finally {
      await stack.stop();
    }
  });

  it('the daemons advertise their store identity in the service metadata', async () => {
    const stack = await startStack({ store: 'postgres', daemons: 2 });
    try {
      const replies = await stack.client.nc.requestMany(servicePingSubject(), new Uint8Array(), { maxWait: 500 });
      const ours: Record<string, string>[] = [];
      for await (const m of replies) {
        const info = JSON.parse(decoder.decode(m.data)) as { metadata: Record<string, string> };
        if (info.metadata.prefix === stack.prefix) ours.push(info.metadata);
      }
      expect(ours).toHaveLength(2);
      expect(new Set(ours.map((m) => m.store_id)).size).toBe(1);
      expect(ours[0]).toMatchObject({ store: 'postgres', writers: 'many', store_id: expect.stringMatching(/^[0-9a-f]{32}$/) });
    } finally {
      await stack.stop();
    }
  });
});

describe('PostgreSQL: a session stuck on one name holds up only that name', () => {
  let stack: Stack;
  let stuck: Client;
  beforeAll(async () => {
    stack = await startStack({ store: 'postgres', config: { eventsJetstream: 'off' } });
    stuck = new Client({ connectionString: stack.db.url });
    await stuck.connect();
  });
  afterAll(async () => {
    await stuck?.end().catch(() => undefined);
    await stack?.stop();
  });

  it('requests for other names, even in the same batch, are answered as usual; the busy name gets LOCKED; a waiter gets it once the session ends', async () => {
    // A person in psql, or a daemon paused mid-batch: an uncommitted insert of the busy name.
    await stuck.query('BEGIN');
    await stuck.query(
      `INSERT INTO lockmgr_locks (name, locked_by, lock_process, locked_until, created_at, updated_at, token) VALUES ('stuck.busy', 'psql', NULL, NULL, 0, 0, 0)`,
    );
    try {
      const started = performance.now();
      const busy = stack.client.getLock('stuck.busy').catch((e: unknown) => e);
      const others = await Promise.all(Array.from({ length: 20 }, (_, i) => stack.client.getLock(`stuck.other${i}`)));
      const othersMs = performance.now() - started;
      expect(others.map((l) => l.name)).toEqual(Array.from({ length: 20 }, (_, i) => `stuck.other${i}`));
      expect(othersMs).toBeLessThan(2000);
      const err = await busy;
      expect(err).toBeInstanceOf(Locked);
      expect((err as Error).message).toMatch(/held by another database session/);
      // A waiter keeps waiting through it, and gets the name once the session rolls back.
      const waiter = stack.client.getLock('stuck.busy', { wait: 10 });
      await new Promise((r) => setTimeout(r, 700));
      await stuck.query('ROLLBACK');
      expect((await waiter).name).toBe('stuck.busy');
    } finally {
      await stuck.query('ROLLBACK').catch(() => undefined);
    }
  });
});

describe('PostgreSQL: copies of one request run by two daemons at once', () => {
  it('answer alike: the copy that found the other copy’s change (a lock taken, a lock gone) answers the recorded outcome', async () => {
    const tdb = await createTestDatabase('postgres');
    // Two daemons' stores and batchers on one database, each its own pool, as two processes would have.
    const stores = [0, 1].map((i) => new PostgresStore({ url: tdb.url, daemonId: `D${i}` }));
    try {
      await stores[0]!.migrate();
      const batchers = stores.map((s) => new Batcher(s));
      const who: Requester = { lockedBy: 'copies', process: null, client: null };
      const mutation = (id: string) => ({ requestId: id, attempt: 1 });
      const grantOf = (r: { value: AcquireResult } | Recalled) =>
        r instanceof Recalled
          ? (r.result as LockRecord).token
          : 'granted' in r.value
            ? r.value.granted.token
            : `held by ${r.value.held.token}`;
      for (let i = 0; i < 10; i++) {
        const get = {
          name: `copies.${i}`,
          expiresMs: 60_000,
          lockedBy: 'copies',
          process: null,
          waitMs: 0,
          progress: false,
          session: null,
          ...mutation(`get-${i}`),
        };
        const gets = await Promise.all(
          batchers.map((b) =>
            b.runOnce({
              ...ops.get(get, who),
              once: {
                id: get.requestId,
                copy: false,
                keepMs: 60_000,
                outcome: (v) => ('granted' in v ? toLockRecord(v.granted) : undefined),
              },
            }),
          ),
        );
        const tokens = gets.map(grantOf);
        expect(typeof tokens[0]).toBe('number');
        expect(tokens[1]).toBe(tokens[0]);

        const unlock = { name: get.name, token: null, ...mutation(`unlock-${i}`) };
        const unlocks = await Promise.all(
          batchers.map((b) =>
            b.runOnce({
              ...ops.unlock(unlock, who),
              once: { id: unlock.requestId, copy: false, keepMs: 60_000, outcome: (v) => (v ? { unlocked: true } : undefined) },
            }),
          ),
        );
        expect(unlocks.map((r) => (r instanceof Recalled ? r.result : { unlocked: r.value }))).toEqual([
          { unlocked: true },
          { unlocked: true },
        ]);
      }
    } finally {
      await Promise.all(stores.map((s) => s.close()));
      await tdb.drop();
    }
  });
});

describe('PostgreSQL: a copy answered by one daemon, another copy at another daemon later', () => {
  it('answers the same: the answer to a copy is recorded in the shared store', async () => {
    const tdb = await createTestDatabase('postgres');
    const stores = [0, 1].map((i) => new PostgresStore({ url: tdb.url, daemonId: `D${i}` }));
    try {
      await stores[0]!.migrate();
      const daemons = stores.map((s) =>
        lockHandlers(new Batcher(s), new WaitQueue(), systemClock, {
          requestWindowMs: 60_000,
          maxReplyBytes: () => 1 << 20,
          sharedStore: true,
          lockDelayMs: 0,
        }),
      );
      const ctx = { who: { lockedBy: 'copies', process: null, client: null } };
      const get = (attempt: number) => validateRequest('get', { name: 'shared.late', request_id: 'shared-1', attempt });
      const holder = await daemons[0]!.get(validateRequest('get', { name: 'shared.late' }), ctx);
      // The second copy reaches daemon 0 first (the first is held up on its way to daemon 1): LOCKED.
      await expect(daemons[0]!.get(get(2), ctx)).rejects.toMatchObject({ code: 'LOCKED' });
      await daemons[0]!.unlock(validateRequest('unlock', { name: 'shared.late', token: holder.token }), ctx);
      // The first copy reaches daemon 1, the lock free by now: LOCKED still, and the lock stays free.
      await expect(daemons[1]!.get(get(1), ctx)).rejects.toMatchObject({ code: 'LOCKED', lock: { token: holder.token } });
      expect(await daemons[1]!.is_locked(validateRequest('is_locked', { name: 'shared.late' }), ctx)).toMatchObject({ locked: false });
    } finally {
      await Promise.all(stores.map((s) => s.close()));
      await tdb.drop();
    }
  });
});
