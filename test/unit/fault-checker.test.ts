/**
 * The fault-history checker on hand-made histories: a clean one passes, and each kind of
 * violation (overlapping holds, a repeated or out-of-order token, a lost acknowledged grant, a
 * call past its timeout, an undocumented error code, unrelated names left unserved) is reported.
 */
import { checkHistory, DOCUMENTED_CODES, type CallRecord, type FinalState } from '../fault/checker';

/** Builds a history call by call, numbering them. */
function history() {
  const calls: CallRecord[] = [];
  const add = (c: Omit<CallRecord, 'id'>) => {
    calls.push({ id: calls.length + 1, ...c });
    return calls;
  };
  const h = {
    calls,
    /** A granted get, its write, and (unless `unlockAt` is null) its acknowledged unlock. */
    cycle(client: string, name: string, token: number, grantAt: number, unlockAt: number | null, lockedUntil = grantAt + 3000) {
      add({ client, op: 'get', name, start: grantAt - 5, end: grantAt, timeoutMs: 3000, ok: true, token, lockedUntil });
      add({ client, op: 'write', name, start: grantAt + 1, end: grantAt + 1, timeoutMs: null, ok: true, token });
      if (unlockAt !== null) {
        add({ client, op: 'unlock', name, start: unlockAt, end: unlockAt + 5, timeoutMs: 2000, ok: true, token, unlocked: true });
      }
      return h;
    },
    call(c: Omit<CallRecord, 'id'>) {
      add(c);
      return h;
    },
  };
  return h;
}

/** Two clients taking turns on `a`, a third on `b`; c0's last grant on `a` still held at the end. */
function clean() {
  return history()
    .cycle('c0', 'a', 1, 100, 120)
    .cycle('c1', 'a', 3, 130, 150)
    .cycle('c2', 'b', 2, 110, 200)
    .cycle('c0', 'a', 4, 160, null)
    .call({ client: 'c1', op: 'get', name: 'a', start: 170, end: 1170, timeoutMs: 3000, ok: false, code: 'LOCKED' });
}

const finalOf = (at: number, ...locks: [string, number, number | null][]): FinalState => ({
  at,
  locks: locks.map(([name, token, lockedUntil]) => ({ name, token, lockedUntil })),
});

