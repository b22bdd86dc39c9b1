/**
 * A worked auditor: replays the events stream from its first event, rebuilds the current lock
 * table from the events alone, and compares it with what the daemons list (`listLocks()`).
 * Prints what it found and every difference; exits 0 when there is none, 1 otherwise.
 *
 *   npm run build && npm run audit-example
 *
 * Environment: LOCKMGR_NATS_URL (default nats://127.0.0.1:4222), LOCKMGR_PREFIX (default lock),
 * LOCKMGR_EVENTS_STREAM (default LOCKMGR_EVENTS_<prefix>, as for the daemons).
 *
 * The rules it checks, per lock, in stream order:
 *   created   the name was free; its token is larger than any earlier grant's
 *   renewed   the name was held, by that token; the lock is replaced by the event's
 *   released, expired, reset   the name was held, by that token; it is free afterwards
 */
import { eventsStreamName, LockClient, type LockEvent, type LockRecord } from '../client/index';

const FIELDS = ['locked_by', 'lock_process', 'locked_until', 'created_at', 'updated_at', 'token'] as const;

/** The lock table as the events describe it. */
class EventTable {
  readonly locks = new Map<string, LockRecord>();
  readonly anomalies: string[] = [];
  private readonly lastToken = new Map<string, number>();
  private readonly lastSeq = new Map<string, number>();
  events = 0;
  /** The stream sequence of the last event applied. */
  streamSeq = 0;

  apply(e: LockEvent, streamSeq: number): void {
    this.events += 1;
    this.streamSeq = streamSeq;
    const name = e.lock.name;
    const held = this.locks.get(name);
    const prevSeq = this.lastSeq.get(name);
    if (prevSeq !== undefined && e.seq <= prevSeq) this.anomalies.push(`${name}: event #${e.seq} (${e.type}) arrived after #${prevSeq}`);
    this.lastSeq.set(name, e.seq);
    switch (e.type) {
      case 'created':
        if (held) this.anomalies.push(`${name}: created with token ${e.lock.token} while token ${held.token} still held it (#${e.seq})`);
        if ((this.lastToken.get(name) ?? 0) >= e.lock.token)
          this.anomalies.push(`${name}: token ${e.lock.token} is not larger than an earlier grant's (#${e.seq})`);
        this.lastToken.set(name, e.lock.token);
        this.locks.set(name, e.lock);
        break;
      case 'renewed':
        if (!held || held.token !== e.lock.token)
          this.anomalies.push(`${name}: renewed token ${e.lock.token} but ${held ? `token ${held.token}` : 'nobody'} held it (#${e.seq})`);
        this.locks.set(name, e.lock);
        break;
      default: // released, expired, reset
        if (!held || held.token !== e.lock.token)
          this.anomalies.push(
            `${name}: ${e.type} token ${e.lock.token} but ${held ? `token ${held.token}` : 'nobody'} held it (#${e.seq})`,
          );
        this.locks.delete(name);
    }
  }
}

/** Differences between the rebuilt table and the listed locks, ignoring locks about to expire. */
function differences(table: EventTable, listed: LockRecord[], now: number): string[] {
  const out: string[] = [];
  // A lock whose time has passed is not listed any more, and its `expired` event comes with the
  // next sweep (within a second): not a difference yet.
  const expiring = (l: LockRecord) => l.locked_until !== null && Date.parse(l.locked_until) <= now + 1000;
  const byName = new Map(listed.map((l) => [l.name, l]));
  for (const [name, rebuilt] of table.locks) {
    const live = byName.get(name);
    if (!live) {
      if (!expiring(rebuilt)) out.push(`${name}: held according to the events (token ${rebuilt.token}), but not listed by the daemon`);
      continue;
    }
    for (const f of FIELDS) {
      if (live[f] !== rebuilt[f])
        out.push(`${name}: ${f} is ${JSON.stringify(live[f])} in the daemon, ${JSON.stringify(rebuilt[f])} according to the events`);
    }
  }
  for (const live of listed) {
    if (!table.locks.has(live.name)) out.push(`${live.name}: listed by the daemon (token ${live.token}), but no event created it`);
  }
  return out;
}

async function main(): Promise<number> {
  const client = await LockClient.connect({
    servers: process.env.LOCKMGR_NATS_URL || 'nats://127.0.0.1:4222',
    prefix: process.env.LOCKMGR_PREFIX || undefined,
  });
  const stream = eventsStreamName(client.prefix, process.env.LOCKMGR_EVENTS_STREAM);
  try {
    const table = new EventTable();
    // 1. The whole history, from the first event stored to the last one stored now.
    for await (const e of client.events({ since: { seq: 1 }, stream })) table.apply(e, e.streamSeq!);
    console.log(`replayed ${table.events} events from stream ${stream} (up to stream sequence ${table.streamSeq})`);

    // 2. Compare with the daemons' view. Changes keep happening while we look, so a difference
    //    counts only if it is still there after catching up with the stream and listing again.
    let diffs: string[] = [];
    let listed: LockRecord[] = [];
    for (let round = 0; round < 5; round++) {
      if (round > 0) await new Promise((r) => setTimeout(r, 500));
      listed = (await client.listLocks()).map((l) => l.toJSON());
      const now = Date.now();
      await new Promise((r) => setTimeout(r, 100)); // events committed before the list are relayed by now
      for await (const e of client.events({ since: { seq: table.streamSeq + 1 }, stream })) table.apply(e, e.streamSeq!);
      diffs = differences(table, listed, now);
      if (diffs.length === 0) break;
    }

    console.log(`the events say ${table.locks.size} locks are held; the daemon lists ${listed.length}`);
    for (const a of table.anomalies) console.log(`anomaly: ${a}`);
    for (const d of diffs) console.log(`difference: ${d}`);
    if (diffs.length === 0 && table.anomalies.length === 0) {
      console.log('no differences: the stream accounts for every lock the daemon holds');
      return 0;
    }
    console.log(`${diffs.length} differences, ${table.anomalies.length} anomalies`);
    return 1;
  } finally {
    await client.close();
  }
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(`auditor failed: ${(err as Error).message}`);
    process.exit(2);
  },
);
