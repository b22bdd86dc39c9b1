/**
 * Lock events against a real nats-server with JetStream, on SQLite and PostgreSQL: every
 * operation records exactly the documented events with the documented payload; per-lock order
 * holds under concurrent load; the sweeper publishes `expired` on time without any request;
 * replay from a stream sequence or a time returns exactly the tail; client.events() filters.
 */
import { hostname } from 'node:os';
import { connect, type NatsConnection } from 'nats';
import {
  Lock,
  Locked,
  LockFail,
  LockNotFound,
  NotOwner,
  type LockClient,
  type LockRecord,
  type ReceivedLockEvent,
} from '../../client/index';
import { OPTIONS } from '../../daemon/config';
import type { EventCause, EventType, LockEvent } from '../../shared/events';
import { STORES } from '../helpers/databases';
import {
  compareWithOutbox,
  lifecycleProblems,
  outboxCount,
  perLockOrderProblems,
  readStream,
  recordOutbox,
  recordedOutbox,
  sleep,
  waitFor,
} from '../helpers/events';
import { startNatsServer } from '../helpers/nats-server';
import { startStack, type Stack } from '../helpers/stack';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const HOST = hostname();

/** Every event published under `subject`, as it arrives on core NATS. */
async function listen(
  url: string,
  subject: string,
): Promise<{ events: (LockEvent & { subject: string; arrived: number })[]; close(): Promise<void> }> {
  const nc: NatsConnection = await connect({ servers: url });
  const events: (LockEvent & { subject: string; arrived: number })[] = [];
  nc.subscribe(subject, {
    callback: (_err, msg) =>
      events.push({ ...(JSON.parse(new TextDecoder().decode(msg.data)) as LockEvent), subject: msg.subject, arrived: Date.now() }),
  });
  await nc.flush();
  return { events, close: () => nc.close() };
}

async function collect(stream: AsyncIterable<ReceivedLockEvent>, max = Infinity): Promise<ReceivedLockEvent[]> {
  const out: ReceivedLockEvent[] = [];
  for await (const e of stream) {
    out.push(e);
    if (out.length >= max) break;
  }
  return out;
}

interface Expected {
  type: EventType;
  lock: LockRecord;
  cause: Omit<EventCause, 'client'>;
}

