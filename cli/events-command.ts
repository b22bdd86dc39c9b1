/**
 * `lockmgr events`: print lock events, replayed from the daemons' JetStream stream or live.
 *
 *   lockmgr events                          the whole stored history, then exit
 *   lockmgr events --since-seq 120          from stream sequence 120 on, then exit
 *   lockmgr events --since-time 2026-11-26T16:00:00Z --follow   replay, then keep following
 *   lockmgr events --follow --type released --type expired --name 'orders.>'   live only
 *
 * One line per event: time, #event seq, type, lock name, who caused it (locked_by, pid), the
 * fencing token, the expiry of created/renewed locks, the operation, and `stream=N` (the stream
 * sequence, what --since-seq takes) for replayed events. `--json`: the event payload, one per line.
 */
import type { Argv, CommandModule } from 'yargs';
import { EVENT_TYPES, type EventType } from '../shared/events';
import { EventsUnavailable, namePatternProblem, type EventsOptions, type ReceivedLockEvent } from '../client/events';
import { LockClient } from '../client/lock-client';
import { loadConfig } from '../daemon/config';
import { CliError, EXIT, connectNats, reportError, resolveConnection, withClientOptions, type ClientArgs } from './client-common';
import { forTerminal } from './terminal';
import { numberOption } from './number-option';

interface EventsArgs extends ClientArgs {
  follow?: boolean;
  'since-seq'?: number;
  'since-time'?: string;
  type?: string[];
  name?: string[];
  stream?: string;
}

/** The readable one-line form of an event. */
export function formatEvent(e: ReceivedLockEvent): string {
  const by = e.cause.locked_by ?? '-';
  const pid = e.cause.process_id ?? '-';
  let line = `${e.at} #${e.seq} ${e.type.padEnd(8)} ${e.lock.name}  by ${by} pid=${pid} token=${e.lock.token}`;
  if (e.type === 'created' || e.type === 'renewed') line += ` until=${e.lock.locked_until ?? 'never'}`;
  if (e.lock.locked_by !== e.cause.locked_by) line += ` holder=${e.lock.locked_by ?? '-'}`;
  line += ` op=${e.cause.operation}`;
  if (e.streamSeq !== undefined) line += ` stream=${e.streamSeq}`;
  return forTerminal(line);
}

/** The published payload only (not the stream position), fields in their documented order. */
function payload(e: ReceivedLockEvent): object {
  return { id: e.id, type: e.type, seq: e.seq, lock: e.lock, cause: e.cause, daemon: e.daemon, at: e.at };
}

function asList(v: unknown): string[] | undefined {
  if (v === undefined) return undefined;
  return (Array.isArray(v) ? v : [v])
    .flatMap((x) => String(x).split(','))
    .map((x) => x.trim())
    .filter(Boolean);
}

/** The client's message, with the command's way of naming another stream where that is the remedy. */
function unavailable(err: EventsUnavailable): string {
  return err.reason === 'no-jetstream' ? err.message : `${err.message} (--stream NAME, or LOCKMGR_EVENTS_STREAM)`;
}

export const eventsCommand: CommandModule<object, EventsArgs> = {
  command: 'events',
  describe: 'Print lock events: replay the stored history (from a sequence or a time) and/or follow live ones',
  builder: (y: Argv) =>
    withClientOptions(y)
      .option('follow', {
        alias: 'f',
        type: 'boolean',
        describe: 'Keep printing new events (alone: live events only; with --since-*: after the replay)',
      })
      .option(
        ...numberOption('since-seq', {
          integer: true,
          min: 1,
          describe: 'Replay from this stream sequence (the stream= number of the output; 1 = the beginning)',
        }),
      )
      .option('since-time', { type: 'string', describe: 'Replay from the first event stored at or after this time (ISO 8601)' })
      .option('type', {
        type: 'string',
        array: true,
        describe: `Only these event types (repeatable or comma-separated: ${EVENT_TYPES.join(', ')})`,
      })
      .option('name', {
        type: 'string',
        array: true,
        describe: "Only locks matching this name pattern (NATS wildcards: 'orders.*', 'orders.>'; repeatable)",
      })
      .option('stream', {
        type: 'string',
        describe:
          "JetStream stream holding the events: the daemons' eventsStream [env LOCKMGR_EVENTS_STREAM, default LOCKMGR_EVENTS_<prefix>]",
      })
      .conflicts('since-seq', 'since-time')
      .check((argv) => {
        const time = argv['since-time'];
        if (time !== undefined && Number.isNaN(new Date(time).getTime()))
          throw new Error(`--since-time must be an ISO 8601 time, got ${JSON.stringify(time)}`);
        for (const t of asList(argv.type) ?? []) {
          if (!(EVENT_TYPES as readonly string[]).includes(t))
            throw new Error(`--type ${t}: not an event type (${EVENT_TYPES.join(', ')})`);
        }
        for (const n of asList(argv.name) ?? []) {
          const problem = namePatternProblem(n);
          if (problem) throw new Error(`--name ${JSON.stringify(n)}: ${problem}`);
        }
        return true;
      })
      .example('$0 events', 'every stored event, then exit')
      .example('$0 events --since-seq 120 --json', 'from stream sequence 120 on, as JSON lines')
      .example(
        "$0 events --follow --type released --type expired --name 'orders.>'",
        'live releases and expiries of orders.* locks',
      ) as unknown as Argv<EventsArgs>,
  handler: async (argv) => {
    let client: LockClient | undefined;
    let code: number = EXIT.OK;
    let interrupted = false;
    try {
      const conn = resolveConnection(argv);
      // Empty: the prefix's default stream, by the daemons' rule (client.events() applies it).
      const stream = loadConfig({ file: argv.config, flags: { eventsStream: argv.stream } }).config.eventsStream || undefined;
      // Following: reconnect forever, as a daemon does.
      const nc = await connectNats(conn, 'events', { reconnectForever: argv.follow === true });
      client = new LockClient(nc, { prefix: conn.prefix, timeout: conn.timeoutMs }, true);
      const options: EventsOptions = { stream, types: asList(argv.type) as EventType[] | undefined, names: asList(argv.name) };
      const seq = argv['since-seq'];
      const time = argv['since-time'];
      if (seq !== undefined) options.since = { seq };
      else if (time !== undefined) options.since = { time };
      else if (!argv.follow) options.since = { seq: 1 }; // no flags: the whole history
      if (options.since) options.follow = argv.follow ?? false;
      const events = client.events(options);
      const stop = () => {
        interrupted = true;
        void events.close();
      };
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
      try {
        for await (const e of events) {
          process.stdout.write(`${argv.json ? JSON.stringify(payload(e)) : formatEvent(e)}\n`);
        }
      } finally {
        process.off('SIGINT', stop);
        process.off('SIGTERM', stop);
      }
      if (!interrupted && argv.follow && nc.isClosed()) {
        throw new CliError(EXIT.UNAVAILABLE, 'lost the connection to NATS', 'NATS_UNREACHABLE');
      }
    } catch (err) {
      code = reportError(err instanceof EventsUnavailable ? new CliError(EXIT.UNAVAILABLE, unavailable(err), err.code) : err, argv.json);
    }
    await client?.close().catch(() => undefined);
    process.exitCode = code;
  },
};
