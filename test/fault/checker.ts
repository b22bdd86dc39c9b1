/**
 * The fault-history checker: a pure function over what the clients recorded (every call, its
 * timing and outcome, and the writes to the fenced resource) and what the database held at the
 * end. It reports, with details: overlapping holds of a name, fencing tokens out of order or
 * repeated, acknowledged grants that were lost, calls that outlived their timeout, error codes
 * nobody documented, and how well names unrelated to a fault were served during it.
 *
 * All times are milliseconds on one monotonic timeline (performance.now() in the tests); lock
 * expiries are converted to it when recorded.
 */
import { ErrorCode } from '../../shared/protocol';

/**
 * Every error code a call may fail with, in one place: the wire codes of shared/protocol.ts, the
 * client's own (NO_DAEMON, REQUEST_TIMEOUT), and those being added (AUTHORITY_CONFLICT: a daemon
 * refusing a prefix another database serves; REPLY_TOO_LARGE; OUTCOME_UNKNOWN: a request that may
 * or may not have been done).
 */
export const DOCUMENTED_CODES: readonly string[] = [
  ...Object.values(ErrorCode),
  'NO_DAEMON',
  'REQUEST_TIMEOUT',
  'AUTHORITY_CONFLICT',
  'REPLY_TOO_LARGE',
  'OUTCOME_UNKNOWN',
  // The client's, for NATS itself: away when the call's time ran out, closed, refusing; and a
  // call its caller cancelled.
  'NATS_UNAVAILABLE',
  'CONNECTION_CLOSED',
  'PERMISSION_DENIED',
  'NATS_ERROR',
  'CANCELLED',
];

/**
 * Codes after which a request may have been done or not: an unlock with one proves nothing.
 * (NATS_UNAVAILABLE: a copy may have gone out before NATS went away.)
 */
export const UNKNOWN_OUTCOME_CODES: readonly string[] = ['REQUEST_TIMEOUT', 'OUTCOME_UNKNOWN', 'NATS_UNAVAILABLE', 'CANCELLED'];

/** Answers from a daemon that served the request (a refusal by the lock rules is service too). */
export const ANSWER_CODES: readonly string[] = ['LOCKED', 'NOT_OWNER', 'LOCK_NOT_FOUND'];

/** The code the fenced resource records for a write it refused (not a daemon error). */
export const FENCED = 'FENCED';

export type CallOp = 'get' | 'unlock' | 'write';

/** One call as a client saw it. */
export interface CallRecord {
  id: number;
  client: string;
  op: CallOp;
  name: string;
  start: number;
  end: number;
  /** The call's budget (client timeout + wait); null for local operations (writes). */
  timeoutMs: number | null;
  ok: boolean;
  /** get: the granted token; unlock and write: the token they were made with. */
  token?: number;
  /** get: when the grant expires (same timeline); null: never. */
  lockedUntil?: number | null;
  /** unlock: the daemon's `unlocked`. */
  unlocked?: boolean;
  /** A failure's code (a write refused by the resource: FENCED). */
  code?: string;
  message?: string;
}

/** The locks the database held at the end, read at `at`. */
export interface FinalState {
  at: number;
  locks: readonly { name: string; token: number; lockedUntil: number | null }[];
}

/** A fault window during which names unrelated to the fault should still be served. */
export interface ServiceWindow {
  label: string;
  from: number;
  to: number;
  /** The names measured: 'all', or a list. */
  names: 'all' | readonly string[];
  /** Requirements; leave out to only measure. */
  minOkPerSecond?: number;
  maxGapMs?: number;
  /** Share of the calls started in the window that got an answer (a success or a lock-rule refusal). */
  minAnsweredShare?: number;
}

export interface CheckOptions {
  /** Clock difference tolerated between the database's clock and the clients' (and rounding). */
  skewMs?: number;
  /** How far past its budget a call may end (event loop and scheduling delays). */
  overTimeMarginMs?: number;
  documentedCodes?: readonly string[];
  final?: FinalState;
  windows?: readonly ServiceWindow[];
}

export interface Hold {
  name: string;
  client: string;
  token: number;
  grantId: number;
  from: number;
  to: number;
}

export interface Overlap {
  name: string;
  first: Hold;
  second: Hold;
  overlapMs: number;
}

export interface TokenProblem {
  kind: 'repeated' | 'order';
  name: string;
  token: number;
  detail: string;
}

export interface LostGrant {
  grantId: number;
  name: string;
  token: number;
  client: string;
  detail: string;
}

export interface OverTimeCall {
  id: number;
  op: CallOp;
  name: string;
  client: string;
  tookMs: number;
  timeoutMs: number;
  outcome: string;
}

