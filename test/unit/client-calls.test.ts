/**
 * How a LockClient call treats its copies (client/lock-client.ts), against a fake NATS connection
 * whose replies, status events and close the test drives, on Jest's fake clock: an aborted signal
 * stops every copy and sends no more; DAEMON_STOPPING sends the request again at once; nothing
 * goes out while NATS is down, a copy as soon as it is back; a closed connection and NATS errors
 * become LockErrors (client/errors.ts errorFromNats).
 */
import { ErrorCode, Events, NatsError, type Msg, type NatsConnection, type Status } from 'nats';
import {
  Cancelled,
  ConnectionClosed,
  DaemonStopping,
  errorFromNats,
  InvalidRequest,
  LockClient,
  LockError,
  NatsFailure,
  NatsUnavailable,
  NoDaemon,
  PermissionDenied,
  RequestTimeout,
} from '../../client/index';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** An async queue of values, ended by `end()`; what nats.js's queued iterators are to the client. */
class Feed<T> implements AsyncIterable<T> {
  private readonly items: (T | { error: unknown })[] = [];
  private wake?: () => void;
  ended = false;

  push(item: T): void {
    this.items.push(item);
    this.wake?.();
  }
  fail(error: unknown): void {
    this.items.push({ error });
    this.wake?.();
  }
  end(): void {
    this.ended = true;
    this.wake?.();
  }
  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    try {
      for (;;) {
        const item = this.items.shift();
        if (item !== undefined) {
          if (typeof item === 'object' && item !== null && 'error' in item) throw item.error;
          yield item as T;
          continue;
        }
        if (this.ended) return;
        await new Promise<void>((r) => (this.wake = r));
      }
    } finally {
      // Left early (a `return` in the loop), as nats.js's iterators: no more is listened to.
      this.ended = true;
    }
  }
}

/** One copy the client sent: its body, and its replies (a stop() is what the client calls to stop listening). */
class Copy extends Feed<Msg> {
  stopped = false;
  constructor(
    readonly subject: string,
    readonly body: Record<string, unknown>,
  ) {
    super();
  }
  stop(): void {
    this.stopped = true;
    this.end();
  }
  reply(payload: unknown): void {
    this.push({ data: encoder.encode(JSON.stringify(payload)) } as Msg);
  }
}

class FakeNats {
  readonly copies: Copy[] = [];
  readonly info = { client_id: 7 };
  private readonly statuses = new Feed<Status>();
  private closedFlag = false;
  private closeWith!: (err: Error | void) => void;
  private readonly closedPromise = new Promise<Error | void>((r) => (this.closeWith = r));

  requestMany(subject: string, data: Uint8Array): Promise<AsyncIterable<Msg>> {
    if (this.closedFlag) return Promise.reject(NatsError.errorForCode(ErrorCode.ConnectionClosed));
    const copy = new Copy(subject, JSON.parse(decoder.decode(data)) as Record<string, unknown>);
    this.copies.push(copy);
    return Promise.resolve(copy);
  }
  /** A plain request (calls without a signal): its first reply, and no way to stop it. */
  async request(subject: string, data: Uint8Array): Promise<Msg> {
    const copy = await this.requestMany(subject, data);
    for await (const msg of copy) return msg;
    throw NatsError.errorForCode(ErrorCode.Timeout);
  }
  status(): AsyncIterable<Status> {
    return this.statuses;
  }
  closed(): Promise<Error | void> {
    return this.closedPromise;
  }
  isClosed(): boolean {
    return this.closedFlag;
  }
  emit(type: Events, data = 'nats://127.0.0.1:4222'): void {
    this.statuses.push({ type, data });
  }
  close(err?: Error): void {
    this.closedFlag = true;
    this.statuses.end();
    this.closeWith(err);
  }
  /** The copies still listened to. */
  listening(): Copy[] {
    return this.copies.filter((c) => !c.stopped && !c.ended);
  }
}

/** A promise's outcome, observable without awaiting it. */
function track<T>(p: Promise<T>): { settled: boolean; value?: T; error?: unknown } {
  const state: { settled: boolean; value?: T; error?: unknown } = { settled: false };
  p.then(
    (value) => Object.assign(state, { settled: true, value }),
    (error: unknown) => Object.assign(state, { settled: true, error }),
  );
  return state;
}

const grant = {
  name: 'n',
  locked_by: 'me',
  lock_process: null,
  locked_until: null,
  created_at: '2026-01-01T00:00:00.000Z',
  updated_at: '2026-01-01T00:00:00.000Z',
  token: 5,
};

