/**
 * The pure parts of event subscriptions: NATS subject matching, the subscription plan (one
 * subject, narrowed where possible, plus exact patterns matched locally), name pattern checks,
 * and the CLI's one-line format.
 */
import { eventsPlan, namePatternProblem, subjectMatches, type ReceivedLockEvent } from '../../client/events';
import { formatEvent } from '../../cli/events-command';

describe('subjectMatches', () => {
  it.each([
    ['p.events.created.orders.42', 'p.events.created.orders.42', true],
    ['p.events.*.orders.42', 'p.events.released.orders.42', true],
    ['p.events.*.orders.*', 'p.events.released.orders.42', true],
    ['p.events.*.orders.*', 'p.events.released.orders.42.x', false],
    ['p.events.*.orders.>', 'p.events.released.orders.42.x', true],
    ['p.events.*.orders.>', 'p.events.released.orders', false],
    ['p.events.created.>', 'p.events.renewed.a', false],
    ['p.events.*.a', 'p.events.created.a.b', false],
    ['p.events.*.a.b', 'p.events.created.a', false],
  ])('%s against %s: %s', (pattern, subject, expected) => {
    expect(subjectMatches(pattern, subject)).toBe(expected);
  });
});

describe('eventsPlan', () => {
  it('subscribes exactly when there is at most one type and one name', () => {
    expect(eventsPlan('p')).toEqual({ subject: 'p.events.*.>', patterns: null });
    expect(eventsPlan('p', ['expired'])).toEqual({ subject: 'p.events.expired.>', patterns: null });
    expect(eventsPlan('p', undefined, 'orders.*')).toEqual({ subject: 'p.events.*.orders.*', patterns: null });
    expect(eventsPlan('p', ['released'], ['orders.>'])).toEqual({ subject: 'p.events.released.orders.>', patterns: null });
  });

  it('narrows what it can and matches the rest locally', () => {
    expect(eventsPlan('p', ['released', 'expired'], 'a.b')).toEqual({
      subject: 'p.events.*.a.b',
      patterns: ['p.events.released.a.b', 'p.events.expired.a.b'],
    });
    expect(eventsPlan('p', ['created'], ['a', 'b.*'])).toEqual({
      subject: 'p.events.created.>',
      patterns: ['p.events.created.a', 'p.events.created.b.*'],
    });
  });

  it('refuses unknown types, bad patterns and an empty name list', () => {
    expect(() => eventsPlan('p', ['deleted' as never])).toThrow(/unknown event type "deleted"/);
    expect(() => eventsPlan('p', undefined, [])).toThrow(/names must not be empty/);
    expect(() => eventsPlan('p', undefined, 'a..b')).toThrow(/empty dot-separated token/);
  });
});

describe('namePatternProblem', () => {
  it.each([
    ['orders.42', null],
    ['orders.*', null],
    ['orders.>', null],
    ['>', null],
    ['a.>.b', "'>' may only be the last token"],
    ['a.b*', "'*' and '>' must be whole tokens"],
    ['a b', 'must not contain whitespace'],
    ['', 'must be a string of 1-255 characters'],
  ])('%j: %j', (pattern, problem) => {
    expect(namePatternProblem(pattern)).toBe(problem);
  });
});

describe('formatEvent', () => {
  const base: ReceivedLockEvent = {
    id: '0b6f1b9e-3f43-4a53-9a51-8f1f0f6a2c11',
    type: 'created',
    seq: 42,
    lock: {
      name: 'orders.42',
      locked_by: 'web-1',
      lock_process: 123,
      locked_until: '2026-11-26T16:50:01.123Z',
      created_at: '2026-11-26T16:40:01.123Z',
      updated_at: '2026-11-26T16:40:01.123Z',
      token: 7,
    },
    cause: { locked_by: 'web-1', process_id: 123, client: 'C7@web-1:123', operation: 'get' },
    daemon: 'host:1:abcdef',
    at: '2026-11-26T16:40:01.123Z',
  };

  it('prints time, seq, type, name, who, token, expiry and operation on one line', () => {
    expect(formatEvent(base)).toBe(
      '2026-11-26T16:40:01.123Z #42 created  orders.42  by web-1 pid=123 token=7 until=2026-11-26T16:50:01.123Z op=get',
    );
  });

  it('names the holder when someone else caused the change, and the stream position when replayed', () => {
    const swept: ReceivedLockEvent = {
      ...base,
      type: 'expired',
      seq: 50,
      cause: { locked_by: 'lockd-1', process_id: 9, client: null, operation: 'sweeper' },
      streamSeq: 17,
    };
    expect(formatEvent(swept)).toBe(
      '2026-11-26T16:40:01.123Z #50 expired  orders.42  by lockd-1 pid=9 token=7 holder=web-1 op=sweeper stream=17',
    );
  });
});