export interface WindowStats {
  label: string;
  seconds: number;
  names: 'all' | readonly string[];
  /** Daemon calls on those names that started in the window. */
  started: number;
  /** ...and ended with success / with an answer (success or a lock-rule refusal). */
  ok: number;
  answered: number;
  failuresByCode: Record<string, number>;
  /** Successful calls ending in the window, per second. */
  okPerSecond: number;
  /** Longest time in the window without a successful call ending. */
  maxGapMs: number;
}

export type Property = 'overlap' | 'token' | 'lost' | 'over-time' | 'undocumented-code' | 'service';

export interface Violation {
  property: Property;
  detail: string;
}

export interface CheckReport {
  calls: number;
  byOp: Record<CallOp, { calls: number; ok: number }>;
  /** Failed daemon calls by code (writes not included). */
  failuresByCode: Record<string, number>;
  fencedWrites: number;
  holds: number;
  overlaps: Overlap[];
  tokenProblems: TokenProblem[];
  lost: LostGrant[];
  /** Acknowledged grants whose fate cannot be told (an unlock of unknown outcome while it was live). */
  undetermined: number;
  /** Acknowledged grants still live at the end and found in the final state (the end check was not vacuous). */
  verifiedAtEnd: number;
  overTime: OverTimeCall[];
  undocumented: { id: number; op: CallOp; code: string; message?: string }[];
  windows: WindowStats[];
  violations: Violation[];
}

/** Milliseconds for a message: tenths below 10 ms, where rounding would say "0ms" of a real overlap. */
const fmt = (ms: number) => `${Math.abs(ms) < 10 ? ms.toFixed(1) : Math.round(ms)}ms`;

function count(map: Record<string, number>, key: string): void {
  map[key] = (map[key] ?? 0) + 1;
}

/** The unlock a client sent for a grant: its next unlock of that name with that token. */
function unlocksByGrant(calls: readonly CallRecord[]): Map<number, CallRecord> {
  const byKey = new Map<string, CallRecord[]>();
  for (const c of calls) {
    if (c.op !== 'unlock' || c.token === undefined) continue;
    const key = `${c.client}\u0000${c.name}\u0000${c.token}`;
    const list = byKey.get(key) ?? [];
    list.push(c);
    byKey.set(key, list);
  }
  const out = new Map<number, CallRecord>();
  for (const g of calls) {
    if (g.op !== 'get' || !g.ok || g.token === undefined) continue;
    const list = byKey.get(`${g.client}\u0000${g.name}\u0000${g.token}`);
    const u = list?.filter((c) => c.start >= g.end).sort((a, b) => a.start - b.start)[0];
    if (u) out.set(g.id, u);
  }
  return out;
}

/**
 * Holds as the client is entitled to them, conservatively: from the grant's reply until the
 * client sends its unlock or the grant expires (less the tolerated skew). Not until the unlock's
 * reply: the daemon may grant the name to the next client before that reply arrives.
 */
function holdsOf(grants: readonly CallRecord[], unlocks: Map<number, CallRecord>, skewMs: number): Hold[] {
  const holds: Hold[] = [];
  for (const g of grants) {
    const expiry = g.lockedUntil === null || g.lockedUntil === undefined ? Infinity : g.lockedUntil - skewMs;
    const u = unlocks.get(g.id);
    const to = Math.min(expiry, u ? u.start : Infinity);
    if (to > g.end) holds.push({ name: g.name, client: g.client, token: g.token!, grantId: g.id, from: g.end, to });
  }
  return holds;
}

function findOverlaps(holds: readonly Hold[]): Overlap[] {
  const byName = new Map<string, Hold[]>();
  for (const h of holds) byName.set(h.name, [...(byName.get(h.name) ?? []), h]);
  const out: Overlap[] = [];
  for (const [name, list] of byName) {
    list.sort((a, b) => a.from - b.from);
    // The hold reaching furthest so far: every later hold starting before its end overlaps it.
    let reach: Hold | undefined;
    for (const h of list) {
      if (reach && h.from < reach.to) out.push({ name, first: reach, second: h, overlapMs: Math.min(reach.to, h.to) - h.from });
      if (!reach || h.to > reach.to) reach = h;
    }
  }
  return out;
}

/**
 * Tokens: never repeated across the run; per name, a grant acknowledged before another grant's
 * request was sent (real-time order, so both commit orders are known) carries a smaller token.
 */