describe('LockClient calls', () => {
  let nats: FakeNats;
  let client: LockClient;
  const tick = (ms = 0) => jest.advanceTimersByTimeAsync(ms);

  beforeEach(() => {
    jest.useFakeTimers();
    nats = new FakeNats();
    client = new LockClient(nats as unknown as NatsConnection, { prefix: 'p', timeout: 2000 });
  });
  afterEach(() => {
    jest.useRealTimers();
  });

  it('an already-aborted signal fails every call with Cancelled, sending nothing', async () => {
    const reason = new Error('shutting down');
    const signal = AbortSignal.abort(reason);
    const calls: [string, () => Promise<unknown>][] = [
      ['setLock', () => client.setLock('a', 'b', { signal })],
      ['getLock', () => client.getLock('a', { wait: 30, signal })],
      ['unlock', () => client.unlock('a', { signal })],
      ['renewLock', () => client.renewLock('a', { signal })],
      ['isLocked', () => client.isLocked('a', { signal })],
      ['lockInfo', () => client.lockInfo('a', { signal })],
      ['listLocks', () => client.listLocks({ signal })],
      ['listLocksPage', () => client.listLocksPage({ signal })],
      ['cleanLocks', () => client.cleanLocks({ signal })],
      ['resetLocks', () => client.resetLocks({ signal })],
      ['withLock', () => client.withLock('a', { signal }, () => 'ran')],
      ['call', () => client.call('is_locked', { name: 'a' }, 1000, { signal })],
    ];
    for (const [name, fn] of calls) {
      const err = await fn().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect({ name, err }).toEqual({ name, err: expect.any(Cancelled) });
      expect((err as Cancelled).code).toBe('CANCELLED');
      expect((err as Cancelled).cause).toBe(reason);
      expect((err as Cancelled).message).toContain('shutting down');
    }
    expect(nats.copies).toHaveLength(0);
  });

  it('aborting a waiting getLock: Cancelled at once, every copy stops listening, no copy after', async () => {
    const controller = new AbortController();
    const call = track(client.getLock('n', { wait: 30, signal: controller.signal }));
    await tick();
    expect(nats.copies).toHaveLength(1);
    // No word from a daemon within resendAfter: a second copy, then both are told "waiting".
    await tick(100);
    expect(nats.copies).toHaveLength(2);
    for (const c of nats.copies) c.reply({ waiting: true });
    await tick(5000);
    expect(nats.copies).toHaveLength(2);
    expect(nats.listening()).toHaveLength(2);
    expect(nats.copies.map((c) => c.body.request_id)).toEqual([nats.copies[0]!.body.request_id, nats.copies[0]!.body.request_id]);

    controller.abort('user gave up');
    await tick();
    expect(call.settled).toBe(true);
    expect(call.error).toBeInstanceOf(Cancelled);
    expect((call.error as Cancelled).cause).toBe('user gave up');
    expect(nats.copies.every((c) => c.stopped)).toBe(true);
    // The wait would have lasted 30 s: nothing more is sent in that time.
    await tick(40_000);
    expect(nats.copies).toHaveLength(2);
  });

  it('aborting any other call in flight: Cancelled, its copies stopped, none sent after', async () => {
    const calls: [string, (signal: AbortSignal) => Promise<unknown>][] = [
      ['setLock', (signal) => client.setLock('a', { signal })],
      ['unlock', (signal) => client.unlock('a', { signal })],
      ['renewLock', (signal) => client.renewLock('a', { signal })],
      ['isLocked', (signal) => client.isLocked('a', { signal })],
      ['listLocks', (signal) => client.listLocks({ signal })],
      ['cleanLocks', (signal) => client.cleanLocks({ signal })],
      ['resetLocks', (signal) => client.resetLocks({ signal })],
      ['withLock', (signal) => client.withLock('a', { signal }, () => 'ran')],
    ];
    for (const [name, fn] of calls) {
      const before = nats.copies.length;
      const controller = new AbortController();
      const call = track(fn(controller.signal));
      // Unanswered: copies go out again.
      await tick(350);
      const sent = nats.copies.length - before;
      expect({ name, sent: sent >= 2 }).toEqual({ name, sent: true });
      controller.abort();
      await tick();
      expect({ name, error: call.error }).toEqual({ name, error: expect.any(Cancelled) });
      expect(nats.copies.slice(before).every((c) => c.stopped)).toBe(true);
      await tick(5000);
      expect({ name, after: nats.copies.length - before }).toEqual({ name, after: sent });
    }
  });

  it('the first answer ends the call; with a signal, the other copies stop listening', async () => {
    const call = track(client.isLocked('a', { signal: new AbortController().signal }));
    await tick(250);
    expect(nats.copies.length).toBeGreaterThanOrEqual(2);
    nats.copies[0]!.reply({ ok: true, result: { locked: false, lock: null } });
    await tick();
    expect(call.value).toBe(false);
    expect(nats.listening()).toHaveLength(0);
  });

  it('DAEMON_STOPPING: the same request at once, next attempt, with what is left of the wait', async () => {
    const call = track(client.getLock('n', { wait: 30 }));
    await tick();
    const first = nats.copies[0]!;
    first.reply({ waiting: true });
    await tick(10_000);
    expect(nats.copies).toHaveLength(1);
    first.reply({ ok: false, error: { code: 'DAEMON_STOPPING', message: 'stopping' } });
    await tick();
    expect(nats.copies).toHaveLength(2);
    const again = nats.copies[1]!;
    expect(again.body.request_id).toBe(first.body.request_id);
    expect(again.body.attempt).toBe(2);
    expect(again.body.wait).toBeCloseTo(20, 0);
    expect(call.settled).toBe(false);
    again.reply({ ok: true, result: grant });
    await tick();
    expect(call.error).toBeUndefined();
    expect(call.value).toMatchObject({ name: 'n', token: 5 });
  });

  it('DAEMON_STOPPING and no other daemon: asks again after pauses; DaemonStopping or NoDaemon when the time is up', async () => {
    const call = track(client.getLock('n', { wait: 1 }));
    await tick();
    nats.copies[0]!.reply({ ok: false, error: { code: 'DAEMON_STOPPING', message: 'stopping' } });
    await tick();
    nats.copies[1]!.fail(NatsError.errorForCode(ErrorCode.NoResponders));
    await tick(40);
    expect(nats.copies).toHaveLength(2);
    await tick(20);
    expect(nats.copies).toHaveLength(3);
    // Nobody ever answers again: the call ends at its time (2 s + the 1 s wait).
    for (let t = 0; t < 3000 && !call.settled; t += 50) {
      for (const c of nats.listening()) c.fail(NatsError.errorForCode(ErrorCode.NoResponders));
      await tick(50);
    }
    expect(call.error).toBeInstanceOf(NoDaemon);
  });

  it('DAEMON_STOPPING as the last word when the time is up: DaemonStopping', async () => {
    const call = track(client.getLock('n', { wait: 1 }));
    await tick();
    nats.copies[0]!.reply({ ok: false, error: { code: 'DAEMON_STOPPING', message: 'stopping' } });
    // The copy sent again is never answered (a daemon cut off): the call ends with what it heard.
    await tick(3000);
    expect(nats.copies.length).toBeGreaterThanOrEqual(2);
    expect(call.error).toBeInstanceOf(DaemonStopping);
    expect((call.error as DaemonStopping).code).toBe('DAEMON_STOPPING');
  });

  it('NATS down: no copy goes out; one as soon as it is back, and the call succeeds', async () => {
    nats.emit(Events.Disconnect);
    await tick();
    const call = track(client.setLock('a'));
    await tick(1500);
    expect(nats.copies).toHaveLength(0);
    nats.emit(Events.Reconnect);
    await tick();
    expect(nats.copies).toHaveLength(1);
    nats.copies[0]!.reply({
      ok: true,
      result: { locks: [grant], counts: { created: 1, renewed: 0, skip_create: 0, skip_renew: 0 }, statuses: [] },
    });
    await tick();
    expect(call.error).toBeUndefined();
    expect(call.settled).toBe(true);
  });

  it('a copy out when NATS goes down is sent again when it is back (a waiting get included)', async () => {
    const call = track(client.getLock('n', { wait: 30 }));
    await tick();
    nats.copies[0]!.reply({ waiting: true });
    await tick(1000);
    nats.emit(Events.Disconnect);
    await tick(3000);
    expect(nats.copies).toHaveLength(1);
    nats.emit(Events.Reconnect);
    await tick();
    expect(nats.copies).toHaveLength(2);
    expect(nats.copies[1]!.body.request_id).toBe(nats.copies[0]!.body.request_id);
    nats.copies[1]!.reply({ ok: true, result: grant });
    await tick();
    expect(call.value).toMatchObject({ token: 5 });
  });

  it("NATS still down when the call's time runs out: NatsUnavailable, saying so", async () => {
    const call = track(client.isLocked('a'));
    await tick(10);
    nats.emit(Events.Error, 'AUTHORIZATION_VIOLATION');
    nats.emit(Events.Disconnect);
    await tick(2000);
    expect(call.error).toBeInstanceOf(NatsUnavailable);
    expect((call.error as NatsUnavailable).code).toBe('NATS_UNAVAILABLE');
    expect((call.error as Error).message).toMatch(
      /NATS is disconnected \(the client is reconnecting; last error: AUTHORIZATION_VIOLATION\)/,
    );
    expect((call.error as Error).message).toContain('within 2000 ms');
  });

  it('back but unanswered: RequestTimeout that says NATS was away for part of it', async () => {
    const call = track(client.isLocked('a'));
    nats.emit(Events.Disconnect);
    await tick(500);
    nats.emit(Events.Reconnect);
    await tick(1600);
    expect(call.error).toBeInstanceOf(RequestTimeout);
    expect((call.error as Error).message).toContain('NATS was disconnected for part of it');
  });

  it('the connection closes during a call, or before one: ConnectionClosed', async () => {
    const call = track(client.getLock('n', { wait: 30 }));
    await tick();
    const gaveUp = NatsError.errorForCode(ErrorCode.ConnectionRefused);
    nats.close(gaveUp);
    await tick();
    expect(call.error).toBeInstanceOf(ConnectionClosed);
    expect((call.error as ConnectionClosed).code).toBe('CONNECTION_CLOSED');
    expect((call.error as ConnectionClosed).cause).toBe(gaveUp);
    expect(nats.listening()).toHaveLength(0);
    const later = await client.isLocked('a').catch((e: unknown) => e);
    expect(later).toBeInstanceOf(ConnectionClosed);
    expect(nats.copies).toHaveLength(1);
  });

  it('a copy NATS refuses (PERMISSIONS_VIOLATION): PermissionDenied at once, with the cause', async () => {
    const call = track(client.unlock('a'));
    await tick();
    const refused = new NatsError('Permissions Violation for Publish to "p.unlock"', ErrorCode.PermissionsViolation);
    nats.copies[0]!.fail(refused);
    await tick();
    expect(call.error).toBeInstanceOf(PermissionDenied);
    expect((call.error as PermissionDenied).code).toBe('PERMISSION_DENIED');
    expect((call.error as PermissionDenied).cause).toBe(refused);
    expect((call.error as Error).message).toContain('p.unlock');
  });
});