describe('fault-history checker', () => {
  it('passes a clean history', () => {
    const r = checkHistory(clean().calls, { final: finalOf(1200, ['a', 4, 3160]) });
    expect(r.violations).toEqual([]);
    expect(r.byOp.get).toEqual({ calls: 5, ok: 4 });
    expect(r.failuresByCode).toEqual({ LOCKED: 1 });
    expect(r.holds).toBe(4);
    expect(r.verifiedAtEnd).toBe(1);
  });

  it('takes a hold to end when the unlock is sent, not when its reply comes (the next grant may be replied first)', () => {
    // c1's grant is replied at 125, between c0's unlock request (120) and its reply (125).
    const calls = history().cycle('c0', 'a', 1, 100, 120).cycle('c1', 'a', 2, 125, 150).calls;
    expect(checkHistory(calls).overlaps).toEqual([]);
  });

  it('reports holds of one name that overlap before expiry', () => {
    const calls = history().cycle('c0', 'a', 1, 100, 300).cycle('c1', 'a', 2, 200, 250).calls;
    const r = checkHistory(calls);
    expect(r.overlaps).toHaveLength(1);
    expect(r.overlaps[0]).toMatchObject({
      name: 'a',
      first: { token: 1, client: 'c0' },
      second: { token: 2, client: 'c1' },
      overlapMs: 50,
    });
    expect(r.violations.map((v) => v.property)).toEqual(['overlap']);
    expect(r.violations[0]!.detail).toContain('held together for 50ms');
  });

  it('does not count a hold past its expiry', () => {
    // c0 never unlocks; its grant expires at 1100, and c1 is granted the name after that.
    const calls = history().cycle('c0', 'a', 1, 100, null, 1100).cycle('c1', 'a', 2, 1200, 1300).calls;
    expect(checkHistory(calls).violations).toEqual([]);
  });

  it('reports a token granted twice, on any names', () => {
    const calls = history().cycle('c0', 'a', 7, 100, 120).cycle('c1', 'b', 7, 300, 320).calls;
    const r = checkHistory(calls);
    expect(r.tokenProblems).toEqual([expect.objectContaining({ kind: 'repeated', token: 7 })]);
    expect(r.violations.map((v) => v.property)).toEqual(['token']);
  });

  it('reports a token that does not grow along one name, in real-time order', () => {
    // c1 asked (start 295) after c0's grant of token 9 was acknowledged (100), yet got 5.
    const calls = history().cycle('c0', 'a', 9, 100, 120).cycle('c1', 'a', 5, 300, 320).calls;
    const r = checkHistory(calls);
    expect(r.tokenProblems).toEqual([expect.objectContaining({ kind: 'order', name: 'a', token: 5 })]);
  });

  it('does not order grants whose requests were in flight together', () => {
    // c1's request (start 95) was sent before c0's grant was acknowledged (100): either may commit first.
    const calls = history().cycle('c0', 'a', 9, 100, null, 101).cycle('c1', 'a', 5, 100, 120).calls;
    calls[3]!.start = 95;
    expect(checkHistory(calls).tokenProblems).toEqual([]);
  });

  it('reports an acknowledged grant missing at the end, or replaced, before it expired', () => {
    const calls = history().cycle('c0', 'a', 1, 100, null).cycle('c1', 'b', 2, 100, null).cycle('c2', 'c', 3, 100, null).calls;
    // a: gone; b: another token holds it; c: present. All had 1.9 s left.
    const r = checkHistory(calls, { final: finalOf(1200, ['b', 99, 5000], ['c', 3, 3100]) });
    expect(r.lost.map((l) => [l.name, l.token])).toEqual([
      ['a', 1],
      ['b', 2],
    ]);
    expect(r.lost[0]!.detail).toContain('absent at the end');
    expect(r.lost[1]!.detail).toContain('replaced by token 99');
  });

  it('does not miss an expired grant or one released by an acknowledged unlock', () => {
    const calls = history().cycle('c0', 'a', 1, 100, null, 500).cycle('c1', 'b', 2, 100, 200).calls;
    expect(checkHistory(calls, { final: finalOf(1200) }).lost).toEqual([]);
  });

  it('reports an unlock answered "nothing to unlock" or NOT_OWNER while the grant had time left', () => {
    const calls = history()
      .cycle('c0', 'a', 1, 100, null)
      .call({ client: 'c0', op: 'unlock', name: 'a', start: 200, end: 210, timeoutMs: 2000, ok: true, token: 1, unlocked: false })
      .cycle('c1', 'b', 2, 100, null)
      .call({ client: 'c1', op: 'unlock', name: 'b', start: 200, end: 210, timeoutMs: 2000, ok: false, token: 2, code: 'NOT_OWNER' }).calls;
    const r = checkHistory(calls);
    expect(r.lost.map((l) => l.name)).toEqual(['a', 'b']);
    expect(r.lost[0]!.detail).toContain('nothing to unlock');
    expect(r.lost[1]!.detail).toContain('NOT_OWNER');
  });

  it('leaves a grant whose unlock timed out undetermined, not lost', () => {
    const calls = history().cycle('c0', 'a', 1, 100, null).call({
      client: 'c0',
      op: 'unlock',
      name: 'a',
      start: 200,
      end: 2200,
      timeoutMs: 2000,
      ok: false,
      token: 1,
      code: 'REQUEST_TIMEOUT',
    }).calls;
    const r = checkHistory(calls, { final: finalOf(2300) });
    expect(r.lost).toEqual([]);
    expect(r.undetermined).toBe(1);
  });

  it('reports a call that outlived its timeout', () => {
    const calls = clean().call({
      client: 'c3',
      op: 'get',
      name: 'b',
      start: 1000,
      end: 4500,
      timeoutMs: 3000,
      ok: false,
      code: 'REQUEST_TIMEOUT',
    }).calls;
    const r = checkHistory(calls, { overTimeMarginMs: 300, final: finalOf(4600) });
    expect(r.overTime).toEqual([
      expect.objectContaining({ op: 'get', name: 'b', tookMs: 3500, timeoutMs: 3000, outcome: 'REQUEST_TIMEOUT' }),
    ]);
    expect(r.violations.map((v) => v.property)).toEqual(['over-time']);
    // Within the margin: fine.
    calls[calls.length - 1]!.end = 4200;
    expect(checkHistory(calls, { overTimeMarginMs: 300 }).overTime).toEqual([]);
  });

  it('reports an error code nobody documented, and accepts the documented ones', () => {
    const calls = clean()
      .call({
        client: 'c3',
        op: 'get',
        name: 'b',
        start: 10,
        end: 20,
        timeoutMs: 3000,
        ok: false,
        code: 'UNCODED:TypeError',
        message: 'boom',
      })
      .call({ client: 'c3', op: 'get', name: 'b', start: 30, end: 40, timeoutMs: 3000, ok: false, code: 'AUTHORITY_CONFLICT' })
      .call({ client: 'c3', op: 'get', name: 'b', start: 50, end: 60, timeoutMs: 3000, ok: false, code: 'NO_DAEMON' }).calls;
    const r = checkHistory(calls);
    expect(r.undocumented).toEqual([expect.objectContaining({ code: 'UNCODED:TypeError', message: 'boom' })]);
    expect(r.violations.map((v) => v.property)).toEqual(['undocumented-code']);
    expect(DOCUMENTED_CODES).toEqual(
      expect.arrayContaining(['LOCKED', 'STORE_UNAVAILABLE', 'REQUEST_TIMEOUT', 'OUTCOME_UNKNOWN', 'DAEMON_STOPPING', 'NATS_UNAVAILABLE']),
    );
  });

  it('does not count a write refused by the fenced resource as an error code', () => {
    const calls = clean().call({
      client: 'c1',
      op: 'write',
      name: 'a',
      start: 500,
      end: 500,
      timeoutMs: null,
      ok: false,
      token: 3,
      code: 'FENCED',
    }).calls;
    const r = checkHistory(calls);
    expect(r.fencedWrites).toBe(1);
    expect(r.undocumented).toEqual([]);
  });

  it('measures unrelated names during a fault window and reports too low a rate or too long a gap', () => {
    const h = history();
    // `b` served every 100 ms, except between 1000 and 2500; `a` (the faulted name) not at all.
    for (let t = 100; t < 4000; t += 100) if (t < 1000 || t > 2500) h.cycle('c1', 'b', t, t, t + 10);
    h.call({ client: 'c0', op: 'get', name: 'a', start: 900, end: 3900, timeoutMs: 3000, ok: false, code: 'REQUEST_TIMEOUT' });
    const window = { label: 'fault', from: 500, to: 3500, names: ['b'] };
    const ok = checkHistory(h.calls, { windows: [{ ...window, minOkPerSecond: 5, maxGapMs: 2000 }] });
    // 14 gets and 14 unlocks of b started in the window; the gap runs from the unlock ending at 915 to the get ending at 2600.
    expect(ok.windows[0]).toMatchObject({ label: 'fault', started: 28, ok: 28, maxGapMs: 1685 });
    expect(ok.violations).toEqual([]);
    const strict = checkHistory(h.calls, { windows: [{ ...window, minOkPerSecond: 20, maxGapMs: 1000 }] });
    expect(strict.violations.map((v) => v.property)).toEqual(['service', 'service']);
    expect(strict.violations[1]!.detail).toContain('no successful call on b for 1685ms');
  });

  it('reports too small a share of answered calls in a window (a lock-rule refusal counts as an answer)', () => {
    const h = history();
    for (let t = 100; t < 2000; t += 100) h.cycle('c1', 'b', t, t, t + 10);
    h.call({ client: 'c2', op: 'get', name: 'b', start: 150, end: 160, timeoutMs: 3000, ok: false, code: 'LOCKED' });
    h.call({ client: 'c3', op: 'get', name: 'b', start: 250, end: 3250, timeoutMs: 3000, ok: false, code: 'REQUEST_TIMEOUT' });
    const window = { label: 'fault', from: 0, to: 2000, names: 'all' as const };
    // 38 calls of c1, the refusal and the timeout: 39 of 40 answered.
    expect(checkHistory(h.calls, { windows: [{ ...window, minAnsweredShare: 0.97 }] }).violations).toEqual([]);
    const strict = checkHistory(h.calls, { windows: [{ ...window, minAnsweredShare: 0.99 }] });
    expect(strict.violations.map((v) => v.detail)).toEqual(['fault: 39 of 40 calls on all names answered (97.5%), below 99%']);
  });
});
