/**
 * Bad input, sent as raw NATS requests (not through the client): every malformed request gets
 * one reply `{ok: false, error: {code: 'INVALID_REQUEST', details}}` with the NATS service error
 * headers set, and the daemon answers the next valid request. Also the client's own name checks,
 * which refuse a bad name before anything is sent.
 */
import { connect, type Msg, type NatsConnection } from 'nats';
import { InvalidRequest, LockClient } from '../../client/index';
import { MAX_NAMES_PER_SET, MAX_PAYLOAD_BYTES, MAX_SECONDS } from '../../shared/protocol';
import { STORES } from '../helpers/databases';
import { startStack, type Stack } from '../helpers/stack';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

interface Answer {
  msg: Msg;
  reply: { ok: boolean; result?: unknown; error?: { code: string; message: string; details?: { field: string; problem: string }[] } };
}

describe.each(STORES)('bad input on %s', (store) => {
  let stack: Stack;
  let nc: NatsConnection;
  let seq = 0;
  const uniq = (base: string) => `${base}_${store}_${++seq}`;

  beforeAll(async () => {
    stack = await startStack({ store });
    nc = await connect({ servers: stack.nats.url });
  });
  afterAll(async () => {
    await nc?.close();
    await stack?.stop();
  });

  async function send(endpoint: string, body: string | Uint8Array | object): Promise<Answer> {
    const data = body instanceof Uint8Array ? body : encoder.encode(typeof body === 'string' ? body : JSON.stringify(body));
    const msg = await nc.request(`${stack.prefix}.${endpoint}`, data, { timeout: 5000 });
    return { msg, reply: JSON.parse(decoder.decode(msg.data)) };
  }

  /** The daemon still serves: a valid request right after gets a normal answer. */
  async function expectServing(): Promise<void> {
    const name = uniq('alive');
    const got = await send('get', { name, expires: 5 });
    expect(got.reply.ok).toBe(true);
    expect(got.msg.headers?.get('Nats-Service-Error-Code') ?? '').toBe('');
    const unlocked = await send('unlock', { name, token: (got.reply.result as { token: number }).token });
    expect(unlocked.reply).toEqual({ ok: true, result: { unlocked: true } });
  }

  /** Assert an INVALID_REQUEST reply naming `fields` (in order), with the service error headers. */
  async function expectInvalid(endpoint: string, body: string | Uint8Array | object, fields: string[]): Promise<Answer> {
    const answer = await send(endpoint, body);
    const { reply, msg } = answer;
    expect(reply.ok).toBe(false);
    expect(reply.error?.code).toBe('INVALID_REQUEST');
    expect(typeof reply.error?.message).toBe('string');
    expect(reply.error!.message.length).toBeGreaterThan(0);
    expect((reply.error?.details ?? []).map((d) => d.field)).toEqual(fields);
    for (const d of reply.error?.details ?? []) expect(d.problem.length).toBeGreaterThan(0);
    expect(msg.headers?.get('Nats-Service-Error-Code')).toBe('400');
    expect(msg.headers?.get('Nats-Service-Error')?.length ?? 0).toBeGreaterThan(0);
    await expectServing();
    return answer;
  }

  describe('bodies that are not a JSON object', () => {
    it.each([
      ['plain text', 'not json'],
      ['truncated JSON', '{"name":'],
      ['JSON with line breaks in a bad spot', '{\r\n"name": oops\r\n}'],
      ['trailing garbage', '{"name":"a"} x'],
    ])('%s -> INVALID_REQUEST on (body)', async (_title, body) => {
      await expectInvalid('get', body, ['(body)']);
    });

    it('bytes that are not UTF-8 JSON -> INVALID_REQUEST', async () => {
      await expectInvalid('set', new Uint8Array([0xff, 0xfe, 0x00, 0x7b]), ['(body)']);
    });

    it.each([['null'], ['[]'], ['[{"name":"a"}]'], ['"a string"'], ['42'], ['true']])(
      '%s is not an object -> INVALID_REQUEST',
      async (body) => {
        await expectInvalid('get', body, ['(body)']);
      },
    );

    it(`a body over ${MAX_PAYLOAD_BYTES / 1024} KiB -> INVALID_REQUEST, and nothing is locked`, async () => {
      const name = uniq('huge');
      const body = JSON.stringify({ locks: [name], locked_by: 'x'.repeat(MAX_PAYLOAD_BYTES) });
      expect(body.length).toBeGreaterThan(MAX_PAYLOAD_BYTES);
      const { reply } = await expectInvalid('set', body, ['(body)']);
      expect(reply.error!.message).toContain(String(MAX_PAYLOAD_BYTES));
      expect((await send('is_locked', { name })).reply).toEqual({ ok: true, result: { locked: false, lock: null } });
    });

    it('an empty body is an empty request: get says name is required', async () => {
      await expectInvalid('get', '', ['name']);
    });
  });

  describe('wrong types and unknown fields', () => {
    it.each([
      ['get', { name: 5 }, ['name']],
      ['get', { name: ['a'] }, ['name']],
      ['get', { name: 'a', expires: 'soon' }, ['expires']],
      ['get', { name: 'a', expires: true }, ['expires']],
      ['get', { name: 'a', expires: {} }, ['expires']],
      ['get', { name: 'a', wait: '5' }, ['wait']],
      ['get', { name: 'a', lock_process: 1.5 }, ['lock_process']],
      ['get', { name: 'a', lock_process: 'pid' }, ['lock_process']],
      ['get', { name: 'a', locked_by: 5 }, ['locked_by']],
      ['get', { name: 'a', locked_by: 'x'.repeat(256) }, ['locked_by']],
      ['set', { locks: 'a' }, ['locks']],
      ['set', { locks: [1, 'ok'] }, ['locks[0]']],
      ['set', {}, ['locks']],
      ['set', { locks: ['a'], fail: 'yes' }, ['fail']],
      ['set', { locks: ['a'], renew: 1 }, ['renew']],
      ['set', { locks: ['a'], create: 'false' }, ['create']],
      ['set', { locks: ['a'], timeout: [] }, ['timeout']],
      ['set', { locks: ['a'], process_id: 'x1' }, ['process_id']],
      ['renew', { name: 'a', token: 1, add_time: 'true' }, ['add_time']],
      ['renew', { name: 'a', token: 'abc' }, ['token']],
      ['unlock', { name: 'a', token: 1.25 }, ['token']],
      ['admin.unlock', {}, ['name']],
      ['admin.renew', { name: 'a', create: 1 }, ['create']],
      ['admin.set', { locks: 'a' }, ['locks']],
      // The everyday subjects act on the caller's own grant: by name is for the admin subjects.
      ['unlock', { name: 'a' }, ['token']],
      ['renew', { name: 'a', expires: 30 }, ['token']],
      ['set', { locks: ['a'], renew: true }, ['renew']],
      ['is_locked', { name: null }, ['name']],
      ['list', { limit: 0 }, ['limit']],
      ['list', { limit: 10_001 }, ['limit']],
      ['list', { limit: '10' }, ['limit']],
      ['list', { prefix: 5 }, ['prefix']],
      ['list', { after: false }, ['after']],
      ['get', { name: 'a', locked_by: 'me\u0000you' }, ['locked_by']],
      ['list', { prefix: 'a\u0000' }, ['prefix']],
    ] as const)('%s %j -> INVALID_REQUEST naming %j', async (endpoint, body, fields) => {
      await expectInvalid(endpoint, body, [...fields]);
    });

    it.each([
      ['get', { name: 'a', bogus: 1 }, ['bogus']],
      ['get', { name: 'a', timeout: 30 }, ['timeout']],
      ['set', { locks: ['a'], expires: 30 }, ['expires']],
      ['unlock', { name: 'a', token: 1, force: true }, ['force']],
      ['clean', { all: true }, ['all']],
      ['reset', { confirm: 'yes' }, ['confirm']],
    ] as const)('unknown field: %s %j -> INVALID_REQUEST naming %j', async (endpoint, body, fields) => {
      await expectInvalid(endpoint, body, [...fields]);
    });

    it('every bad field of one request is named in one reply', async () => {
      const { reply } = await expectInvalid('get', { name: '', expires: -1, wait: 'x', extra: 1 }, ['extra', 'name', 'expires', 'wait']);
      expect(reply.error!.message).toMatch(/name/);
    });

    it('a rejected set request locks none of its valid names', async () => {
      const good = uniq('good');
      await expectInvalid('set', { locks: [good, 'bad name'] }, ['locks[1]']);
      expect((await send('is_locked', { name: good })).reply).toEqual({ ok: true, result: { locked: false, lock: null } });
    });
  });

  describe('bad lock names', () => {
    it.each([
      ['empty', ''],
      ['a space', ' '],
      ['inner whitespace', 'a b'],
      ['a tab', 'a\tb'],
      ['a newline', 'a\nb'],
      ["'*'", '*'],
      ["'>'", '>'],
      ["a '*' token", 'orders.*'],
      ["a '>' token", 'orders.>'],
      ['an empty token', 'a..b'],
      ['a leading dot', '.a'],
      ['a trailing dot', 'a.'],
      ['256 characters', 'n'.repeat(256)],
      ['a NUL character', 'a\u0000b'],
      ['a control character', 'a\u0007b'],
    ])('%s -> INVALID_REQUEST on every endpoint that takes a name', async (_title, name) => {
      for (const endpoint of ['get', 'admin.unlock', 'admin.renew', 'is_locked']) await expectInvalid(endpoint, { name }, ['name']);
      for (const endpoint of ['unlock', 'renew']) await expectInvalid(endpoint, { name, token: 1 }, ['name']);
      await expectInvalid('set', { locks: ['fine', name] }, ['locks[1]']);
    });

    it('255 characters, dots between tokens and other punctuation are fine', async () => {
      for (const name of ['n'.repeat(255), `orders.42.${uniq('x')}`, `a-b_c:d/e@f${uniq('y')}`, `ünïcödé-${uniq('z')}`]) {
        const { reply } = await send('get', { name, expires: 5 });
        expect(reply.ok).toBe(true);
        expect((reply.result as { name: string }).name).toBe(name);
        expect((await send('admin.unlock', { name })).reply).toEqual({ ok: true, result: { unlocked: true } });
      }
    });
  });

  describe('out-of-range numbers and sizes', () => {
    it.each([
      ['get', { name: 'a', expires: -1 }, ['expires']],
      ['get', { name: 'a', expires: -0.5 }, ['expires']],
      ['get', { name: 'a', expires: '-30' }, ['expires']],
      ['get', { name: 'a', wait: -1 }, ['wait']],
      ['get', { name: 'a', wait: -0.001 }, ['wait']],
      ['set', { locks: ['a'], timeout: -5 }, ['timeout']],
      ['renew', { name: 'a', token: 1, expires: -60 }, ['expires']],
      ['get', { name: 'a', expires: MAX_SECONDS + 1 }, ['expires']],
      ['get', { name: 'a', wait: MAX_SECONDS + 1 }, ['wait']],
      ['set', { locks: ['a'], timeout: '1e400' }, ['timeout']],
      ['get', { name: 'a', lock_process: 2 ** 53 }, ['lock_process']],
    ] as const)('%s %j -> INVALID_REQUEST naming %j', async (endpoint, body, fields) => {
      await expectInvalid(endpoint, body, [...fields]);
      expect((await send('is_locked', { name: 'a' })).reply).toEqual({ ok: true, result: { locked: false, lock: null } });
    });

    it(`more than ${MAX_NAMES_PER_SET} names in one set -> INVALID_REQUEST on locks`, async () => {
      const base = uniq('many');
      const locks = Array.from({ length: MAX_NAMES_PER_SET + 1 }, (_, i) => `${base}.${i}`);
      await expectInvalid('set', { locks }, ['locks']);
      expect((await send('is_locked', { name: locks[0]! })).reply).toEqual({ ok: true, result: { locked: false, lock: null } });
      // Exactly the limit is accepted.
      const { reply } = await send('set', { locks: locks.slice(0, MAX_NAMES_PER_SET), timeout: 5 });
      expect(reply.ok).toBe(true);
      expect((reply.result as { counts: { created: number } }).counts.created).toBe(MAX_NAMES_PER_SET);
    });
  });

  it('a burst of bad requests mixed with good ones: each gets its own answer', async () => {
    const name = uniq('burst');
    const bad = Array.from({ length: 50 }, (_, i) => send('get', i % 2 ? 'garbage' : { name: '', expires: -1 }));
    const good = Array.from({ length: 50 }, () => send('get', { name, expires: 5 }));
    const answers = await Promise.all([...bad, ...good]);
    expect(answers.slice(0, 50).every((a) => a.reply.error?.code === 'INVALID_REQUEST')).toBe(true);
    const goodReplies = answers.slice(50).map((a) => a.reply);
    expect(goodReplies.filter((r) => r.ok)).toHaveLength(1);
    expect(goodReplies.filter((r) => !r.ok).every((r) => r.error?.code === 'LOCKED')).toBe(true);
    await expectServing();
  });

  describe("the client's own name checks (nothing is sent)", () => {
    let offline: LockClient;
    beforeAll(async () => {
      // No daemon serves this prefix: a request that went out would fail with NoDaemon.
      offline = await LockClient.connect({ servers: stack.nats.url, prefix: `${stack.prefix}_nobody` });
    });
    afterAll(async () => {
      await offline?.close();
    });

    const badNames = ['', ' ', 'a b', '*', '>', 'a.*', 'a..b', '.a', 'n'.repeat(256)];

    it.each(badNames)('name %j is refused with InvalidRequest by every call', async (name) => {
      const calls: [string, () => Promise<unknown>][] = [
        ['getLock', () => offline.getLock(name)],
        ['setLock', () => offline.setLock('fine', name)],
        ['unlock', () => offline.unlock(name)],
        ['renewLock', () => offline.renewLock(name)],
        ['isLocked', () => offline.isLocked(name)],
        ['lockInfo', () => offline.lockInfo(name)],
        ['withLock', () => offline.withLock(name, () => 'ran')],
      ];
      for (const [call, fn] of calls) {
        const err = await fn().then(
          () => new Error(`${call} succeeded`),
          (e: unknown) => e,
        );
        expect({ call, err }).toEqual({ call, err: expect.any(InvalidRequest) });
        expect((err as InvalidRequest).code).toBe('INVALID_REQUEST');
        expect((err as InvalidRequest).details.map((d) => d.field)).toEqual(['name']);
      }
    });

    it('a valid name does go out (and meets no daemon), so the checks above were local', async () => {
      await expect(offline.getLock('valid')).rejects.toMatchObject({ code: 'NO_DAEMON' });
    });
  });
});