function findTokenProblems(grants: readonly CallRecord[]): TokenProblem[] {
  const out: TokenProblem[] = [];
  const byToken = new Map<number, CallRecord>();
  for (const g of grants) {
    const prev = byToken.get(g.token!);
    if (prev) {
      out.push({
        kind: 'repeated',
        name: g.name,
        token: g.token!,
        detail: `token ${g.token} granted twice: ${prev.name} to ${prev.client} (call #${prev.id}) and ${g.name} to ${g.client} (call #${g.id})`,
      });
    } else byToken.set(g.token!, g);
  }
  const byName = new Map<string, CallRecord[]>();
  for (const g of grants) byName.set(g.name, [...(byName.get(g.name) ?? []), g]);
  for (const [name, list] of byName) {
    const byEnd = [...list].sort((a, b) => a.end - b.end);
    const byStart = [...list].sort((a, b) => a.start - b.start);
    let i = 0;
    let max: CallRecord | undefined;
    for (const g of byStart) {
      while (i < byEnd.length && byEnd[i]!.end < g.start) {
        const e = byEnd[i++]!;
        if (!max || e.token! > max.token!) max = e;
      }
      if (max && g.token! <= max.token!) {
        out.push({
          kind: 'order',
          name,
          token: g.token!,
          detail: `${name}: token ${g.token} (call #${g.id}, ${g.client}) requested after token ${max.token} (call #${max.id}, ${max.client}) was granted`,
        });
      }
    }
  }
  return out;
}

/**
 * Acknowledged grants that vanished: released by nobody's acknowledged unlock, not expired, yet
 * absent at the end (or replaced); or an unlock of the grant answered "nothing to unlock" /
 * NOT_OWNER while the grant still had time left (from the history alone, a lost grant and a
 * wrong answer about it look the same: both break what the client was told).
 */
function findLost(
  grants: readonly CallRecord[],
  unlocks: Map<number, CallRecord>,
  final: FinalState | undefined,
  skewMs: number,
): { lost: LostGrant[]; undetermined: number; verifiedAtEnd: number } {
  const lost: LostGrant[] = [];
  let undetermined = 0;
  let verifiedAtEnd = 0;
  const atEnd = new Map<string, { token: number; lockedUntil: number | null }>();
  for (const l of final?.locks ?? []) atEnd.set(l.name, l);
  for (const g of grants) {
    const until = g.lockedUntil ?? Infinity;
    const base = { grantId: g.id, name: g.name, token: g.token!, client: g.client };
    const u = unlocks.get(g.id);
    if (u && u.ok && u.unlocked === true) continue;
    if (u && u.end < until - skewMs) {
      if (u.ok && u.unlocked === false) {
        lost.push({
          ...base,
          detail: `unlock (call #${u.id}) answered "nothing to unlock" with ${fmt(until - u.end)} of the grant left (the grant was lost, or the answer is wrong)`,
        });
        continue;
      }
      if (!u.ok && u.code === 'NOT_OWNER') {
        lost.push({ ...base, detail: `unlock (call #${u.id}) answered NOT_OWNER with ${fmt(until - u.end)} of the grant left` });
        continue;
      }
      // Maybe done, maybe not: the grant may be gone for a good reason.
      if (!u.ok && UNKNOWN_OUTCOME_CODES.includes(u.code ?? '')) {
        undetermined++;
        continue;
      }
    }
    if (!final || until <= final.at + skewMs) continue; // expired by the end (or not checked)
    const row = atEnd.get(g.name);
    if (!row) lost.push({ ...base, detail: `absent at the end with ${fmt(until - final.at)} of the grant left` });
    else if (row.token !== g.token)
      lost.push({ ...base, detail: `replaced by token ${row.token} with ${fmt(until - final.at)} of the grant left` });
    else verifiedAtEnd++;
  }
  return { lost, undetermined, verifiedAtEnd };
}

function windowStats(calls: readonly CallRecord[], w: ServiceWindow): WindowStats {
  const on = (c: CallRecord) => c.op !== 'write' && (w.names === 'all' || w.names.includes(c.name));
  const started = calls.filter((c) => on(c) && c.start >= w.from && c.start < w.to);
  const failuresByCode: Record<string, number> = {};
  for (const c of started) if (!c.ok) count(failuresByCode, c.code ?? '?');
  const okEnds = calls
    .filter((c) => on(c) && c.ok && c.end >= w.from && c.end <= w.to)
    .map((c) => c.end)
    .sort((a, b) => a - b);
  let maxGapMs = 0;
  let last = w.from;
  for (const e of [...okEnds, w.to]) {
    maxGapMs = Math.max(maxGapMs, e - last);
    last = e;
  }
  const seconds = Math.max(0.001, (w.to - w.from) / 1000);
  return {
    label: w.label,
    seconds,
    names: w.names,
    started: started.length,
    ok: started.filter((c) => c.ok).length,
    answered: started.filter((c) => c.ok || ANSWER_CODES.includes(c.code ?? '')).length,
    failuresByCode,
    okPerSecond: okEnds.length / seconds,
    maxGapMs,
  };
}