describe('errorFromNats: every nats.js error a caller could meet is a LockError with a stable code', () => {
  it.each([
    [ErrorCode.ConnectionClosed, 'CONNECTION_CLOSED'],
    [ErrorCode.ConnectionDraining, 'CONNECTION_CLOSED'],
    [ErrorCode.ConnectionRefused, 'NATS_UNAVAILABLE'],
    [ErrorCode.ConnectionTimeout, 'NATS_UNAVAILABLE'],
    [ErrorCode.Disconnect, 'NATS_UNAVAILABLE'],
    [ErrorCode.PermissionsViolation, 'PERMISSION_DENIED'],
    [ErrorCode.AuthorizationViolation, 'PERMISSION_DENIED'],
    [ErrorCode.AuthenticationExpired, 'PERMISSION_DENIED'],
    [ErrorCode.MaxPayloadExceeded, 'INVALID_REQUEST'],
    [ErrorCode.BadSubject, 'INVALID_REQUEST'],
    [ErrorCode.NoResponders, 'NO_DAEMON'],
    [ErrorCode.ProtocolError, 'NATS_ERROR'],
    [ErrorCode.SubClosed, 'NATS_ERROR'],
  ])('%s -> %s, keeping the cause', (natsCode, code) => {
    const err = NatsError.errorForCode(natsCode);
    const mapped = errorFromNats(err, { subject: 'lock.get' });
    expect(mapped).toBeInstanceOf(LockError);
    expect(mapped.code).toBe(code);
    expect(mapped.cause).toBe(err);
  });

  it('connecting: anything that leaves no connection is NatsUnavailable; a bad login PermissionDenied', () => {
    const refused = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), { code: 'ECONNREFUSED' });
    const mapped = errorFromNats(refused, { connecting: 'nats://127.0.0.1:1' });
    expect(mapped).toBeInstanceOf(NatsUnavailable);
    expect(mapped.message).toContain('nats://127.0.0.1:1');
    expect(errorFromNats(NatsError.errorForCode(ErrorCode.Timeout), { connecting: 'x' })).toBeInstanceOf(NatsUnavailable);
    expect(errorFromNats(NatsError.errorForCode(ErrorCode.AuthorizationViolation), { connecting: 'x' })).toBeInstanceOf(PermissionDenied);
  });

  it('an unreadable credentials file is an InvalidRequest naming creds; LockErrors pass through; other errors are NatsFailure', () => {
    const creds = Object.assign(new Error('cannot read the NATS credentials file /x.creds: ENOENT'), { code: 'NATS_CREDENTIALS' });
    const mapped = errorFromNats(creds, { connecting: 'x' });
    expect(mapped).toBeInstanceOf(InvalidRequest);
    expect((mapped as InvalidRequest).details).toEqual([{ field: 'creds', problem: 'cannot be read' }]);
    const own = new NoDaemon('lock.get');
    expect(errorFromNats(own)).toBe(own);
    const odd = errorFromNats(new TypeError('boom'));
    expect(odd).toBeInstanceOf(NatsFailure);
    expect(odd.code).toBe('NATS_ERROR');
  });
});
