/**
 * `lockmgr set-lock <names..>`: django-lockmgr's `set_lock` management command over NATS. Same
 * flags, same status report, exit 2 on LockFail; `-k/--no-timeout` works (never expires).
 */
import type { Argv, CommandModule } from 'yargs';
import { LockFail } from '../client/errors';
import type { LockSetResult } from '../client/lock';
import { EXIT, RULE, count, print, printJson, reportError, withClient, withClientOptions, type ClientArgs } from './client-common';
import { numberOption } from './number-option';
import { forTerminal } from './terminal';

interface SetLockArgs extends ClientArgs {
  locks: string[];
  'no-renew': boolean;
  'only-renew': boolean;
  'no-timeout': boolean;
  timeout: number;
  fail: boolean;
  'locked-by'?: string;
  pid?: number;
}

const col = (s: string) => s.padEnd(20);

/** The seed's report, line for line (but for "1 lock"). */
export function printStatusReport(given: number, res: LockSetResult): void {
  print(`Finished creating / renewing ${count(given, 'lock')}.\n`);
  print(`\n${'='.repeat(20)}Status Report${'='.repeat(21)}\n`);
  print('  Per-lock:\n');
  print(`\t\t${col('Name')}${col('Was Locked?')}${col('Now Locked?')}${col('Status')}\n`);
  for (const [name, s] of res.statuses) {
    print(`\t\t${col(forTerminal(name))}${col(s.was_locked ? 'YES' : 'NO')}${col(s.locked ? 'YES' : 'NO')}${col(s.status)}`);
  }
  print(`\n${'='.repeat(56)}\n`);
  print('  Summary:\n');
  print(`    Locks Created:      ${res.counts.created}`);
  print(`    Locks Renewed:      ${res.counts.renewed}`);
  print(`    Renewals Skipped:   ${res.counts.skip_renew}`);
  print(`    Creations Skipped:  ${res.counts.skip_create}`);
  print('');
  print(RULE);
  print('Finished creating / renewing locks.');
  print(RULE);
}

function printLockFail(err: LockFail): void {
  print(`\n${'-'.repeat(75)}\n`);
  print(' [lockmgr set-lock] Caught exception LockFail while creating/setting locks...');
  print(' [lockmgr set-lock] The following existing lock was encountered:\n');
  print(`\t${forTerminal(String(err.lock ?? err.message))}\n`);
  print(
    ' >>> As you have set -e / --fail, this means that any lock creations or updates triggered during this run of set_lock should have been rolled back.',
  );
  print(" >>> If in doubt, run 'lockmgr list-locks' to view all current locks.\n");
  print(' !!! Now exiting with return code 2...\n');
}

export const setLockCommand: CommandModule<object, SetLockArgs> = {
  command: 'set-lock <locks..>',
  describe: 'Add and/or renew locks (django-lockmgr set_lock)',
  builder: (y: Argv) =>
    withClientOptions(
      // -n/--no-renew and -k/--no-timeout are flags of their own, not negations of --renew/--timeout.
      y.parserConfiguration({ 'boolean-negation': false }),
    )
      .positional('locks', { type: 'string', array: true, describe: 'One or more lock names to create/renew' })
      .option('no-renew', { alias: 'n', type: 'boolean', default: false, describe: 'Do not renew any locks which already exist' })
      .option('only-renew', { alias: 'r', type: 'boolean', default: false, describe: 'Only renew existing locks, do not create new ones' })
      .option('no-timeout', {
        alias: 'k',
        type: 'boolean',
        default: false,
        describe: 'Never expire these locks (--timeout is ignored); release them with clear-lock',
      })
      .option(
        ...numberOption('timeout', {
          alias: 't',
          default: 600,
          min: 0,
          unit: 'seconds',
          describe: 'Lock timeout in seconds (0: never expires)',
        }),
      )
      .option('fail', {
        alias: 'e',
        type: 'boolean',
        default: false,
        describe: 'Exit 2 if one or more of the locks already exist, creating/renewing none of them',
      })
      .option('locked-by', { type: 'string', describe: 'Custom "locked_by" (default: this machine\'s hostname)' })
      .option(...numberOption('pid', { alias: 'process-id', integer: true, describe: 'Custom "lock_process" integer (default: none)' }))
      .example('$0 set-lock hello world', 'create (or renew) two locks for 600 s')
      .example('$0 set-lock -e -t 30 a b c', 'all or nothing: exit 2 if any is held') as unknown as Argv<SetLockArgs>,
  handler: (argv) =>
    withClient(argv, 'set-lock', async (client) => {
      const timeout = argv['no-timeout'] || argv.timeout === 0 ? null : argv.timeout;
      try {
        const res = await client.setLock(argv.locks.map(String), {
          timeout,
          fail: argv.fail,
          renew: !argv['no-renew'],
          create: !argv['only-renew'],
          locked_by: argv['locked-by'],
          process_id: argv.pid,
        });
        if (argv.json) printJson(res.toJSON());
        else printStatusReport(argv.locks.length, res);
        return EXIT.OK;
      } catch (err) {
        if (err instanceof LockFail && !argv.json) {
          printLockFail(err);
          return EXIT.LOCKED;
        }
        return reportError(err, argv.json);
      }
    }),
};