export function checkHistory(calls: readonly CallRecord[], options: CheckOptions = {}): CheckReport {
  const skewMs = options.skewMs ?? 50;
  const margin = options.overTimeMarginMs ?? 300;
  const documented = options.documentedCodes ?? DOCUMENTED_CODES;

  const byOp: CheckReport['byOp'] = { get: { calls: 0, ok: 0 }, unlock: { calls: 0, ok: 0 }, write: { calls: 0, ok: 0 } };
  const failuresByCode: Record<string, number> = {};
  let fencedWrites = 0;
  for (const c of calls) {
    byOp[c.op].calls++;
    if (c.ok) byOp[c.op].ok++;
    else if (c.op === 'write') fencedWrites++;
    else count(failuresByCode, c.code ?? '?');
  }

  const grants = calls.filter((c) => c.op === 'get' && c.ok && c.token !== undefined);
  const unlocks = unlocksByGrant(calls);
  const holds = holdsOf(grants, unlocks, skewMs);
  const overlaps = findOverlaps(holds);
  const tokenProblems = findTokenProblems(grants);
  const { lost, undetermined, verifiedAtEnd } = findLost(grants, unlocks, options.final, skewMs);

  const overTime: OverTimeCall[] = [];
  for (const c of calls) {
    if (c.timeoutMs === null || c.end - c.start <= c.timeoutMs + margin) continue;
    overTime.push({
      id: c.id,
      op: c.op,
      name: c.name,
      client: c.client,
      tookMs: c.end - c.start,
      timeoutMs: c.timeoutMs,
      outcome: c.ok ? 'ok' : (c.code ?? '?'),
    });
  }
  const undocumented = calls
    .filter((c) => !c.ok && c.op !== 'write' && !documented.includes(c.code ?? ''))
    .map((c) => ({ id: c.id, op: c.op, code: c.code ?? '(none)', message: c.message }));
  const windows = (options.windows ?? []).map((w) => windowStats(calls, w));

  const violations: Violation[] = [];
  for (const o of overlaps) {
    violations.push({
      property: 'overlap',
      detail: `${o.name}: token ${o.first.token} (${o.first.client}, ${fmt(o.first.from)}-${fmt(o.first.to)}) and token ${o.second.token} (${o.second.client}, ${fmt(o.second.from)}-${fmt(o.second.to)}) held together for ${fmt(o.overlapMs)}`,
    });
  }
  for (const t of tokenProblems) violations.push({ property: 'token', detail: t.detail });
  for (const l of lost)
    violations.push({ property: 'lost', detail: `${l.name} token ${l.token} (${l.client}, call #${l.grantId}): ${l.detail}` });
  for (const o of overTime) {
    violations.push({
      property: 'over-time',
      detail: `call #${o.id} ${o.op} ${o.name} (${o.client}) took ${fmt(o.tookMs)} with a budget of ${fmt(o.timeoutMs)}: ${o.outcome}`,
    });
  }
  for (const u of undocumented) {
    violations.push({ property: 'undocumented-code', detail: `call #${u.id} ${u.op} failed with ${u.code}: ${u.message ?? ''}`.trim() });
  }
  (options.windows ?? []).forEach((w, i) => {
    const s = windows[i]!;
    if (w.minOkPerSecond !== undefined && s.okPerSecond < w.minOkPerSecond) {
      violations.push({
        property: 'service',
        detail: `${w.label}: ${s.okPerSecond.toFixed(1)} successful calls/s on ${describeNames(w.names)}, below ${w.minOkPerSecond}/s`,
      });
    }
    if (w.minAnsweredShare !== undefined && s.started > 0 && s.answered / s.started < w.minAnsweredShare) {
      violations.push({
        property: 'service',
        detail: `${w.label}: ${s.answered} of ${s.started} calls on ${describeNames(w.names)} answered (${((100 * s.answered) / s.started).toFixed(1)}%), below ${100 * w.minAnsweredShare}%`,
      });
    }
    if (w.maxGapMs !== undefined && s.maxGapMs > w.maxGapMs) {
      violations.push({
        property: 'service',
        detail: `${w.label}: no successful call on ${describeNames(w.names)} for ${fmt(s.maxGapMs)} (at most ${fmt(w.maxGapMs)})`,
      });
    }
  });

  return {
    calls: calls.length,
    byOp,
    failuresByCode,
    fencedWrites,
    holds: holds.length,
    overlaps,
    tokenProblems,
    lost,
    undetermined,
    verifiedAtEnd,
    overTime,
    undocumented,
    windows,
    violations,
  };
}

function describeNames(names: 'all' | readonly string[]): string {
  return names === 'all' ? 'all names' : names.join(', ');
}
