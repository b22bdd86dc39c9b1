/**
 * `lockmgr list-locks`: django-lockmgr's `list_locks`, long form with lock_process and the
 * fencing token, in name order.
 */
import type { Argv, CommandModule } from 'yargs';
import { EXIT, RULE, count, print, printJson, withClient, withClientOptions, type ClientArgs } from './client-common';
import { forTerminal } from './terminal';

interface ListLocksArgs extends ClientArgs {
  'name-prefix'?: string;
}

export const listLocksCommand: CommandModule<object, ListLocksArgs> = {
  command: 'list-locks',
  describe: 'List all live locks (django-lockmgr list_locks)',
  builder: (y: Argv) =>
    withClientOptions(y)
      .option('name-prefix', { type: 'string', describe: 'Only locks whose name starts with this (e.g. orders.)' })
      .example('$0 list-locks', 'every live lock')
      .example('$0 list-locks --name-prefix orders. --json', 'the orders.* locks, as JSON') as unknown as Argv<ListLocksArgs>,
  handler: (argv) =>
    withClient(argv, 'list-locks', async (client) => {
      const prefix = argv['name-prefix'];
      const locks = await client.listLocks(prefix ? { prefix } : {});
      if (argv.json) {
        printJson({ count: locks.length, locks: locks.map((l) => l.toJSON()) });
        return EXIT.OK;
      }
      const named = prefix ? ` named ${prefix}*` : '';
      print();
      print(`Found ${count(locks.length, 'live lock')}${named} in lockmgr (subject prefix "${client.prefix}")`);
      print(RULE);
      for (const l of locks) print(forTerminal(l.toLongString()));
      print(RULE);
      return EXIT.OK;
    }),
};
