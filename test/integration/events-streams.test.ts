/**
 * Which JetStream stream a daemon delivers to, against a real nats-server: a stream per prefix by
 * default, created with the configured limits; an existing stream used as it is, never rewritten;
 * a stream that is not the prefix's refused at start with a line saying what to do; the way from
 * the stream every prefix shared before; and readers (client.events()) holding to the same rules.
 */
import { Writable } from 'node:stream';
import { nanos, type JetStreamManager, type NatsConnection, connect } from 'nats';
import winston from 'winston';
import { EventsUnavailable, LockClient } from '../../client/index';
import type { DaemonConfig } from '../../daemon/config';
import { LockDaemon } from '../../daemon/lock-daemon';
import { createLogger } from '../../daemon/logger';
import { EventsStreamProblem } from '../../daemon/relay/publisher';
import { defaultEventsStream } from '../../shared/events';
import { createTestDatabase, STORES, type TestDatabase } from '../helpers/databases';
import { outboxCount, readStream, waitFor } from '../helpers/events';
import { cleanupDir, startNatsServer, type NatsServer } from '../helpers/nats-server';

const DAY = 24 * 3600;

interface LogLine {
  level: string;
  message: string;
  [field: string]: unknown;
}

let prefixes = 0;

describe.each(STORES)('events streams on %s', (store) => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let jsm: JetStreamManager;
  const daemons: LockDaemon[] = [];
  const clients: LockClient[] = [];
  const dbs: TestDatabase[] = [];

  beforeAll(async () => {
    nats = await startNatsServer();
    nc = await connect({ servers: nats.url });
    jsm = await nc.jetstreamManager();
  });
  afterAll(async () => {
    await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
    await Promise.all(daemons.map((d) => d.stop(2000).catch(() => undefined)));
    await Promise.all(dbs.map((db) => db.drop().catch(() => undefined)));
    // The server is this file's own: stopping it and removing its store leaves no stream behind.
    await nc?.close();
    await nats?.stop();
    if (nats) cleanupDir(nats.storeDir);
  });

  const newPrefix = (tail = '') => `st${process.pid}x${++prefixes}${tail}`;

  /** A daemon on a database of its own, logging into `log`; the start's outcome is returned, not thrown. */
  async function daemon(config: Partial<DaemonConfig>): Promise<{ daemon: LockDaemon; log: LogLine[]; started: unknown }> {
    const db = await createTestDatabase(store);
    dbs.push(db);
    const log: LogLine[] = [];
    const stream = new Writable({
      write(chunk: Buffer, _encoding, done) {
        log.push(JSON.parse(chunk.toString()) as LogLine);
        done();
      },
    });
    const logger = createLogger({ level: 'info', format: 'json', transports: [new winston.transports.Stream({ stream })] });
    const d = new LockDaemon({ config: { natsUrl: nats.url, db: db.url, sweepInterval: 0.2, drainTimeout: 2, ...config }, logger });
    daemons.push(d);
    const started = await d.start().then(
      () => true,
      (err: unknown) => err,
    );
    return { daemon: d, log, started };
  }

  async function client(prefix: string): Promise<LockClient> {
    const c = await LockClient.connect({ servers: nats.url, prefix });
    clients.push(c);
    return c;
  }

  it("gives two prefixes two streams by default, each with that prefix's events alone and the default limits", async () => {
    const prefixA = newPrefix('a');
    const prefixB = newPrefix('b');
    for (const prefix of [prefixA, prefixB]) {
      const { daemon: d, started, log } = await daemon({ prefix });
      expect(started).toBe(true);
      const c = await client(prefix);
      await c.setLock(`${prefix}-lock`, { timeout: 60 });
      await c.unlock(`${prefix}-lock`);
      await waitFor(async () => (await outboxCount(dbs[dbs.length - 1]!)) === 0, 10_000, 'the events to be relayed');
      expect(d.eventDelivery).toBe('jetstream');
      expect(log.find((l) => l.message === 'created events stream')).toMatchObject({
        stream: defaultEventsStream(prefix),
        subjects: `${prefix}.events.>`,
        maxAgeSeconds: 7 * DAY,
        maxBytes: 1024 ** 3,
      });
    }
    for (const prefix of [prefixA, prefixB]) {
      const info = await jsm.streams.info(defaultEventsStream(prefix));
      expect(info.config.subjects).toEqual([`${prefix}.events.>`]);
      expect(info.config.max_age).toBe(nanos(7 * DAY * 1000));
      expect(info.config.max_bytes).toBe(1024 ** 3);
      const stored = await readStream(nats.url, defaultEventsStream(prefix));
      expect(stored.map((s) => `${s.event.type} ${s.event.lock.name}`)).toEqual([`created ${prefix}-lock`, `released ${prefix}-lock`]);
    }
  });

  it('creates the stream with the configured eventsMaxAge and eventsMaxBytes; 0 is no limit', async () => {
    const limited = newPrefix();
    expect((await daemon({ prefix: limited, eventsMaxAge: 3600, eventsMaxBytes: 50 * 1024 * 1024 })).started).toBe(true);
    const info = await jsm.streams.info(defaultEventsStream(limited));
    expect([info.config.max_age, info.config.max_bytes]).toEqual([nanos(3600 * 1000), 50 * 1024 * 1024]);

    const unlimited = newPrefix();
    expect((await daemon({ prefix: unlimited, eventsMaxAge: 0, eventsMaxBytes: 0 })).started).toBe(true);
    const open = await jsm.streams.info(defaultEventsStream(unlimited));
    expect([open.config.max_age, open.config.max_bytes]).toEqual([0, -1]);
  });

  it('uses an existing stream of the prefix as it is: its limits are left alone, and the log says so', async () => {
    const prefix = newPrefix();
    const name = defaultEventsStream(prefix);
    await jsm.streams.add({ name, subjects: [`${prefix}.events.>`], max_age: nanos(DAY * 1000) });
    const { started, log } = await daemon({ prefix });
    expect(started).toBe(true);
    const info = await jsm.streams.info(name);
    expect([info.config.max_age, info.config.max_bytes]).toEqual([nanos(DAY * 1000), -1]);
    expect(log.filter((l) => l.level === 'warn').map((l) => l.message)).toEqual([
      `events stream ${name} exists with max age ${DAY}s and max bytes none, not the configured eventsMaxAge ${7 * DAY}s and eventsMaxBytes ${1024 ** 3}: ` +
        `the limits of an existing stream are left as they are (change them with nats stream edit ${name})`,
    ]);
    expect(log.some((l) => l.message === 'created events stream')).toBe(false);
  });

  it("refuses to start on a configured stream that does not take the prefix's events, and leaves the stream as it was", async () => {
    const prefix = newPrefix();
    const name = `OTHERS_${prefix}`;
    await jsm.streams.add({ name, subjects: [`${prefix}-other.events.>`] });
    const { started, daemon: d } = await daemon({ prefix, eventsStream: name });
    expect(started).toBeInstanceOf(EventsStreamProblem);
    expect((started as Error).message).toBe(
      `events stream ${name} takes ${prefix}-other.events.>, not ${prefix}.events.> (the events of prefix ${prefix}): ` +
        `give this prefix a stream of its own (leave eventsStream unset for ${defaultEventsStream(prefix)}), ` +
        `or, to share ${name}, add ${prefix}.events.> to its subjects (nats stream edit ${name})`,
    );
    expect((await jsm.streams.info(name)).config.subjects).toEqual([`${prefix}-other.events.>`]);
    // It serves nobody: no endpoint was registered.
    const c = await client(prefix);
    await expect(c.call('is_locked', { name: 'x' }, 300)).rejects.toMatchObject({ code: 'NO_DAEMON' });
    await d.stop(1000);
  });

  it('two prefixes with one default name: the second refuses the first one’s stream', async () => {
    const base = newPrefix();
    const dotted = `${base}.c`;
    const underscored = `${base}_c`;
    expect(defaultEventsStream(dotted)).toBe(defaultEventsStream(underscored));
    expect((await daemon({ prefix: dotted })).started).toBe(true);
    const { started } = await daemon({ prefix: underscored });
    expect(started).toBeInstanceOf(EventsStreamProblem);
    expect((started as Error).message).toBe(
      `events stream ${defaultEventsStream(underscored)} takes ${dotted}.events.>, not ${underscored}.events.> (the events of prefix ${underscored}): ` +
        `${defaultEventsStream(underscored)} is this prefix's default name, but the stream is another prefix's (or someone else's); ` +
        `set eventsStream to a stream name of this prefix's own`,
    );
  });

  it('refuses a default-named stream that takes other subjects too; names it with eventsStream to share it', async () => {
    const prefix = newPrefix();
    const name = defaultEventsStream(prefix);
    await jsm.streams.add({ name, subjects: [`${prefix}.events.>`, `${prefix}-audit.>`] });
    const refused = await daemon({ prefix });
    expect(refused.started).toBeInstanceOf(EventsStreamProblem);
    expect((refused.started as Error).message).toBe(
      `events stream ${name}, the default stream of prefix ${prefix}, also takes ${prefix}-audit.>: ` +
        `a default stream holds one prefix's events alone; to share a stream, name it with eventsStream`,
    );
    await refused.daemon.stop(1000);
    const shared = await daemon({ prefix, eventsStream: name });
    expect(shared.started).toBe(true);
    expect(shared.log.find((l) => l.message.startsWith('the events stream is shared'))).toMatchObject({
      stream: name,
      others: `${prefix}-audit.>`,
    });
  });

  it('after the shared LOCKMGR_EVENTS of earlier versions: refused with what to do; eventsStream=LOCKMGR_EVENTS keeps delivering there', async () => {
    const prefix = newPrefix();
    const neighbour = newPrefix();
    const legacy = `LOCKMGR_EVENTS`;
    await jsm.streams.add({ name: legacy, subjects: [`${neighbour}.events.>`, `${prefix}.events.>`] });
    const before = daemons.length;
    try {
      const refused = await daemon({ prefix });
      expect(refused.started).toBeInstanceOf(EventsStreamProblem);
      const message = (refused.started as Error).message;
      expect(message).toMatch(
        new RegExp(`^cannot create events stream ${defaultEventsStream(prefix)} for ${prefix}\\.events\\.>: .*overlap`),
      );
      expect(message).toContain(
        `: stream ${legacy}, the stream every prefix shared by default before each had its own, already takes ${prefix}.events.>; `,
      );
      expect(message).toContain(
        `set eventsStream=${legacy} to keep delivering there, or take ${prefix}.events.> out of ${legacy}'s subjects`,
      );
      await refused.daemon.stop(1000);

      const kept = await daemon({ prefix, eventsStream: legacy });
      expect(kept.started).toBe(true);
      const c = await client(prefix);
      await c.setLock('upgraded', { timeout: 60 });
      await waitFor(async () => (await outboxCount(dbs[dbs.length - 1]!)) === 0, 10_000, 'the event to be relayed');
      expect((await readStream(nats.url, legacy)).map((s) => s.subject)).toEqual([`${prefix}.events.created.upgraded`]);
      await expect(jsm.streams.info(defaultEventsStream(prefix))).rejects.toThrow(/stream not found/);
    } finally {
      for (const d of daemons.slice(before)) await d.stop(1000).catch(() => undefined);
      await jsm.streams.delete(legacy);
    }
  });

  it("client.events() replays the prefix's default stream, and says which stream to read when it is not the prefix's", async () => {
    const prefix = newPrefix();
    expect((await daemon({ prefix })).started).toBe(true);
    const c = await client(prefix);
    await c.setLock('replayed', { timeout: 60 });
    await waitFor(async () => (await outboxCount(dbs[dbs.length - 1]!)) === 0, 10_000, 'the event to be relayed');
    const names: string[] = [];
    for await (const e of c.events({ since: { seq: 1 } })) names.push(e.lock.name);
    expect(names).toEqual(['replayed']);

    const stranger = await client(newPrefix());
    const wrong = await drain(stranger.events({ since: { seq: 1 }, stream: defaultEventsStream(prefix) }));
    expect(wrong).toBeInstanceOf(EventsUnavailable);
    expect((wrong as EventsUnavailable).reason).toBe('wrong-stream');
    expect((wrong as Error).message).toBe(
      `events stream ${defaultEventsStream(prefix)} takes ${prefix}.events.>, not ${stranger.prefix}.events.> (the events of prefix ${stranger.prefix}): ` +
        `it is not this prefix's stream; name the stream the daemons of prefix ${stranger.prefix} deliver to (their eventsStream)`,
    );

    const missing = await drain(c.events({ since: { seq: 1 }, stream: 'NO_SUCH_STREAM' }));
    expect(missing).toBeInstanceOf(EventsUnavailable);
    expect((missing as EventsUnavailable).reason).toBe('no-stream');
    expect((missing as Error).message).toBe(
      `no events stream NO_SUCH_STREAM on this NATS server; stream ${defaultEventsStream(prefix)} takes ${prefix}.events.>: read that one (the daemons' eventsStream)`,
    );
  });
});

/** Iterate to the end; the error that ended it, or null. */
async function drain(events: AsyncIterable<unknown>): Promise<unknown> {
  try {
    for await (const _ of events) {
      // only the ending matters
    }
    return null;
  } catch (err) {
    return err;
  }
}
