#!/usr/bin/env node
/**
 * The `lockmgr` command line: run the daemon, inspect its configuration, migrate the schema.
 */
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { ConfigError } from '../daemon/config';
import { SERVICE_VERSION } from '../daemon/lock-daemon';
import { CliError, EXIT } from './client-common';
import { daemonCommand, configCommand, migrateCommand } from './daemon-commands';
import { withDaemonOptions } from './options';
import { setLockCommand } from './set-lock';
import { clearLockCommand } from './clear-lock';
import { listLocksCommand } from './list-locks';
import { resetLocksCommand } from './reset-locks';
import { runCommand } from './run';
import { pingCommand } from './ping';
import { eventsCommand } from './events-command';

export function buildCli(args: string[]) {
  return yargs(args)
    .scriptName('lockmgr')
    .usage('$0 <command> [options]')
    .command('daemon', 'Run the lock daemon', (y) => withDaemonOptions(y), daemonCommand)
    .command(
      'config',
      'Print the resolved configuration (secrets masked) and where each value came from',
      (y) => withDaemonOptions(y).option('json', { type: 'boolean', describe: 'JSON output' }),
      configCommand,
    )
    .command('migrate', 'Apply pending schema migrations and exit', (y) => withDaemonOptions(y), migrateCommand)
    .command(setLockCommand)
    .command(clearLockCommand)
    .command(listLocksCommand)
    .command(resetLocksCommand)
    .command(runCommand)
    .command(pingCommand)
    .command(eventsCommand)
    .demandCommand(1, 'Name a command: lockmgr --help lists them.')
    .strict()
    .version(SERVICE_VERSION)
    .help()
    .alias('h', 'help')
    .wrap(Math.min(110, process.stdout.columns ?? 110))
    .fail((msg, err) => {
      // Without a message, the error came from a command handler: the catch below reports it.
      if (msg === null && err) throw err;
      process.stderr.write(`lockmgr: ${msg ?? err?.message}\nRun "lockmgr --help" (or "lockmgr <command> --help") for usage.\n`);
      process.exit(64);
    });
}

/**
 * A reader that stops early (`lockmgr events | head`) closes the pipe: the output is no longer
 * wanted, which is not an error. Exit quietly, as Unix tools do, instead of with a stack trace.
 */
function exitQuietlyOnClosedOutput(): void {
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(0);
    throw err;
  });
}

if (require.main === module) {
  exitQuietlyOnClosedOutput();
  buildCli(hideBin(process.argv))
    .parseAsync()
    .catch((err: Error) => {
      // One line, no stack, unless LOCKMGR_DEBUG is set; errors that know their exit code keep it.
      const known = err instanceof ConfigError || err instanceof CliError;
      const text = process.env.LOCKMGR_DEBUG && !known ? (err.stack ?? String(err)) : (err?.message ?? String(err));
      process.stderr.write(`lockmgr: ${text}\n`);
      process.exit(err instanceof CliError ? err.exitCode : err instanceof ConfigError ? EXIT.CONFIG : EXIT.ERROR);
    });
}
