/**
 * `lockmgr ping`: is a daemon serving this prefix, and does it reach its database? Exit 0 if so.
 * Asks `$SRV.PING.lockmgr` (every daemon answers, with its prefix and daemon id) and sends one
 * `is_locked` request, which goes through a daemon's store. `--local` also requires a daemon on
 * this host (the healthcheck of a container running one). No daemon on the prefix: exit 69, with
 * what to check.
 */
import { hostname } from 'node:os';
import { Empty, RequestStrategy } from 'nats';
import type { Argv, CommandModule } from 'yargs';
import { servicePingSubject } from '../shared/protocol';
import { NoDaemon } from '../client/errors';
import { CliError, EXIT, count, print, printJson, withClient, withClientOptions, type ClientArgs } from './client-common';
import { forTerminal } from './terminal';

interface PingArgs extends ClientArgs {
  local: boolean;
}

interface PingInfo {
  type?: string;
  id?: string;
  version?: string;
  metadata?: { prefix?: string; store?: string; daemon?: string };
}

const PROBE_NAME = 'lockmgr.ping';

export const pingCommand: CommandModule<object, PingArgs> = {
  command: 'ping',
  describe: 'Check that a daemon answers on the prefix and reaches its database (exit 0 if so)',
  builder: (y: Argv) =>
    withClientOptions(y)
      .option('local', { type: 'boolean', default: false, describe: 'Also require a daemon running on this host (for healthchecks)' })
      .example('$0 ping', 'exit 0 if some daemon serves the prefix')
      .example('$0 ping --local', 'docker healthcheck: the daemon in this container answers') as unknown as Argv<PingArgs>,
  handler: (argv) =>
    withClient(argv, 'ping', async (client) => {
      const decoder = new TextDecoder();
      const daemons: { service: string; daemon: string; version: string; store: string }[] = [];
      const otherPrefixes = new Set<string>();
      try {
        const replies = await client.nc.requestMany(servicePingSubject(), Empty, {
          maxWait: Math.min(client.timeout, 3000),
          strategy: RequestStrategy.JitterTimer,
          jitter: 300,
        });
        for await (const m of replies) {
          let info: PingInfo;
          try {
            info = JSON.parse(decoder.decode(m.data));
          } catch {
            continue;
          }
          if (info.metadata?.prefix !== client.prefix) {
            if (info.metadata?.prefix) otherPrefixes.add(info.metadata.prefix);
            continue;
          }
          daemons.push({
            service: info.id ?? '?',
            daemon: info.metadata.daemon ?? '?',
            version: info.version ?? '?',
            store: info.metadata.store ?? '?',
          });
        }
      } catch {
        // no responders at all: the probe below reports it as NO_DAEMON
      }
      // One request through a daemon's database (any daemon of the queue group may take it).
      try {
        await client.isLocked(PROBE_NAME);
      } catch (err) {
        if (!(err instanceof NoDaemon)) throw err;
        const others = [...otherPrefixes].sort();
        const shown =
          others
            .slice(0, 5)
            .map((p) => `"${p}"`)
            .join(', ') + (others.length > 5 ? ', …' : '');
        const elsewhere = others.length ? ` (daemons there serve other prefixes: ${shown})` : '';
        throw new CliError(
          EXIT.UNAVAILABLE,
          `no daemon answers on prefix "${client.prefix}" at NATS ${client.nc.getServer()}${elsewhere}: check that a daemon runs ("lockmgr daemon") ` +
            `with this prefix (--prefix / LOCKMGR_PREFIX) on this NATS server (--nats-url / LOCKMGR_NATS_URL), ` +
            `and that the NATS permissions let it subscribe to ${client.prefix}.> and this user publish there`,
          err.code,
        );
      }
      const host = hostname();
      const local = daemons.filter((d) => d.daemon.startsWith(`${host}:`));
      if (argv.local && local.length === 0) {
        throw new CliError(
          EXIT.UNAVAILABLE,
          `no daemon on this host (${host}) answers on prefix "${client.prefix}" (found ${count(daemons.length, 'daemon')} on other hosts)`,
          'NO_LOCAL_DAEMON',
        );
      }
      if (argv.json) {
        printJson({ ok: true, prefix: client.prefix, daemons, local: local.length });
      } else if (daemons.length === 0) {
        // Answered, yet no daemon answered the services ping: this user may not publish to $SRV.
        print(
          `ok: a lock request on prefix "${client.prefix}" was answered, but no daemon answered ${servicePingSubject()} (may this NATS user publish there?)`,
        );
      } else {
        const list = daemons.map((d) => `${d.daemon} v${d.version} ${d.store}`).join(', ');
        print(
          forTerminal(
            `ok: prefix "${client.prefix}" is served by ${count(daemons.length, 'daemon')} (${list}); a lock request was answered`,
          ),
        );
      }
      return EXIT.OK;
    }),
};
