/**
 * Helpers for the event tests: read a JetStream stream with nats.js directly (not through the
 * client under test), record what the daemons write to the outbox with a database trigger (the
 * ground truth a stream is compared with), and check per-lock order.
 */
import { withPg } from '../../bench/lib/pg';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { connect as tcp } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { connect, type NatsConnection } from 'nats';
import { DAEMON_HEADER, type LockEvent } from '../../shared/events';
import type { TestDatabase } from './databases';

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function waitFor(fn: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(25);
  }
}

export interface StoredEvent {
  streamSeq: number;
  subject: string;
  msgId: string | undefined;
  /** The Lockmgr-Daemon header. */
  daemonHeader: string | undefined;
  event: LockEvent;
}

/** Every message of `stream` (optionally from `startSeq`), in stream order. */
export async function readStream(url: string, stream: string, startSeq = 1): Promise<StoredEvent[]> {
  const nc = await connect({ servers: url });
  try {
    return await readStreamWith(nc, stream, startSeq);
  } finally {
    await nc.close();
  }
}

export async function readStreamWith(nc: NatsConnection, stream: string, startSeq = 1): Promise<StoredEvent[]> {
  const jsm = await nc.jetstreamManager();
  const info = await jsm.streams.info(stream);
  const out: StoredEvent[] = [];
  if (info.state.messages === 0 || info.state.last_seq < startSeq) return out;
  const consumer = await nc.jetstream().consumers.get(stream, { opt_start_seq: startSeq });
  const messages = await consumer.consume();
  for await (const m of messages) {
    out.push({
      streamSeq: m.seq,
      subject: m.subject,
      msgId: m.headers?.get('Nats-Msg-Id'),
      daemonHeader: m.headers?.get(DAEMON_HEADER),
      event: JSON.parse(new TextDecoder().decode(m.data)),
    });
    // (Not m.info.pending: servers before 2.10 may report 0 too early.)
    if (m.seq >= info.state.last_seq) break;
  }
  messages.stop();
  await consumer.delete().catch(() => undefined);
  return out;
}

export interface OutboxRecord {
  seq: number;
  event_id: string;
  type: string;
  name: string;
}

/**
 * A copy of every row the daemons insert into the outbox, made by a trigger in the database
 * itself: what the stream must hold once the relay is done, whatever the relay did meanwhile.
 */
export async function recordOutbox(db: TestDatabase): Promise<void> {
  if (db.kind === 'sqlite') {
    const raw = new BetterSqlite3(db.url, { timeout: 5000 });
    try {
      raw.exec(`CREATE TABLE test_outbox_copy (seq INTEGER, event_id TEXT, type TEXT, name TEXT);
        CREATE TRIGGER test_outbox_copy_t AFTER INSERT ON lockmgr_outbox
        BEGIN INSERT INTO test_outbox_copy VALUES (NEW.seq, NEW.event_id, NEW.type, NEW.name); END;`);
    } finally {
      raw.close();
    }
    return;
  }
  await withPg(db.url, async (c) => {
    await c.query(`CREATE TABLE test_outbox_copy (seq BIGINT, event_id TEXT, type TEXT, name TEXT)`);
    await c.query(`CREATE FUNCTION test_outbox_copy_f() RETURNS trigger AS $$
      BEGIN INSERT INTO test_outbox_copy VALUES (NEW.seq, NEW.event_id, NEW.type, NEW.name); RETURN NEW; END $$ LANGUAGE plpgsql`);
    await c.query(`CREATE TRIGGER test_outbox_copy_t AFTER INSERT ON lockmgr_outbox FOR EACH ROW EXECUTE FUNCTION test_outbox_copy_f()`);
  });
}

export async function sqlQuery(db: TestDatabase, sql: string, params: unknown[] = []): Promise<Record<string, unknown>[]> {
  if (db.kind === 'sqlite') {
    const raw = new BetterSqlite3(db.url, { timeout: 5000 });
    try {
      const stmt = raw.prepare(sql);
      if (stmt.reader) return stmt.all(...params) as Record<string, unknown>[];
      stmt.run(...params);
      return [];
    } finally {
      raw.close();
    }
  }
  let i = 0;
  return withPg(
    db.url,
    async (c) =>
      (
        await c.query(
          sql.replace(/\?/g, () => `$${++i}`),
          params,
        )
      ).rows,
  );
}

