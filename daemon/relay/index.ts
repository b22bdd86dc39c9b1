/**
 * The event relay on a NATS connection: its publishers, the `P.relay` nudges between daemons
 * sharing a database, and the connection's status driving the loop's offline mode.
 */
import type { NatsConnection } from 'nats';
import { allEventsSubject } from '../../shared/events';
import { relaySubject } from '../../shared/protocol';
import type { Clock } from '../clock';
import type { Logger } from '../logger';
import type { Store } from '../store/store';
import { CorePublisher, JetStreamPublisher, type StreamOptions } from './publisher';
import { EventRelay } from './relay';

export interface EventRelayConfig extends Omit<StreamOptions, 'timeoutMs' | 'chained'> {
  /** Deliver to JetStream (auto) or to core NATS only (off). */
  jetstream: 'auto' | 'off';
  /** This daemon's id, as its events carry it. */
  daemonId: string;
  /** ms to wait for JetStream's acknowledgements of a round. */
  publishTimeoutMs?: number;
}

export interface RunningRelay {
  relay: EventRelay;
  /** Stop the relay and let go of its subscriptions (not of the connection). */
  stop(): Promise<void>;
}

export async function startEventRelay(
  store: Store,
  nc: NatsConnection,
  config: EventRelayConfig,
  logger: Logger,
  clock?: Clock,
): Promise<RunningRelay> {
  const timeoutMs = config.publishTimeoutMs ?? 5000;
  // One writer publishes everything in seq order, chained; daemons sharing an outbox each publish
  // their own events, and keep each lock's order by having one event per lock in flight.
  const chained = store.soleWriter;
  const stream = config.jetstream === 'off' ? null : new JetStreamPublisher(nc, { ...config, timeoutMs, chained }, logger);
  const relay = new EventRelay(
    store,
    { stream, core: new CorePublisher(nc, config.prefix, timeoutMs) },
    {
      stream: config.stream,
      subjects: allEventsSubject(config.prefix),
      reconcileTimeoutMs: 2 * timeoutMs,
      daemonId: config.daemonId,
    },
    logger,
    clock,
  );
  // Nudges come from daemons of an earlier version writing to the same outbox: none where this one writes alone.
  const nudges = store.soleWriter ? undefined : nc.subscribe(relaySubject(config.prefix), { callback: () => relay.nudged() });
  const status = nc.status();
  void (async () => {
    for await (const s of status) {
      if (s.type === 'disconnect') relay.disconnected();
      else if (s.type === 'reconnect') relay.reconnected();
    }
  })().catch(() => undefined);
  const letGo = () => {
    nudges?.unsubscribe();
    (status as { stop?: () => void }).stop?.();
  };
  try {
    await relay.start();
  } catch (err) {
    await relay.stop();
    letGo();
    throw err;
  }
  return {
    relay,
    stop: async () => {
      await relay.stop();
      letGo();
    },
  };
}
