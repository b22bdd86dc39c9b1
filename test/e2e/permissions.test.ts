/**
 * The shipped nats-server permissions, config/nats-permissions.conf, used as they are (only the
 * port and the JetStream directory come from the command line): a daemon process as the `daemon`
 * user, and a client, an admin and an auditor, each as its user; then two daemons sharing
 * PostgreSQL (relay nudges, seeing each other). What each role can do works without a permission
 * violation; what it may not do, NATS refuses, and nothing changes.
 */
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { AckPolicy, DeliverPolicy, Empty, type JetStreamManager, type Msg, type NatsConnection } from 'nats';
import { LockClient, PermissionDenied, type LockError, type ReceivedLockEvent } from '../../client/index';
import { connectNats } from '../../shared/connect';
import type { LockEvent } from '../../shared/events';
import { runCli, startCli, until, type CliProcess } from '../helpers/cli';
import { createTestDatabase, type TestDatabase } from '../helpers/databases';
import { startDaemon, type RunningDaemon } from '../helpers/daemon-process';
import { readStreamWith } from '../helpers/events';
import { cleanupDir, startNatsServer, type NatsServer } from '../helpers/nats-server';
import { ROOT } from '../helpers/stack';

jest.setTimeout(60_000);

const CONFIG = join(ROOT, 'config', 'nats-permissions.conf');
const PREFIX = 'lock';
/** The stream the file's subjects name; the daemon is told it explicitly. */
const STREAM = 'LOCKMGR_EVENTS_lock';
type Role = 'daemon' | 'client' | 'admin' | 'auditor';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The placeholder passwords the file ships with (LOCKMGR_<ROLE>_PASSWORD). */
function shippedPasswords(): Record<Role, string> {
  const text = readFileSync(CONFIG, 'utf8');
  const found: Partial<Record<Role, string>> = {};
  for (const m of text.matchAll(/^LOCKMGR_(DAEMON|CLIENT|ADMIN|AUDITOR)_PASSWORD: "([^"]+)"$/gm)) {
    found[m[1]!.toLowerCase() as Role] = m[2]!;
  }
  for (const role of ['daemon', 'client', 'admin', 'auditor'] as const)
    if (!found[role]) throw new Error(`no password for ${role} in ${CONFIG}`);
  return found as Record<Role, string>;
}

const PASSWORDS = shippedPasswords();

/** A URL that logs in as `role`. */
function roleUrl(nats: NatsServer, role: Role): string {
  return `nats://${role}:${encodeURIComponent(PASSWORDS[role])}@127.0.0.1:${nats.port}`;
}

function parse(data: Uint8Array): unknown {
  try {
    return JSON.parse(decoder.decode(data));
  } catch {
    return null;
  }
}

