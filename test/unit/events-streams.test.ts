/**
 * The default events stream of a prefix, and how a stream's subjects are judged against a
 * prefix's events: the rules the daemon, `lockmgr events` and client.events() share.
 */
import { defaultEventsStream, eventsStreamName, streamFit, streamNameProblem, subjectCovers } from '../../shared/events';

describe('the default stream of a prefix', () => {
  it('is LOCKMGR_EVENTS_ and the prefix, with what a stream name cannot hold written _', () => {
    expect(defaultEventsStream('lock')).toBe('LOCKMGR_EVENTS_lock');
    expect(defaultEventsStream('app.locks')).toBe('LOCKMGR_EVENTS_app_locks');
    expect(defaultEventsStream('Team-2_x')).toBe('LOCKMGR_EVENTS_Team-2_x');
    expect(defaultEventsStream('a.b*c>d é')).toBe('LOCKMGR_EVENTS_a_b_c_d__');
    for (const p of ['lock', 'app.locks', 'a.b*c>d é']) expect(streamNameProblem(defaultEventsStream(p))).toBeNull();
  });

  it('gives way to a configured name; an empty one is the default', () => {
    expect(eventsStreamName('lock', 'AUDIT')).toBe('AUDIT');
    expect(eventsStreamName('lock', '')).toBe('LOCKMGR_EVENTS_lock');
    expect(eventsStreamName('lock')).toBe('LOCKMGR_EVENTS_lock');
  });

  it('refuses what JetStream refuses in a name', () => {
    for (const bad of ['a.b', 'a b', 'a*', 'a>', 'a/b', 'a\\b', 'évents'])
      expect([bad, streamNameProblem(bad)]).toEqual([bad, expect.any(String)]);
  });
});

describe('a stream subject covering a pattern', () => {
  it.each([
    ['>', 'lock.events.>', true],
    ['lock.>', 'lock.events.>', true],
    ['lock.events.>', 'lock.events.>', true],
    ['*.events.>', 'lock.events.>', true],
    ['lock.events.*.>', 'lock.events.>', false],
    ['lock.events.created.>', 'lock.events.>', false],
    ['lock.events', 'lock.events.>', false],
    ['other.events.>', 'lock.events.>', false],
    ['lock.events.>', 'lock.events.created.x', true],
    ['lock.events.*', 'lock.events.*', true],
    ['lock.events.x', 'lock.events.*', false],
  ])('%s covers %s: %s', (filter, pattern, covers) => {
    expect(subjectCovers(filter, pattern)).toBe(covers);
  });
});

describe('streamFit', () => {
  it("tells whether a stream takes all of a prefix's events, and what else it takes", () => {
    expect(streamFit('lock', ['lock.events.>'])).toEqual({ takesAll: true, others: [] });
    expect(streamFit('lock', ['other.events.>', 'lock.events.>'])).toEqual({ takesAll: true, others: ['other.events.>'] });
    expect(streamFit('lock', ['>'])).toEqual({ takesAll: true, others: ['>'] });
    expect(streamFit('lock', ['lock_x.events.>'])).toEqual({ takesAll: false, others: ['lock_x.events.>'] });
    // Part of the prefix's events only: not enough, but nothing foreign either.
    expect(streamFit('lock', ['lock.events.created.>'])).toEqual({ takesAll: false, others: [] });
    expect(streamFit('lock', [])).toEqual({ takesAll: false, others: [] });
  });
});
