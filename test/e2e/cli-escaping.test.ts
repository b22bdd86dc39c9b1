/**
 * Lock fields come from whoever took the lock: the commands' human output shows their control
 * characters escaped (a holder cannot recolour the operator's terminal or forge a line of output),
 * while --json keeps them exact. The built binary against a real daemon and nats-server.
 */
import { runCli } from '../helpers/cli';
import { STORES, type StoreKind } from '../helpers/databases';
import { startStack, type Stack } from '../helpers/stack';

// ESC [ 31 m (red), a newline that would forge a line, C1 CSI "clear screen", DEL.
const HOLDER = 'evil\x1b[31mred\nlockmgr: all clear\u009b2J\x7f';
const HOLDER_SHOWN = 'evil\\x1b[31mred\\nlockmgr: all clear\\x9b2J\\x7f';
// A lock name may hold C1 characters (not C0 ones: the protocol refuses those).
const NAME = 'esc.\u009b31m';
const NAME_SHOWN = 'esc.\\x9b31m';
// eslint-disable-next-line no-control-regex -- what must not reach the terminal (newlines and tabs are the layout's own)
const RAW_CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/;

describe.each(STORES)('human output escapes control characters in lock fields (%s)', (store: StoreKind) => {
  let stack: Stack;
  let conn: string[];
  const cli = (args: string[]) => runCli([...args, ...conn]);

  beforeAll(async () => {
    stack = await startStack({ store });
    conn = ['--nats-url', stack.nats.url, '--prefix', stack.prefix];
  });
  afterAll(async () => {
    await stack?.stop();
  });

  it('list-locks, set-lock, clear-lock, reset-locks, run and events; --json exact', async () => {
    await stack.client.setLock(NAME, 'esc.plain', { locked_by: HOLDER, timeout: 600 });

    const list = await cli(['list-locks']);
    expect(list.code).toBe(0);
    expect(list.stdout).not.toMatch(RAW_CONTROL);
    const line = list.stdout.split('\n').find((l) => l.startsWith(`<Lock name='${NAME_SHOWN}'`));
    expect(line).toMatch(
      new RegExp(
        `^<Lock name='${escapeRe(NAME_SHOWN)}' locked_by='${escapeRe(HOLDER_SHOWN)}' lock_process='None' token='\\d+' locked_until='`,
      ),
    );
    expect(list.stdout.split('\n').filter((l) => l.startsWith('lockmgr: all clear'))).toEqual([]);

    const json = JSON.parse((await cli(['list-locks', '--json'])).stdout) as { locks: { name: string; locked_by: string }[] };
    expect(json.locks.map((l) => [l.name, l.locked_by])).toEqual([
      ['esc.plain', HOLDER],
      [NAME, HOLDER],
    ]);

    // set-lock -e meets the held lock: its report names the holder.
    const fail = await cli(['set-lock', '-e', NAME]);
    expect(fail.code).toBe(2);
    expect(fail.stdout).not.toMatch(RAW_CONTROL);
    expect(fail.stdout).toContain(`<Lock name='${NAME_SHOWN}' locked_by='${HOLDER_SHOWN}'`);
    const failJson = JSON.parse((await cli(['set-lock', '-e', NAME, '--json'])).stdout);
    expect(failJson.error.lock.locked_by).toBe(HOLDER);

    const set = await cli(['set-lock', '--locked-by', HOLDER, NAME, 'esc.other']);
    expect(set.code).toBe(0);
    expect(set.stdout).not.toMatch(RAW_CONTROL);
    expect(set.stdout).toContain(`\t\t${NAME_SHOWN.padEnd(20)}YES`);

    const run = await runCli(['run', ...conn, NAME, '--', 'true']);
    expect(run.code).toBe(2);
    expect(run.stderr).not.toMatch(RAW_CONTROL);
    expect(run.stderr).toContain(`lockmgr: lock "${NAME_SHOWN}" is held by ${HOLDER_SHOWN} until `);

    const events = await cli(['events', '--stream', `EV_${stack.prefix}`]);
    expect(events.code).toBe(0);
    expect(events.stdout).not.toMatch(RAW_CONTROL);
    expect(events.stdout).toMatch(new RegExp(`created  ${escapeRe(NAME_SHOWN)}  by ${escapeRe(HOLDER_SHOWN)} pid=`));
    const eventsJson = (await cli(['events', '--stream', `EV_${stack.prefix}`, '--json'])).stdout.trim().split('\n');
    expect(JSON.parse(eventsJson[0]!).cause.locked_by).toBe(HOLDER);

    // At a terminal, answered "no": the locks it would remove are listed, then nothing is (exit 1).
    const reset = await runCli(['reset-locks', ...conn], { input: 'no\n', terminal: true });
    expect(reset.code).toBe(1);
    expect(reset.stdout).not.toMatch(RAW_CONTROL);
    expect(reset.stdout).toContain(`<Lock name='${NAME_SHOWN}' locked_by='${HOLDER_SHOWN}'`);

    const clear = await cli(['clear-lock', NAME]);
    expect(clear.code).toBe(0);
    expect(clear.stdout).not.toMatch(RAW_CONTROL);
    expect(clear.stdout).toContain(`Releasing lock ${NAME_SHOWN} from LockMgr...`);
    expect(await stack.client.isLocked(NAME)).toBe(false);
  });
});

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