describe('the shipped nats-server permissions (config/nats-permissions.conf)', () => {
  let nats: NatsServer;
  let daemon: RunningDaemon;
  let client: LockClient;
  let admin: LockClient;
  /** The auditor's own connection: it also reads the stream for the checks (what its role allows). */
  let auditorNc: NatsConnection;
  let auditor: LockClient;
  let jsm: JetStreamManager;
  const url = (role: Role) => roleUrl(nats, role);
  const cliConn = (role: Role) => ['--nats-url', url(role), '--prefix', PREFIX];

  /** The violations the server logged for `role`: `publish <subject>` or `subscribe <subject>`. */
  const violations = (role: Role): string[] =>
    [...nats.log().matchAll(/(Publish|Subscription) Violation - User "(\w+)", Subject "([^"]+)"/g)]
      .filter((m) => m[2] === role)
      .map((m) => `${m[1] === 'Publish' ? 'publish' : 'subscribe'} ${m[3]}`);

  let markers = 0;
  /**
   * The violations logged for `role` up to now, complete for `nc`'s connection: a publish every
   * role is refused goes out last on it, and the server logs in order what one connection sends.
   */
  const violationsNow = async (nc: NatsConnection, role: Role): Promise<string[]> => {
    const marker = `permissions-test.marker.${++markers}`;
    nc.publish(marker);
    await nc.flush();
    await until(() => violations(role).includes(`publish ${marker}`), 10_000, `the marker ${marker} in the server log`);
    return violations(role).filter((v) => !v.startsWith('publish permissions-test.marker.'));
  };

  /** The violations logged for `role` while `fn` ran, complete for `nc`'s connection. */
  const violationsDuring = async (nc: NatsConnection, role: Role, fn: () => Promise<void>): Promise<string[]> => {
    const before = (await violationsNow(nc, role)).length;
    await fn();
    return (await violationsNow(nc, role)).slice(before);
  };

  const lastSeq = async () => (await jsm.streams.info(STREAM)).state.last_seq;
  /** Stream sequence of the newest message on `subject`, or null. */
  const lastOn = (subject: string): Promise<number | null> =>
    jsm.streams.getMessage(STREAM, { last_by_subj: subject }).then(
      (m) => m.seq,
      (err: Error) => {
        if (/no message found/i.test(err.message)) return null;
        throw err;
      },
    );
  const stored = (subject: string) => until(async () => (await lastOn(subject)) !== null, 10_000, `an event on ${subject}`);
  /** The subjects of what the stream stored after `seq`. */
  const storedSince = async (seq: number) => (await readStreamWith(auditorNc, STREAM, seq + 1)).map((s) => s.subject);

  const expectRefused = async (call: () => Promise<unknown>, subject: string) => {
    const err = await call().then(
      () => null,
      (e: unknown) => e,
    );
    expect({ subject, err }).toEqual({ subject, err: expect.any(PermissionDenied) });
    expect((err as LockError).code).toBe('PERMISSION_DENIED');
    expect(((err as LockError).cause as { code?: string }).code).toBe('PERMISSIONS_VIOLATION');
    expect((err as Error).message).toContain(`"${subject}"`);
  };

  beforeAll(async () => {
    nats = await startNatsServer({ configFile: CONFIG });
    const db = await createTestDatabase('sqlite');
    daemon = await startDaemon({ natsUrl: url('daemon'), db: db.url, prefix: PREFIX, env: { LOCKMGR_EVENTS_STREAM: STREAM } });
    client = await LockClient.connect({ servers: url('client'), prefix: PREFIX, timeout: 5000 });
    admin = await LockClient.connect({ servers: url('admin'), prefix: PREFIX, timeout: 5000 });
    auditorNc = await connectNats({
      servers: url('auditor'),
      name: 'permissions test auditor',
      nats: { maxReconnectAttempts: -1, reconnectTimeWait: 250 },
    });
    auditor = new LockClient(auditorNc, { prefix: PREFIX, timeout: 3000 });
    jsm = await auditorNc.jetstreamManager();
  });

  afterAll(async () => {
    await client?.close();
    await admin?.close();
    await auditorNc?.close();
    await daemon?.stop();
    await nats?.stop();
    if (nats) cleanupDir(nats.storeDir);
  });

  it('the daemon, as the daemon user, creates its events stream and serves, with no permission violation', async () => {
    expect(daemon.output()).not.toMatch(/violation/i);
    const info = await jsm.streams.info(STREAM);
    expect(info.config.subjects).toEqual(['lock.events.>']);
    expect(await client.isLocked('perm.start')).toBe(false);
    const lock = await client.getLock('perm.start');
    await stored('lock.events.created.perm.start');
    expect(await client.unlock(lock)).toBe(true);
    await stored('lock.events.released.perm.start');
    expect(violations('daemon')).toEqual([]);
    expect(daemon.output()).not.toMatch(/violation/i);
  });

  it('a client uses every everyday call, a grant handed over after a wait included, with no violation', async () => {
    await client.withLock('perm.with', async (mgr) => {
      await mgr.renew();
      await mgr.lock('perm.with.more');
    });
    await client.withLock('perm.with.expiring', { keepalive: false }, async (mgr) => mgr.renew());
    const lock = await client.getLock('perm.get', { expires: 30 });
    await client.renewLock(lock, { expires: 60 });
    expect(await client.isLocked('perm.get')).toBe(true);
    expect((await client.listLocks({ prefix: 'perm.get' })).map((l) => l.token)).toEqual([lock.token]);
    expect((await client.setLock('perm.set', { renew: false, timeout: 60 })).counts.created).toBe(1);
    expect(await client.unlock(lock)).toBe(true);
    {
      await using held = await client.hold('perm.hold');
      expect((await client.lockInfo('perm.hold'))?.token).toBe(held.token);
    }
    expect(await client.isLocked('perm.hold')).toBe(false);
    const session = await client.openSession({ ttl: 10 });
    await client.getLock('perm.session', { session });
    await session.keepalive(); // (a refused one would show as a violation below)
    await session.close();
    expect(await client.isLocked('perm.session')).toBe(false);

    // A get that waits: the daemon says it waits, then hands the grant over as a request to the
    // client's inbox, which the client answers. Seen here on the waiter's own connection.
    const waiter = await LockClient.connect({ servers: url('client'), prefix: PREFIX, timeout: 5000 });
    try {
      let notices = 0;
      let handovers = 0;
      waiter.nc.subscribe('_INBOX.>', {
        callback: (_err, m: Msg) => {
          const body = parse(m.data) as { waiting?: boolean; ok?: boolean; result?: { name?: string } } | null;
          if (body?.waiting === true) notices += 1;
          if (m.reply && body?.ok === true && body.result?.name === 'perm.wait') handovers += 1;
        },
      });
      await waiter.nc.flush();
      const first = await client.getLock('perm.wait', { expires: 30 });
      const waited = waiter.getLock('perm.wait', { wait: 20 });
      await until(() => notices > 0, 10_000, 'the daemon to say the get waits');
      expect(await client.unlock(first)).toBe(true);
      const granted = await waited;
      expect(granted.token).toBeGreaterThan(first.token);
      expect(handovers).toBe(1);
      // The answer to the hand-over went to the daemon's inbox: allowed as a response only.
      expect(await violationsNow(waiter.nc, 'client')).toEqual([]);
      expect((await client.lockInfo('perm.wait'))?.token).toBe(granted.token);
      expect(await waiter.unlock(granted)).toBe(true);
    } finally {
      await waiter.close();
    }
    expect(await violationsNow(client.nc, 'client')).toEqual([]);
    expect(violations('daemon')).toEqual([]);
  });

  it('a client cannot act on locks it does not hold: the admin calls are refused with PermissionDenied and change nothing', async () => {
    const held = await client.getLock('perm.held', { expires: 60 });
    await stored('lock.events.created.perm.held');
    const before = await lastSeq();
    const locks = (await admin.listLocks()).map((l) => ({ ...l }));

    const refused = await violationsDuring(client.nc, 'client', async () => {
      await expectRefused(() => client.resetLocks(), 'lock.reset');
      await expectRefused(() => client.cleanLocks(), 'lock.clean');
      await expectRefused(() => client.unlock('perm.held'), 'lock.admin.unlock');
      await expectRefused(() => client.renewLock('perm.held', { expires: null }), 'lock.admin.renew');
      await expectRefused(() => client.setLock('perm.held', 'perm.new'), 'lock.admin.set');
    });
    expect(refused).toEqual([
      'publish lock.reset',
      'publish lock.clean',
      'publish lock.admin.unlock',
      'publish lock.admin.renew',
      'publish lock.admin.set',
    ]);

    expect((await admin.listLocks()).map((l) => ({ ...l }))).toEqual(locks);
    expect((await client.lockInfo('perm.held'))?.locked_until).toEqual(held.locked_until);
    expect(await client.isLocked('perm.new')).toBe(false);
    // What the stream got since: only the event of a lock taken now (events are stored in order).
    const marker = await client.getLock('perm.after.refusals');
    await stored('lock.events.created.perm.after.refusals');
    expect(await storedSince(before)).toEqual(['lock.events.created.perm.after.refusals']);
    expect(await client.unlock(marker)).toBe(true);
    expect(await client.unlock(held)).toBe(true);
  });

  it('nobody but the daemon can put an event in the stream: publishing on lock.events.> is refused to clients, admins and auditors', async () => {
    const subject = 'lock.events.released.perm.forged';
    const forged: Partial<LockEvent> = { id: 'forged', type: 'released', lock: { name: 'perm.forged' } as LockEvent['lock'] };
    const before = await lastSeq();
    const conns: [Role, NatsConnection][] = [
      ['client', client.nc],
      ['admin', admin.nc],
      ['auditor', auditorNc],
    ];
    for (const [role, nc] of conns) {
      const refused = await violationsDuring(nc, role, async () => nc.publish(subject, encoder.encode(JSON.stringify(forged))));
      expect({ role, refused }).toEqual({ role, refused: [`publish ${subject}`] });
    }

    // The stream takes that subject, from the daemon: a real release of the name is stored.
    expect(await lastOn(subject)).toBeNull();
    const lock = await client.getLock('perm.forged');
    await client.unlock(lock);
    await stored(subject);
    const since = (await readStreamWith(auditorNc, STREAM, before + 1)).filter((s) => s.subject.endsWith('.perm.forged'));
    expect(since.map((s) => `${s.subject} ${s.event.id === 'forged' ? 'forged' : s.event.cause.operation}`)).toEqual([
      'lock.events.created.perm.forged get',
      `${subject} unlock`,
    ]);
  });

  it('an admin releases and renews by name, renews with set, cleans and resets; lockmgr ping works for it', async () => {
    const refused = await violationsDuring(admin.nc, 'admin', async () => {
      const lock = await client.getLock('perm.admin.a', { expires: 60 });
      const eternal = await admin.renewLock('perm.admin.a', { expires: null });
      expect({ token: eternal.token, until: eternal.locked_until }).toEqual({ token: lock.token, until: null });
      expect(await admin.unlock('perm.admin.a')).toBe(true);
      expect(await client.isLocked('perm.admin.a')).toBe(false);
      await client.getLock('perm.admin.b', { expires: 30 });
      expect((await admin.setLock('perm.admin.b', { timeout: 600 })).counts.renewed).toBe(1);
      expect(typeof (await admin.cleanLocks())).toBe('number');
      expect(await admin.resetLocks()).toBeGreaterThan(0);
      expect(await admin.listLocks()).toEqual([]);

      const ping = await runCli(['ping', '--json', ...cliConn('admin')]);
      expect({ code: ping.code, stderr: ping.stderr }).toEqual({ code: 0, stderr: '' });
      const out = JSON.parse(ping.stdout) as { ok: boolean; daemons: { daemon: string }[] };
      expect(out.ok).toBe(true);
      expect(out.daemons.map((d) => d.daemon.split(':').slice(0, 2).join(':'))).toEqual([`${hostname()}:${daemon.pid}`]);
    });
    expect(refused).toEqual([]);
  });

  it('an auditor replays events with lockmgr events and the client, and may send no lock request nor remove events', async () => {
    const all = await readStreamWith(auditorNc, STREAM);
    expect(all.length).toBeGreaterThan(10);

    const replay = await runCli(['events', '--json', ...cliConn('auditor'), '--stream', STREAM]);
    expect({ code: replay.code, stderr: replay.stderr }).toEqual({ code: 0, stderr: '' });
    const lines = replay.stdout
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l) as LockEvent);
    expect(lines).toEqual(all.map((s) => s.event));

    const mid = all[Math.floor(all.length / 2)]!.streamSeq;
    const part = await runCli([
      'events',
      '--json',
      ...cliConn('auditor'),
      '--stream',
      STREAM,
      '--since-seq',
      String(mid),
      '--type',
      'released',
    ]);
    expect(part.code).toBe(0);
    expect(
      part.stdout
        .trimEnd()
        .split('\n')
        .map((l) => (JSON.parse(l) as LockEvent).id),
    ).toEqual(all.filter((s) => s.streamSeq >= mid && s.event.type === 'released').map((s) => s.event.id));

    const replayed: ReceivedLockEvent[] = [];
    for await (const e of auditor.events({ since: { seq: 1 }, stream: STREAM })) replayed.push(e);
    expect(replayed.map((e) => [e.streamSeq, e.id])).toEqual(all.map((s) => [s.streamSeq, s.event.id]));

    const messages = (await jsm.streams.info(STREAM)).state.messages;
    const refused = await violationsDuring(auditorNc, 'auditor', async () => {
      await expectRefused(() => auditor.getLock('perm.audit'), 'lock.get');
      await expectRefused(() => auditor.listLocks(), 'lock.list');
      await expect(jsm.streams.purge(STREAM)).rejects.toMatchObject({ code: 'PERMISSIONS_VIOLATION' });
      await expect(jsm.streams.deleteMessage(STREAM, all[0]!.streamSeq)).rejects.toMatchObject({ code: 'PERMISSIONS_VIOLATION' });
      await expect(jsm.streams.delete(STREAM)).rejects.toMatchObject({ code: 'PERMISSIONS_VIOLATION' });
    });
    expect((await jsm.streams.info(STREAM)).state.messages).toBe(messages);
    expect(refused).toEqual([
      'publish lock.get',
      'publish lock.list',
      `publish $JS.API.STREAM.PURGE.${STREAM}`,
      `publish $JS.API.STREAM.MSG.DELETE.${STREAM}`,
      `publish $JS.API.STREAM.DELETE.${STREAM}`,
    ]);
  });

  it('an auditor follows events (lockmgr events --follow, replaying first or live only, and the client) through a NATS restart', async () => {
    const earlier = await violationsNow(auditorNc, 'auditor');
    const from = (await lastSeq()) + 1;
    const followers: [string, CliProcess][] = [
      [
        'replay then follow',
        startCli(['events', '--json', '--follow', '--since-seq', String(from), ...cliConn('auditor'), '--stream', STREAM], {
          timeoutMs: 55_000,
        }),
      ],
      ['live', startCli(['events', '--json', '--follow', ...cliConn('auditor')], { timeoutMs: 55_000 })],
    ];
    const followed: string[] = [];
    const api = auditor.events({ since: { seq: from }, follow: true, stream: STREAM });
    const reading = (async () => {
      for await (const e of api) followed.push(e.lock.name);
    })();
    const names = (p: CliProcess) =>
      p
        .stdout()
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => (JSON.parse(l) as LockEvent).lock.name);
    const seenByAll = (name: string) => followed.includes(name) && followers.every(([, p]) => names(p).includes(name));
    // Take and release a name until every follower has printed it.
    const produce = async (name: string, timeoutMs: number) =>
      until(
        async () => {
          await client
            .getLock(name)
            .then((l) => client.unlock(l))
            .catch(() => undefined);
          return seenByAll(name);
        },
        timeoutMs,
        `every follower to see ${name}`,
      );
    try {
      await produce('perm.follow.before', 15_000);
      await nats.restart();
      await produce('perm.follow.after', 40_000);
    } finally {
      for (const [, p] of followers) p.child.kill('SIGINT');
      await api.close();
      await reading;
    }
    for (const [what, p] of followers) {
      const r = await p.done;
      expect({ what, code: r.code, stderr: r.stderr }).toEqual({ what, code: 0, stderr: '' });
    }
    // None more: not the CLI's, not the client's, also while they found their consumers again.
    expect(await violationsNow(auditorNc, 'auditor')).toEqual(earlier);
    expect(violations('daemon')).toEqual([]);
    expect(daemon.output()).not.toMatch(/violation/i);
  });

  it('what consumers still allow an auditor: a push consumer aimed at the daemons delivers stored events they refuse as requests; none aimed at the stream', async () => {
    const held = await client.getLock('perm.push', { expires: 60 });
    const resets = async () => {
      const m = await admin.nc.request('$SRV.STATS.lockmgr', Empty, { timeout: 3000 });
      const stats = parse(m.data) as { endpoints: { name: string; num_requests: number }[] };
      return stats.endpoints.find((e) => e.name === 'reset')!.num_requests;
    };
    const before = await resets();
    // NATS does not check a push consumer's deliver subject against its creator's permissions.
    await jsm.consumers.add(STREAM, {
      name: 'perm-push',
      deliver_subject: 'lock.reset',
      deliver_group: 'lockmgr',
      ack_policy: AckPolicy.None,
      deliver_policy: DeliverPolicy.All,
    });
    try {
      await until(async () => (await resets()) > before, 10_000, 'stored events to reach the daemons as resets');
      // Events are no valid request (unknown fields): refused, the lock stays.
      expect((await client.lockInfo('perm.push'))?.token).toBe(held.token);
    } finally {
      await jsm.consumers.delete(STREAM, 'perm-push');
    }
    // Into the stream itself, JetStream refuses it: an auditor cannot store copies of events.
    await expect(
      jsm.consumers.add(STREAM, { name: 'perm-loop', deliver_subject: 'lock.events.created.perm.copy', ack_policy: AckPolicy.None }),
    ).rejects.toThrow(/cycle/);
    expect(await lastOn('lock.events.created.perm.copy')).toBeNull();
    // The daemons' refusals went to the consumer's acknowledgement subject, which they may not use.
    expect(violations('daemon').every((v) => v.startsWith(`publish $JS.ACK.${STREAM}.perm-push.`))).toBe(true);
    expect(await client.unlock(held)).toBe(true);
  });
});

