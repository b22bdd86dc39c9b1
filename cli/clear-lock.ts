/**
 * `lockmgr clear-lock <names..>`: django-lockmgr's `clear_lock`. Releases each named lock,
 * whoever holds it; a name that is not locked is not an error.
 */
import type { Argv, CommandModule } from 'yargs';
import { EXIT, RULE, print, printJson, withClient, withClientOptions, type ClientArgs } from './client-common';
import { forTerminal } from './terminal';

interface ClearLockArgs extends ClientArgs {
  locks: string[];
}

export const clearLockCommand: CommandModule<object, ClearLockArgs> = {
  command: 'clear-lock <locks..>',
  describe: 'Release one or more locks, whoever holds them (django-lockmgr clear_lock)',
  builder: (y: Argv) =>
    withClientOptions(y)
      .positional('locks', { type: 'string', array: true, describe: 'One or more lock names to release' })
      .example('$0 clear-lock hello world test', 'release three locks (missing ones are fine)') as unknown as Argv<ClearLockArgs>,
  handler: (argv) =>
    withClient(argv, 'clear-lock', async (client) => {
      const results: { name: string; unlocked: boolean }[] = [];
      for (const raw of argv.locks) {
        const name = String(raw);
        if (!argv.json) {
          print();
          print(`Releasing lock ${forTerminal(name)} from LockMgr...`);
        }
        results.push({ name, unlocked: await client.unlock(name) });
        if (!argv.json) print(`Lock ${forTerminal(name)} has been removed (if it exists).`);
      }
      if (argv.json) {
        printJson({ locks: results });
      } else {
        print(RULE);
        print('Finished clearing locks.');
        print(RULE);
      }
      return EXIT.OK;
    }),
};
