#!/usr/bin/env node
/**
 * The `lockmgr` command line: run the daemon, inspect its configuration, migrate the schema.
 */
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { ConfigError } from '../daemon/config';
import { SERVICE_VERSION } from '../daemon/lock-daemon';
import { daemonCommand, configCommand, migrateCommand } from './daemon-commands';
import { withDaemonOptions } from './options';

export function buildCli(args: string[]) {
  return yargs(args)
    .scriptName('lockmgr')
    .usage('$0 <command> [options]')
    .command('daemon', 'Run the lock daemon', (y) => withDaemonOptions(y), daemonCommand)
    .command('config', 'Print the resolved configuration (secrets masked) and where each value came from', (y) => withDaemonOptions(y).option('json', { type: 'boolean', describe: 'JSON output' }), configCommand)
    .command('migrate', 'Apply pending schema migrations and exit', (y) => withDaemonOptions(y), migrateCommand)
    .demandCommand(1, 'Name a command: lockmgr --help lists them.')
    .strict()
    .version(SERVICE_VERSION)
    .help()
    .alias('h', 'help')
    .wrap(Math.min(110, process.stdout.columns ?? 110))
    .fail((msg, err) => {
      if (err && !(err instanceof ConfigError)) throw err;
      process.stderr.write(`lockmgr: ${err ? err.message : msg}\nRun "lockmgr --help" (or "lockmgr <command> --help") for usage.\n`);
      process.exit(64);
    });
}

if (require.main === module) {
  buildCli(hideBin(process.argv))
    .parseAsync()
    .catch((err: Error) => {
      process.stderr.write(`lockmgr: ${err instanceof ConfigError ? err.message : err.stack ?? err}\n`);
      process.exit(err instanceof ConfigError ? 78 : 1);
    });
}