describe.each(STORES)('lock events on %s', (store) => {
  describe('each operation', () => {
    let stack: Stack;
    beforeAll(async () => {
      // No sweeper here: each expiry below is found by the request that names it.
      stack = await startStack({ store, config: { sweepInterval: 3600 } });
    });
    afterAll(async () => {
      await stack?.stop();
    });

    it('records exactly the documented events, with every payload field, on the subject P.events.<type>.<name>', async () => {
      const c: LockClient = stack.client;
      const live = await listen(stack.nats.url, `${stack.prefix}.events.>`);
      const started = Date.now();
      const E: Expected[] = [];
      const ev = (type: EventType, lock: LockRecord, locked_by: string, process_id: number | null, operation: string) =>
        E.push({ type, lock, cause: { locked_by, process_id, operation } });

      const s1 = await c.setLock('ev.a', 'ev.b', { timeout: 30, locked_by: 'web-1', process_id: 123 });
      const [a1, b1] = s1.locks.map((l) => l.toJSON());
      ev('created', a1!, 'web-1', 123, 'set');
      ev('created', b1!, 'web-1', 123, 'set');

      const a2 = (await c.setLock('ev.a', { timeout: 60, locked_by: 'web-2', process_id: 7 })).locks[0]!.toJSON();
      expect(a2.token).toBe(a1!.token);
      ev('renewed', a2, 'web-2', 7, 'set');

      // Nothing changes, nothing is recorded: skip, all-or-nothing failure, create=false.
      await c.setLock('ev.a', { renew: false });
      await expect(c.setLock('ev.c', 'ev.a', { fail: true })).rejects.toBeInstanceOf(LockFail);
      await c.setLock('ev.none', { create: false });

      const d1 = (await c.getLock('ev.d', { expires: 20, locked_by: 'w2', lock_process: 9 })).toJSON();
      ev('created', d1, 'w2', 9, 'get');
      await expect(c.getLock('ev.d')).rejects.toBeInstanceOf(Locked);

      const d2 = (await c.renewLock(Lock.fromRecord(d1), { expires: 100 })).toJSON();
      ev('renewed', d2, HOST, null, 'renew');
      const e1 = (await c.renewLock('ev.e', { create: true, expires: 50 })).toJSON();
      ev('created', e1, HOST, null, 'renew');
      await expect(c.renewLock('ev.missing')).rejects.toBeInstanceOf(LockNotFound);

      expect(await c.unlock('ev.b')).toBe(true);
      ev('released', b1!, HOST, null, 'unlock');
      expect(await c.unlock('ev.b')).toBe(false);
      await expect(c.unlock(Lock.fromRecord({ ...a2, token: a2.token + 1000 }))).rejects.toBeInstanceOf(NotOwner);

      // An expired lock is recorded as expired by whichever request finds it first.
      const x1 = (await c.getLock('ev.x', { expires: 0.2 })).toJSON();
      ev('created', x1, HOST, null, 'get');
      const y1 = (await c.getLock('ev.y', { expires: 0.2 })).toJSON();
      ev('created', y1, HOST, null, 'get');
      const z1 = (await c.getLock('ev.z', { expires: 0.2, locked_by: 'zed' })).toJSON();
      ev('created', z1, 'zed', null, 'get');
      await sleep(350);
      const x2 = (await c.getLock('ev.x', { expires: 10, locked_by: 'w3' })).toJSON();
      ev('expired', x1, 'w3', null, 'get');
      ev('created', x2, 'w3', null, 'get');
      expect(await c.unlock('ev.z')).toBe(false);
      ev('expired', z1, HOST, null, 'unlock');
      expect(await c.cleanLocks()).toBe(1);
      ev('expired', y1, HOST, null, 'clean');

      const remaining = (await c.listLocks()).map((l) => l.toJSON());
      expect(remaining.map((l) => l.name)).toEqual(['ev.a', 'ev.d', 'ev.e', 'ev.x']);
      expect(await c.resetLocks()).toBe(4);
      const resets = remaining.map((lock): Expected => ({
        type: 'reset',
        lock,
        cause: { locked_by: HOST, process_id: null, operation: 'reset' },
      }));
      const finished = Date.now();

      const total = E.length + resets.length;
      await waitFor(() => live.events.length >= total, 10_000, `${total} events`);
      await sleep(200); // nothing more may come
      await live.close();
      const got = live.events;
      expect(got.map((e) => `${e.type} ${e.lock.name}`)).toEqual([
        ...E.map((e) => `${e.type} ${e.lock.name}`),
        ...got.slice(E.length).map((e) => `${e.type} ${e.lock.name}`),
      ]);
      expect(got).toHaveLength(total);
      // The resets come last, one per lock (their order among themselves is the database's).
      expect(
        got
          .slice(E.length)
          .map((e) => e.lock.name)
          .sort(),
      ).toEqual(remaining.map((l) => l.name));

      const client = `${c.nc.info!.client_id}@${HOST}:${process.pid}`;
      const daemon = stack.daemons[0]!.id;
      const byName = new Map(resets.map((r) => [r.lock.name, r]));
      let prevSeq = 0;
      got.forEach((e, i) => {
        const exp = i < E.length ? E[i]! : byName.get(e.lock.name)!;
        const { subject, arrived: _arrived, ...payload } = e;
        expect(Object.keys(payload)).toEqual(['id', 'type', 'seq', 'lock', 'cause', 'daemon', 'at']);
        expect(subject).toBe(`${stack.prefix}.events.${exp.type}.${exp.lock.name}`);
        expect(payload.id).toMatch(UUID);
        expect(payload.type).toBe(exp.type);
        expect(payload.seq).toBeGreaterThan(prevSeq);
        prevSeq = payload.seq;
        expect(payload.lock).toEqual(exp.lock);
        expect(Object.keys(payload.lock)).toEqual([
          'name',
          'locked_by',
          'lock_process',
          'locked_until',
          'created_at',
          'updated_at',
          'token',
        ]);
        expect(payload.cause).toEqual({ ...exp.cause, client });
        expect(Object.keys(payload.cause)).toEqual(['locked_by', 'process_id', 'client', 'operation']);
        expect(payload.daemon).toBe(daemon);
        expect(new Date(payload.at).toISOString()).toBe(payload.at);
        const at = Date.parse(payload.at);
        expect(at).toBeGreaterThanOrEqual(started - 1000);
        expect(at).toBeLessThanOrEqual(finished + 1000);
        // The change's own time: a created lock was created, a renewed one updated, at that moment.
        if (exp.type === 'created') expect(payload.at).toBe(exp.lock.created_at);
        if (exp.type === 'renewed') expect(payload.at).toBe(exp.lock.updated_at);
        if (exp.type === 'expired') expect(at).toBeGreaterThanOrEqual(Date.parse(exp.lock.locked_until!));
      });
      expect(new Set(got.map((e) => e.id)).size).toBe(got.length);

      // The stream holds the same events, in the same order, each under its id as Nats-Msg-Id.
      const stream = `EV_${stack.prefix}`;
      await waitFor(async () => (await readStream(stack.nats.url, stream)).length >= total, 10_000, 'the stream');
      const stored = await readStream(stack.nats.url, stream);
      expect(stored.map((s) => s.event.id)).toEqual(got.map((e) => e.id));
      expect(stored.map((s) => s.msgId)).toEqual(got.map((e) => e.id));
      expect(stored.map((s) => s.daemonHeader)).toEqual(got.map((e) => e.daemon));
      expect(stored.map((s) => s.subject)).toEqual(got.map((e) => e.subject));
      expect(await outboxCount(stack.db)).toBe(0);
    });
  });

  describe('under load, from the sweeper, and on replay', () => {
    let stack: Stack;
    let stream: string;
    beforeAll(async () => {
      // The default sweep interval, so the latency measured is the one operators get.
      stack = await startStack({ store, config: { sweepInterval: OPTIONS.sweepInterval.default } });
      stream = `EV_${stack.prefix}`;
      await recordOutbox(stack.db);
    });
    afterAll(async () => {
      await stack?.stop();
    });

    it('keeps per-lock order and a consistent lifecycle with concurrent clients on a few names', async () => {
      const clients = [stack.client, await stack.newClient(), await stack.newClient(), await stack.newClient()];
      const names = ['ld.1', 'ld.2', 'ld.3', 'ld.4', 'ld.5'];
      await Promise.all(
        clients.map(async (c, ci) => {
          for (let i = 0; i < 60; i++) {
            const name = names[(i * 7 + ci) % names.length]!;
            try {
              const lock = await c.getLock(name, { expires: 0.15 + (i % 3) * 0.1, locked_by: `c${ci}` });
              if (i % 3 === 0) await c.renewLock(lock, { expires: 0.3 }).catch(() => undefined);
              if (i % 2 === 0) await c.unlock(lock).catch(() => undefined);
            } catch (err) {
              if (!(err instanceof Locked)) throw err;
            }
            if (i % 4 === 0) await c.setLock(name, `${name}.x`, { timeout: 0.2, locked_by: `c${ci}` });
          }
        }),
      );
      // Everything expires within a second; then the outbox drains.
      await waitFor(async () => (await stack.client.listLocks({ prefix: 'ld.' })).length === 0, 5000, 'all locks to expire');
      await waitFor(async () => (await outboxCount(stack.db)) === 0, 5000, 'the outbox to drain');
      await sleep(600); // a sweep that found nothing more
      const stored = (await readStream(stack.nats.url, stream)).filter((s) => s.event.lock.name.startsWith('ld.'));
      const events = stored.map((s) => s.event);
      expect(events.length).toBeGreaterThan(120);
      expect(perLockOrderProblems(events)).toEqual([]);
      expect(lifecycleProblems(events)).toEqual([]);
      // Every lock ends free: its last event ends its last grant.
      for (const name of new Set(events.map((e) => e.lock.name))) {
        expect({ name, last: events.filter((e) => e.lock.name === name).at(-1)!.type }).toEqual({
          name,
          last: expect.stringMatching(/released|expired/),
        });
      }
      const recorded = (await recordedOutbox(stack.db)).filter((r) => r.name.startsWith('ld.'));
      expect(compareWithOutbox(stored, recorded)).toEqual([]);
    });

    it('the sweeper publishes expired for each lock within a second of locked_until, with no request', async () => {
      const live = await listen(stack.nats.url, `${stack.prefix}.events.expired.sw.>`);
      const res = await stack.client.setLock(...Array.from({ length: 20 }, (_, i) => `sw.${i}`), { timeout: 1, locked_by: 'sweep-test' });
      const locks = new Map(res.locks.map((l) => [l.name, l.toJSON()]));
      // No request from here on: only the sweeper can find these expiries.
      await waitFor(() => live.events.length >= 20, 4000, '20 expired events');
      await sleep(300);
      await live.close();
      expect(live.events).toHaveLength(20);
      const latencies: number[] = [];
      for (const e of live.events) {
        expect(e.lock).toEqual(locks.get(e.lock.name));
        expect(e.cause).toEqual({ locked_by: HOST, process_id: process.pid, client: null, operation: 'sweeper' });
        const until = Date.parse(e.lock.locked_until!);
        expect(Date.parse(e.at)).toBeGreaterThanOrEqual(until);
        latencies.push(e.arrived - until);
      }
      expect(Math.max(...latencies)).toBeLessThan(1000);
      expect(new Set(live.events.map((e) => e.lock.name)).size).toBe(20);
    });

    it('replays exactly the tail from a stream sequence or a time, filtered by type and name', async () => {
      await waitFor(async () => (await outboxCount(stack.db)) === 0, 5000, 'the outbox to drain');
      const before = await readStream(stack.nats.url, stream);
      const t0 = new Date();
      await sleep(20);
      await stack.client.setLock('rp.a', 'rp.b', 'rq.c', { timeout: 60 });
      await stack.client.unlock('rp.a');
      await stack.client.renewLock('rp.b', { expires: 120 });
      await stack.client.unlock('rq.c');
      await waitFor(async () => (await readStream(stack.nats.url, stream)).length === before.length + 6, 5000, '6 more events');
      const all = await readStream(stack.nats.url, stream);

      const n = Math.floor(all.length / 2) + 1;
      const tail = await collect(stack.client.events({ since: { seq: n }, stream }));
      expect(tail.map((e) => e.id)).toEqual(all.slice(n - 1).map((s) => s.event.id));
      expect(tail.map((e) => e.streamSeq)).toEqual(all.slice(n - 1).map((s) => s.streamSeq));
      expect(tail[0]).toEqual({ ...all[n - 1]!.event, streamSeq: n });

      const sinceTime = await collect(stack.client.events({ since: { time: t0 }, stream }));
      expect(sinceTime.map((e) => `${e.type} ${e.lock.name}`)).toEqual([
        'created rp.a',
        'created rp.b',
        'created rq.c',
        'released rp.a',
        'renewed rp.b',
        'released rq.c',
      ]);

      const filtered = await collect(stack.client.events({ since: { seq: 1 }, stream, types: ['released', 'renewed'], names: ['rp.*'] }));
      expect(filtered.map((e) => `${e.type} ${e.lock.name}`)).toEqual(['released rp.a', 'renewed rp.b']);
      const oneName = await collect(stack.client.events({ since: { seq: 1 }, stream, names: 'rq.c' }));
      expect(oneName.map((e) => e.type)).toEqual(['created', 'released']);

      // From beyond the end: nothing, and the iteration ends.
      expect(await collect(stack.client.events({ since: { seq: all.length + 1 }, stream }))).toEqual([]);

      // Replay then follow: the stored tail, then new events as they come.
      const follow = stack.client.events({ since: { seq: all.length }, stream, follow: true });
      const got: ReceivedLockEvent[] = [];
      const reading = (async () => {
        for await (const e of follow) {
          got.push(e);
          if (got.length === 3) break;
        }
      })();
      await follow.ready;
      await stack.client.setLock('rp.f', { timeout: 60 });
      await stack.client.unlock('rp.f');
      await reading;
      expect(got.map((e) => `${e.type} ${e.lock.name} ${e.streamSeq}`)).toEqual([
        `${all.at(-1)!.event.type} ${all.at(-1)!.event.lock.name} ${all.length}`,
        `created rp.f ${all.length + 1}`,
        `released rp.f ${all.length + 2}`,
      ]);
    });

    it('client.events() delivers live events of the chosen types and name patterns only', async () => {
      const events = stack.client.events({ types: ['released', 'expired'], names: ['lv.a.*', 'lv.b'] });
      await events.ready;
      const got: ReceivedLockEvent[] = [];
      const reading = (async () => {
        for await (const e of events) {
          got.push(e);
          if (got.length === 3) break;
        }
      })();
      const c = stack.client;
      await c.setLock('lv.a.1', 'lv.a.2.deep', 'lv.b', 'lv.c', { timeout: 60 });
      await c.unlock('lv.c'); // other name
      await c.unlock('lv.a.2.deep'); // not matched by lv.a.*
      await c.renewLock('lv.b'); // other type
      await c.unlock('lv.a.1');
      await c.unlock('lv.b');
      const exp = (await c.getLock('lv.a.3', { expires: 0.2 })).toJSON();
      await reading;
      expect(got.map((e) => `${e.type} ${e.lock.name}`)).toEqual(['released lv.a.1', 'released lv.b', 'expired lv.a.3']);
      expect(got[2]!.lock).toEqual(exp);
      expect(got.every((e) => e.streamSeq === undefined)).toBe(true);
      expect(() => c.events({ types: ['nope' as EventType] })).toThrow(/unknown event type/);
      expect(() => c.events({ names: 'a.>.b' })).toThrow(/last token/);
      expect(() => c.events({ since: { seq: 0 } })).toThrow(/since.seq must be a whole number >= 1/);
      expect(() => c.events({ since: { time: 'yesterday-ish' } })).toThrow(/since must be/);
      expect(() => c.events({ follow: false })).toThrow(/follow: false needs since/);
    });
  });
});

