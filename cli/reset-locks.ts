/**
 * `lockmgr reset-locks`: django-lockmgr's `reset_locks`. Removes every lock, held or not, after
 * the seed's confirmation (type YES) read from a terminal, unless -f/--force. Anything but YES
 * exits 1; without a terminal to ask on, it refuses (exit 64) instead of reading a piped answer.
 */
import { createInterface } from 'node:readline';
import type { Argv, CommandModule } from 'yargs';
import { EXIT, RULE, count, print, printJson, withClient, withClientOptions, type ClientArgs } from './client-common';
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
      .check((argv) => {
        // A piped or redirected stdin is not someone answering: a script must say -f.
        if (!argv.force && !process.stdin.isTTY) {
          throw new Error(
            'reset-locks asks for YES on a terminal, and stdin is not one: pass -f / --force to remove every lock without asking',
          );
        }
        return true;
      })
      .example('$0 reset-locks', 'asks for YES on the terminal first')
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
          `WARNING: You are about to remove ALL locks on lockmgr subject prefix "${client.prefix}", held or not.\n` +
            "You should only do this if you know what you're doing, and have made sure to stop any running\n" +
            'instances of your application, to ensure no conflicts are caused by removing ALL LOCKS.\n\n',
        );
      }
      if (!json || !argv.force) {
        say(`This would remove ${count(locks.length, 'lock')}${locks.length ? ':' : '.'}`);
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
          if (json) printJson({ aborted: true, removed: 0 });
          else process.stderr.write('lockmgr: aborted, nothing removed (the answer was not YES)\n');
          return EXIT.ERROR;
        }
      }
      if (!json) print('Please wait... Removing all locks regardless of their status or expiration.\n');
      const removed = await client.resetLocks();
      if (json) {
        printJson({ aborted: false, removed, locks: locks.map((l) => l.toJSON()) });
        return EXIT.OK;
      }
      print(`Removed ${count(removed, 'lock')}.\n`);
      print('');
      print(RULE);
      print('Finished clearing locks.');
      print(RULE);
      return EXIT.OK;
    }),
};
