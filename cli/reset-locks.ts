/**
 * `lockmgr reset-locks`: django-lockmgr's `reset_locks`. Removes every lock, held or not, after
 * the seed's confirmation (type YES) read from stdin, unless -f/--force.
 */
import { createInterface } from 'node:readline';
import type { Argv, CommandModule } from 'yargs';
import { EXIT, RULE, print, printJson, withClient, withClientOptions, type ClientArgs } from './client-common';
import { forTerminal } from './terminal';

interface ResetLocksArgs extends ClientArgs {
  force: boolean;
}

/** One line from stdin ('' at end of input), trimmed as Python's input().strip(). */
function readAnswer(): Promise<string> {
  return new Promise((resolve) => {
    const rl = createInterface({ input: process.stdin, terminal: false });
    let answered = false;
    const done = (answer: string) => {
      if (answered) return;
      answered = true;
      rl.close();
      process.stdin.destroy();
      resolve(answer.trim());
    };
    rl.once('line', done);
    rl.once('close', () => done(''));
  });
}

export const resetLocksCommand: CommandModule<object, ResetLocksArgs> = {
  command: 'reset-locks',
  describe: 'Remove ALL locks, held or not, after a YES confirmation (django-lockmgr reset_locks)',
  builder: (y: Argv) =>
    withClientOptions(y)
      .option('force', {
        alias: 'f',
        type: 'boolean',
        default: false,
        describe: 'Do not show the warning / ask if you are sure before deleting ALL locks',
      })
      .example('$0 reset-locks', 'asks for YES on stdin first')
      .example('$0 reset-locks -f', 'no question asked') as unknown as Argv<ResetLocksArgs>,
  handler: (argv) =>
    withClient(argv, 'reset-locks', async (client) => {
      const json = argv.json;
      // Prompts go to stderr with --json, so stdout stays one JSON document.
      const say = json ? (text = '') => process.stderr.write(`${text}\n`) : print;
      await client.cleanLocks();
      const locks = await client.listLocks();
      if (!argv.force) {
        say(
          'WARNING: You are about to clear ALL locks set using Privex LockMgr.\n' +
            "You should only do this if you know what you're doing, and have made sure to stop any running\n" +
            'instances of your application, to ensure no conflicts are caused by removing ALL LOCKS.\n\n',
        );
      }
      if (!json || !argv.force) {
        say(`The following ${locks.length} locks would be removed:`);
        say(RULE);
        for (const l of locks) say(forTerminal(String(l)));
        say(RULE);
      }
      if (argv.force) {
        if (!json) print("Option 'force' (-f / --force) was specified. Skipping confirmation prompt.");
      } else {
        say('Are you SURE you want to clear all locks?');
        (json ? process.stderr : process.stdout).write('Type YES in all capitals if you are sure > ');
        const answer = await readAnswer();
        say(`\n${RULE}`);
        if (answer !== 'YES') {
          if (json) {
            printJson({ aborted: true, removed: 0 });
          } else {
            print("You didn't type YES so we're now returning you back to the terminal.");
            print(RULE);
          }
          return EXIT.OK;
        }
      }
      if (!json) print('Please wait... Removing all locks regardless of their status or expiration.\n');
      const removed = await client.resetLocks();
      if (json) {
        printJson({ aborted: false, removed, locks: locks.map((l) => l.toJSON()) });
        return EXIT.OK;
      }
      print(`A total of ${removed} lock rows were deleted. All locks should now be removed.\n`);
      print('');
      print(RULE);
      print('Finished clearing locks.');
      print(RULE);
      return EXIT.OK;
    }),
};