describe('the shipped permissions with two daemons sharing PostgreSQL', () => {
  let nats: NatsServer;
  let db: TestDatabase;
  const daemons: RunningDaemon[] = [];
  let client: LockClient;
  let admin: LockClient;
  const url = (role: Role) => roleUrl(nats, role);

  beforeAll(async () => {
    nats = await startNatsServer({ configFile: CONFIG });
    db = await createTestDatabase('postgres');
    for (let i = 0; i < 2; i++) {
      daemons.push(await startDaemon({ natsUrl: url('daemon'), db: db.url, prefix: PREFIX, env: { LOCKMGR_EVENTS_STREAM: STREAM } }));
    }
    client = await LockClient.connect({ servers: url('client'), prefix: PREFIX, timeout: 5000 });
    admin = await LockClient.connect({ servers: url('admin'), prefix: PREFIX, timeout: 5000 });
  });

  afterAll(async () => {
    await client?.close();
    await admin?.close();
    for (const d of daemons) await d.stop();
    await nats?.stop();
    if (nats) cleanupDir(nats.storeDir);
    await db?.drop();
  });

  it('both serve, see each other, and relay every event (nudging on lock.relay) with no violation', async () => {
    // `get` requests served per daemon, from each one's $SRV.STATS answer.
    const served = async (): Promise<number[]> => {
      const counts: number[] = [];
      for await (const m of await admin.nc.requestMany('$SRV.STATS.lockmgr', Empty, { maxWait: 1000 })) {
        const stats = parse(m.data) as { endpoints: { name: string; num_requests: number }[] };
        counts.push(stats.endpoints.find((e) => e.name === 'get')!.num_requests);
      }
      return counts;
    };
    // Until both have granted and released locks: the one not relaying nudges the other.
    let taken = 0;
    await until(
      async () => {
        const lock = await client.getLock(`perm.pg.${++taken}`);
        await client.unlock(lock);
        const counts = await served();
        return counts.length === 2 && counts.every((n) => n > 0);
      },
      30_000,
      'both daemons to serve',
    );
    const auditorNc = await connectNats({ servers: url('auditor'), name: 'permissions test auditor' });
    try {
      const jsm = await auditorNc.jetstreamManager();
      await until(async () => (await jsm.streams.info(STREAM)).state.messages === 2 * taken, 10_000, 'every event in the stream');
    } finally {
      await auditorNc.close();
    }
    const ping = await runCli(['ping', '--json', '--nats-url', url('admin'), '--prefix', PREFIX]);
    expect(ping.code).toBe(0);
    expect((JSON.parse(ping.stdout) as { daemons: unknown[] }).daemons).toHaveLength(2);
    expect(nats.log()).not.toMatch(/Violation/);
    for (const d of daemons) expect(d.output()).not.toMatch(/violation/i);
  });
});