export async function recordedOutbox(db: TestDatabase): Promise<OutboxRecord[]> {
  const rows = await sqlQuery(db, 'SELECT seq, event_id, type, name FROM test_outbox_copy ORDER BY seq');
  return rows.map((r) => ({ seq: Number(r.seq), event_id: String(r.event_id), type: String(r.type), name: String(r.name) }));
}

export async function outboxCount(db: TestDatabase): Promise<number> {
  const [row] = await sqlQuery(db, 'SELECT COUNT(*) AS n FROM lockmgr_outbox');
  return Number(row?.n ?? 0);
}

/**
 * Problems with a stream compared with the outbox records: events missing, events twice, events
 * that were never recorded, and locks whose events are out of order. Empty when all is well.
 */
export function compareWithOutbox(stored: StoredEvent[], recorded: OutboxRecord[]): string[] {
  const problems: string[] = [];
  const count = new Map<string, number>();
  for (const s of stored) count.set(s.event.id, (count.get(s.event.id) ?? 0) + 1);
  const recordedIds = new Set(recorded.map((r) => r.event_id));
  for (const r of recorded)
    if (!count.has(r.event_id)) problems.push(`missing from the stream: #${r.seq} ${r.type} ${r.name} (${r.event_id})`);
  for (const [id, n] of count) if (n > 1) problems.push(`in the stream ${n} times: ${id}`);
  for (const s of stored) if (!recordedIds.has(s.event.id)) problems.push(`in the stream but never recorded: ${s.event.id}`);
  for (const s of stored) {
    if (s.msgId !== s.event.id) problems.push(`stream seq ${s.streamSeq}: Nats-Msg-Id ${s.msgId} is not the event id ${s.event.id}`);
  }
  problems.push(...perLockOrderProblems(stored.map((s) => s.event)));
  return problems;
}

/** Locks whose events are not in increasing `seq` order in the given (stream) order. */
export function perLockOrderProblems(events: LockEvent[]): string[] {
  const last = new Map<string, number>();
  const problems: string[] = [];
  for (const e of events) {
    const prev = last.get(e.lock.name);
    if (prev !== undefined && e.seq <= prev) problems.push(`${e.lock.name}: event #${e.seq} (${e.type}) after #${prev}`);
    last.set(e.lock.name, e.seq);
  }
  return problems;
}

/**
 * Lifecycle problems per lock, in stream order: a lock is created while free; renewed, released,
 * expired or reset only while held, and with the holder's token; tokens grow with every grant.
 */
export function lifecycleProblems(events: LockEvent[]): string[] {
  const held = new Map<string, number>();
  const lastToken = new Map<string, number>();
  const problems: string[] = [];
  for (const e of events) {
    const name = e.lock.name;
    const current = held.get(name);
    if (e.type === 'created') {
      if (current !== undefined) problems.push(`${name}: created (token ${e.lock.token}) while held by token ${current} (#${e.seq})`);
      if ((lastToken.get(name) ?? 0) >= e.lock.token) problems.push(`${name}: token ${e.lock.token} does not grow (#${e.seq})`);
      held.set(name, e.lock.token);
      lastToken.set(name, e.lock.token);
    } else if (current === undefined || current !== e.lock.token) {
      problems.push(
        `${name}: ${e.type} of token ${e.lock.token} while ${current === undefined ? 'free' : `held by token ${current}`} (#${e.seq})`,
      );
    } else if (e.type !== 'renewed') {
      held.delete(name);
    }
  }
  return problems;
}

/** A nats-server on a given port, with or without JetStream (to swap servers under a daemon). */
export async function startNatsOnPort(
  port: number,
  opts: { jetstream: boolean; storeDir?: string },
): Promise<{ stop(signal?: NodeJS.Signals): Promise<void> }> {
  const args = ['-a', '127.0.0.1', '-p', String(port)];
  if (opts.jetstream) args.push('-js', '-sd', opts.storeDir ?? mkdtempSync(join(tmpdir(), 'lockmgr-nats-')));
  const child: ChildProcess = spawn('nats-server', args, { stdio: 'ignore' });
  await waitFor(
    () =>
      new Promise<boolean>((resolve) => {
        const s = tcp(port, '127.0.0.1', () => {
          s.destroy();
          resolve(true);
        });
        s.on('error', () => resolve(false));
      }),
    10_000,
    `nats-server on ${port}`,
  );
  return {
    stop: async (signal: NodeJS.Signals = 'SIGTERM') => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill(signal);
      await exited;
    },
  };
}