describe('a stream shared with another publisher', () => {
  it('delivers to a stream the operator shares (named by eventsStream) and keeps every event once, in order, while others publish into it', async () => {
    const nats = await startNatsServer();
    const nc = await connect({ servers: nats.url });
    let stack: Stack | undefined;
    try {
      const jsm = await nc.jetstreamManager();
      const prefix = `shared${process.pid}`;
      await jsm.streams.add({ name: 'SHARED', subjects: ['other.events.>', `${prefix}.events.>`] });
      stack = await startStack({ store: 'sqlite', nats, prefix, config: { eventsStream: 'SHARED' } });
      await recordOutbox(stack.db);
      // Used as it is: nothing added, nothing taken away.
      expect((await jsm.streams.info('SHARED')).config.subjects).toEqual(['other.events.>', `${prefix}.events.>`]);
      // Another publisher writes into the stream all the while: the relay's chain of expected
      // predecessors breaks and must resume without losing, doubling or reordering events.
      const js = nc.jetstream();
      let foreign = 0;
      let stop = false;
      const other = (async () => {
        while (!stop) {
          await Promise.all(Array.from({ length: 20 }, () => js.publish(`other.events.x.${foreign++}`, new TextEncoder().encode('{}'))));
        }
      })();
      const c = stack.client;
      for (let i = 0; i < 10; i++) {
        await c.setLock(...Array.from({ length: 100 }, (_, j) => `sh.${j}`), { timeout: 60 });
      }
      await c.resetLocks();
      await waitFor(async () => (await outboxCount(stack!.db)) === 0, 10_000, 'the outbox to drain');
      stop = true;
      await other;
      const all = await readStream(nats.url, 'SHARED');
      const ours = all.filter((s) => s.subject.startsWith(`${stack!.prefix}.`));
      expect(all.length - ours.length).toBe(foreign);
      expect(ours).toHaveLength(100 + 900 + 100);
      expect(compareWithOutbox(ours, await recordedOutbox(stack.db))).toEqual([]);
      expect(ours.map((s) => s.event.seq)).toEqual([...ours.map((s) => s.event.seq)].sort((a, b) => a - b));
    } finally {
      await stack?.stop();
      await nc.close();
      await nats.stop();
    }
  });
});
