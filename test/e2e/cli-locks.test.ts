/**
 * The four django-lockmgr management commands (set-lock, clear-lock, list-locks, reset-locks) and
 * ping, run as the real built binary against a real daemon over a real nats-server.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, startNatsServer, type NatsServer } from '../helpers/nats-server';
import { runCli } from '../helpers/cli';
import { startStack, type Stack } from '../helpers/stack';

const RULE57 = `\n${'='.repeat(57)}\n`;

describe('lockmgr lock commands (built binary, real daemon)', () => {
  let stack: Stack;
  let conn: string[];
  const cli = (args: string[], input?: string) => runCli([...args, ...conn], { input });
  /** As someone at a terminal, typing `input`. */
  const typed = (args: string[], input?: string) => runCli([...args, ...conn], { input, terminal: true });

  beforeAll(async () => {
    stack = await startStack({ store: 'sqlite' });
    conn = ['--nats-url', stack.nats.url, '--prefix', stack.prefix];
  });
  afterAll(async () => {
    await stack?.stop();
  });
  beforeEach(async () => {
    await stack.client.resetLocks();
  });

  describe('set-lock', () => {
    it('creates locks and prints the seed status report line for line', async () => {
      const r = await cli(['set-lock', 'hello', 'world']);
      expect(r.code).toBe(0);
      expect(r.stderr).toBe('');
      const row = (n: string, was: string, now: string, st: string) =>
        `\t\t${n.padEnd(20)}${was.padEnd(20)}${now.padEnd(20)}${st.padEnd(20)}\n`;
      expect(r.stdout).toBe(
        'Finished creating / renewing 2 locks.\n\n' +
          '\n====================Status Report=====================\n\n' +
          '  Per-lock:\n\n' +
          `\t\t${'Name'.padEnd(20)}${'Was Locked?'.padEnd(20)}${'Now Locked?'.padEnd(20)}${'Status'.padEnd(20)}\n\n` +
          row('hello', 'NO', 'YES', 'create') +
          row('world', 'NO', 'YES', 'create') +
          `\n${'='.repeat(56)}\n\n` +
          '  Summary:\n\n' +
          '    Locks Created:      2\n' +
          '    Locks Renewed:      0\n' +
          '    Renewals Skipped:   0\n' +
          '    Creations Skipped:  0\n' +
          '\n' +
          `${RULE57}\n` +
          'Finished creating / renewing locks.\n' +
          `${RULE57}\n`,
      );
      const hello = await stack.client.lockInfo('hello');
      expect(hello?.locked_by).toBe(hostname());
      expect(hello!.expires_seconds!).toBeGreaterThan(590);
      expect(hello!.expires_seconds!).toBeLessThanOrEqual(600);

      const again = await cli(['set-lock', 'hello', 'world']);
      expect(again.code).toBe(0);
      expect(again.stdout).toContain(row('hello', 'YES', 'YES', 'extend'));
      expect(again.stdout).toContain('    Locks Renewed:      2\n');

      const one = await cli(['set-lock', 'single']);
      expect(one.code).toBe(0);
      expect(one.stdout).toMatch(/^Finished creating \/ renewing 1 lock\.\n/);
    });

    it('honours -n, -r, -t, -k, --locked-by and --pid', async () => {
      await stack.client.setLock('held', { timeout: 100 });
      const noRenew = await cli(['set-lock', '-n', 'held', 'fresh', '--json']);
      expect(noRenew.code).toBe(0);
      const nr = JSON.parse(noRenew.stdout);
      expect(nr.counts).toEqual({ created: 1, renewed: 0, skip_create: 0, skip_renew: 1 });
      expect((await stack.client.lockInfo('held'))!.expires_seconds!).toBeLessThanOrEqual(100);

      const onlyRenew = JSON.parse((await cli(['set-lock', '--only-renew', 'held', 'absent', '--json'])).stdout);
      expect(onlyRenew.counts).toEqual({ created: 0, renewed: 1, skip_create: 1, skip_renew: 0 });
      expect(await stack.client.isLocked('absent')).toBe(false);

      expect((await cli(['set-lock', '-t', '30', 'short'])).code).toBe(0);
      const short = (await stack.client.lockInfo('short'))!;
      expect(short.expires_seconds!).toBeGreaterThan(25);
      expect(short.expires_seconds!).toBeLessThanOrEqual(30);

      // -k works (the seed crashed on it): the lock never expires, even with -t given.
      const forever = await cli(['set-lock', '-k', '-t', '5', '--locked-by', 'cron@batch', '--pid', '4242', 'forever']);
      expect(forever.code).toBe(0);
      const f = (await stack.client.lockInfo('forever'))!;
      expect(f.locked_until).toBeNull();
      expect(f.locked_by).toBe('cron@batch');
      expect(f.lock_process).toBe(4242);
    });

    it('exits 2 on LockFail with the seed lines and keeps nothing of the request', async () => {
      await stack.client.setLock('example', { locked_by: 'other.host' });
      const r = await cli(['set-lock', '-e', 'hello', 'world', 'example']);
      expect(r.code).toBe(2);
      expect(r.stdout).toContain(`\n${'-'.repeat(75)}\n`);
      expect(r.stdout).toContain('Caught exception LockFail while creating/setting locks...\n');
      expect(r.stdout).toContain('The following existing lock was encountered:\n\n');
      expect(r.stdout).toMatch(
        /\t<Lock name='example' locked_by='other\.host' locked_until='\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{6})?\+00:00'>\n/,
      );
      expect(r.stdout).toContain(
        ' >>> As you have set -e / --fail, this means that any lock creations or updates triggered during this run of set_lock should have been rolled back.\n',
      );
      expect(r.stdout).toContain(' !!! Now exiting with return code 2...\n');
      expect(await stack.client.isLocked('hello')).toBe(false);
      expect(await stack.client.isLocked('world')).toBe(false);

      const j = await cli(['set-lock', '--fail', 'hello', 'example', '--json']);
      expect(j.code).toBe(2);
      const body = JSON.parse(j.stdout);
      expect(body.error.code).toBe('LOCK_FAIL');
      expect(body.error.lock.name).toBe('example');
      expect(body.error.lock.locked_by).toBe('other.host');
      expect(await stack.client.isLocked('hello')).toBe(false);
    });

    it('rejects bad arguments as usage errors (exit 64) before contacting anyone', async () => {
      const none = await cli(['set-lock']);
      expect(none.code).toBe(64);
      expect(none.stderr).toMatch(/Not enough non-option arguments/);
      const negative = await cli(['set-lock', '-t', '-5', 'x']);
      expect(negative.code).toBe(64);
      expect(negative.stderr).toContain('--timeout must be a non-negative number');
      const unknown = await cli(['set-lock', 'x', '--frobnicate']);
      expect(unknown.code).toBe(64);
      expect(unknown.stderr).toContain('Unknown argument: frobnicate');
      expect(await stack.client.isLocked('x')).toBe(false);
    });

    it('reports an invalid lock name from the client as a one-line error, exit 1', async () => {
      const r = await cli(['set-lock', 'bad*name']);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/^lockmgr: invalid lock name "bad\*name"/);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
    });
  });

  describe('clear-lock', () => {
    it('releases each name, whoever holds it, and a missing name is not an error', async () => {
      await stack.client.setLock('hello', 'world', { locked_by: 'someone.else' });
      const r = await cli(['clear-lock', 'hello', 'world', 'test']);
      expect(r.code).toBe(0);
      expect(r.stdout).toBe(
        '\nReleasing lock hello from LockMgr...\nLock hello has been removed (if it exists).\n' +
          '\nReleasing lock world from LockMgr...\nLock world has been removed (if it exists).\n' +
          '\nReleasing lock test from LockMgr...\nLock test has been removed (if it exists).\n' +
          `${RULE57}\nFinished clearing locks.\n${RULE57}\n`,
      );
      expect(await stack.client.isLocked('hello')).toBe(false);
      expect(await stack.client.isLocked('world')).toBe(false);
    });

    it('--json says which names were actually released', async () => {
      await stack.client.setLock('a');
      const r = await cli(['clear-lock', 'a', 'b', '--json']);
      expect(r.code).toBe(0);
      expect(JSON.parse(r.stdout)).toEqual({
        locks: [
          { name: 'a', unlocked: true },
          { name: 'b', unlocked: false },
        ],
      });
    });
  });

  describe('list-locks', () => {
    it('prints the long form with lock_process and the fencing token, in name order', async () => {
      await stack.client.setLock('world', 'hello', { locked_by: 'example.org' });
      const proc = await stack.client.setLock('proc', { locked_by: 'w1', process_id: 77, timeout: null });
      const r = await cli(['list-locks']);
      expect(r.code).toBe(0);
      const [before, body, after] = r.stdout.split(RULE57);
      expect(before).toBe(`\nFound 3 live locks in lockmgr (subject prefix "${stack.prefix}")\n`);
      const lines = body!.trim().split('\n');
      expect(lines).toHaveLength(3);
      const hello = (await stack.client.lockInfo('hello'))!;
      expect(lines[0]).toMatch(
        new RegExp(
          `^<Lock name='hello' locked_by='example\\.org' lock_process='None' token='${hello.token}' locked_until='\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d(\\.\\d{6})?\\+00:00'>$`,
        ),
      );
      expect(lines[1]).toBe(`<Lock name='proc' locked_by='w1' lock_process='77' token='${proc.locks[0]!.token}' locked_until='None'>`);
      expect(lines[2]).toMatch(/^<Lock name='world' /);
      expect(after).toBe('\n');
    });

    it('counts in words: no locks, 1 lock; --name-prefix is named in the heading', async () => {
      const none = await cli(['list-locks']);
      expect(none.code).toBe(0);
      expect(none.stdout.split(RULE57)[0]).toBe(`\nFound no live locks in lockmgr (subject prefix "${stack.prefix}")\n`);
      await stack.client.setLock('orders.1', 'users.1');
      const one = await cli(['list-locks', '--name-prefix', 'orders.']);
      expect(one.code).toBe(0);
      expect(one.stdout.split(RULE57)[0]).toBe(`\nFound 1 live lock named orders.* in lockmgr (subject prefix "${stack.prefix}")\n`);
      expect(one.stdout).toContain("<Lock name='orders.1' ");
      expect(one.stdout).not.toContain('users.1');
    });

    it('--name-prefix filters and --json gives the records', async () => {
      await stack.client.setLock('orders.1', 'orders.2', 'users.1');
      const r = await cli(['list-locks', '--name-prefix', 'orders.', '--json']);
      expect(r.code).toBe(0);
      const body = JSON.parse(r.stdout);
      expect(body.count).toBe(2);
      expect(body.locks.map((l: { name: string }) => l.name)).toEqual(['orders.1', 'orders.2']);
      expect(typeof body.locks[0].token).toBe('number');
      expect(body.locks[0].locked_until).toMatch(/Z$/);
    });
  });

  describe('reset-locks', () => {
    it('asks for YES on the terminal: anything else leaves every lock in place and exits 1', async () => {
      await stack.client.setLock('hello', 'world');
      const r = await typed(['reset-locks'], 'yes\n');
      expect(r.code).toBe(1);
      expect(r.stdout).toContain(`WARNING: You are about to remove ALL locks on lockmgr subject prefix "${stack.prefix}", held or not.\n`);
      expect(r.stdout).toContain('This would remove 2 locks:\n');
      expect(r.stdout).toMatch(/<Lock name='hello' locked_by='[^']+' locked_until='[^']+'>\n<Lock name='world'/);
      expect(r.stdout).toContain('Are you SURE you want to clear all locks?\nType YES in all capitals if you are sure > ');
      expect(r.stdout).not.toContain('Please wait...');
      expect(r.stderr).toBe('lockmgr: aborted, nothing removed (the answer was not YES)\n');
      expect((await stack.client.listLocks()).map((l) => l.name)).toEqual(['hello', 'world']);

      // End of input without an answer is not a YES either.
      const eof = await typed(['reset-locks']);
      expect(eof.code).toBe(1);
      expect(eof.stderr).toContain('aborted, nothing removed');
      expect(await stack.client.isLocked('hello')).toBe(true);
    });

    it('removes every lock after YES (surrounding spaces allowed, as strip() did)', async () => {
      await stack.client.setLock('hello', 'world');
      await stack.client.setLock('forever', { timeout: null });
      const r = await typed(['reset-locks'], '  YES \n');
      expect(r.code).toBe(0);
      expect(r.stderr).toBe('');
      expect(r.stdout).toContain('This would remove 3 locks:\n');
      expect(r.stdout).toContain('Please wait... Removing all locks regardless of their status or expiration.\n\n');
      expect(r.stdout).toContain('Removed 3 locks.\n');
      expect(r.stdout).toMatch(/Finished clearing locks\.\n\n={57}\n\n$/);
      expect(await stack.client.listLocks()).toEqual([]);
    });

    it('does not read an answer from a pipe: without -f it refuses (exit 64) and removes nothing', async () => {
      await stack.client.setLock('kept');
      for (const args of [['reset-locks'], ['reset-locks', '--json']]) {
        const r = await cli(args, 'YES\n');
        expect([args, r.code]).toEqual([args, 64]);
        expect(r.stderr).toMatch(/^lockmgr: reset-locks asks for YES on a terminal, and stdin is not one: pass -f \/ --force /);
        expect(r.stdout).toBe('');
      }
      expect(await stack.client.isLocked('kept')).toBe(true);
    });

    it('-f skips the prompt; --json -f prints the removed locks', async () => {
      await stack.client.setLock('a');
      const r = await cli(['reset-locks', '-f']);
      expect(r.code).toBe(0);
      expect(r.stdout).not.toContain('WARNING');
      expect(r.stdout).not.toContain('Type YES');
      expect(r.stdout).toContain("Option 'force' (-f / --force) was specified. Skipping confirmation prompt.\n");
      expect(r.stdout).toContain('This would remove 1 lock:\n');
      expect(r.stdout).toContain('Removed 1 lock.\n');
      expect(await stack.client.listLocks()).toEqual([]);

      const empty = await cli(['reset-locks', '-f']);
      expect(empty.code).toBe(0);
      expect(empty.stdout).toContain('This would remove no locks.\n');
      expect(empty.stdout).toContain('Removed no locks.\n');

      await stack.client.setLock('c');
      const j = await cli(['reset-locks', '--force', '--json']);
      expect(j.code).toBe(0);
      const body = JSON.parse(j.stdout);
      expect(body).toMatchObject({ aborted: false, removed: 1 });
      expect(body.locks.map((l: { name: string }) => l.name)).toEqual(['c']);
      expect(await stack.client.isLocked('c')).toBe(false);
    });

    it('--json without -f still needs YES (prompt on stderr, stdout stays JSON)', async () => {
      await stack.client.setLock('a');
      const no = await typed(['reset-locks', '--json'], 'no\n');
      expect(no.code).toBe(1);
      expect(JSON.parse(no.stdout)).toEqual({ aborted: true, removed: 0 });
      expect(no.stderr).toContain('Type YES in all capitals');
      expect(await stack.client.isLocked('a')).toBe(true);
      const yes = await typed(['reset-locks', '--json'], 'YES\n');
      expect(yes.code).toBe(0);
      expect(JSON.parse(yes.stdout)).toMatchObject({ aborted: false, removed: 1 });
      expect(await stack.client.isLocked('a')).toBe(false);
    });
  });

  describe('ping and unreachable daemons', () => {
    it('ping exits 0 and names the daemon serving the prefix; --local finds it on this host', async () => {
      const r = await cli(['ping', '--local', '--json']);
      expect(r.code).toBe(0);
      const body = JSON.parse(r.stdout);
      expect(body.ok).toBe(true);
      expect(body.prefix).toBe(stack.prefix);
      expect(body.daemons).toHaveLength(1);
      expect(body.daemons[0].daemon).toBe(stack.daemons[0]!.id);
      expect(body.local).toBe(1);
      const human = await cli(['ping']);
      expect(human.code).toBe(0);
      expect(human.stdout).toBe(
        `ok: prefix "${stack.prefix}" is served by 1 daemon (${stack.daemons[0]!.id} v${body.daemons[0].version} sqlite); a lock request was answered\n`,
      );
    });

    it('ping finding no daemon on its prefix exits 69 and says what to check', async () => {
      const prefix = `${stack.prefix}none`;
      const r = await runCli(['ping', '--nats-url', stack.nats.url, '--prefix', prefix, '--timeout-ms', '500']);
      expect(r.code).toBe(69);
      expect(r.stdout).toBe('');
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toContain(`lockmgr: no daemon answers on prefix "${prefix}" at NATS 127.0.0.1:${stack.nats.port}`);
      // The daemon this NATS server does have is named, for a mistyped prefix.
      expect(r.stderr).toContain(`daemons there serve other prefixes: "${stack.prefix}"`);
      expect(r.stderr).toContain('check that a daemon runs ("lockmgr daemon") with this prefix (--prefix / LOCKMGR_PREFIX)');
      expect(r.stderr).toContain('--nats-url / LOCKMGR_NATS_URL');
      expect(r.stderr).toContain(`NATS permissions let it subscribe to ${prefix}.>`);
      const j = await runCli(['ping', '--json', '--nats-url', stack.nats.url, '--prefix', prefix, '--timeout-ms', '500']);
      expect(j.code).toBe(69);
      expect(JSON.parse(j.stdout).error).toMatchObject({ code: 'NO_DAEMON', message: expect.stringContaining('check that a daemon runs') });
    });

    it('no daemon on the prefix: one clear line naming what to do, exit 69 (also with --json), once the timeout is spent', async () => {
      // A command asks again until its timeout, in case a daemon is restarting: a short one here.
      for (const args of [['list-locks'], ['set-lock', 'x'], ['clear-lock', 'x'], ['reset-locks', '-f']]) {
        const r = await runCli([...args, '--nats-url', stack.nats.url, '--prefix', 'nobody', '--timeout-ms', '500']);
        expect(r.code).toBe(69);
        expect(r.stdout).not.toContain('Finished');
        expect(r.stderr.trim().split('\n')).toHaveLength(1);
        expect(r.stderr).toContain('lockmgr: no lockmgr daemon answers on nobody.');
        expect(r.stderr).toContain('lockmgr daemon');
      }
      const j = await runCli(['list-locks', '--json', '--nats-url', stack.nats.url, '--prefix', 'nobody', '--timeout-ms', '500']);
      expect(j.code).toBe(69);
      expect(JSON.parse(j.stdout).error.code).toBe('NO_DAEMON');
    });

    it('NATS unreachable: one clear line, exit 69', async () => {
      const port = await freePort();
      const r = await runCli(['list-locks', '--nats-url', `nats://127.0.0.1:${port}`]);
      expect(r.code).toBe(69);
      expect(r.stderr).toMatch(new RegExp(`^lockmgr: cannot reach NATS at nats://127\\.0\\.0\\.1:${port} .*start nats-server`));
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
    });

    it('takes the NATS URL and prefix from LOCKMGR_* and from a config file, flags winning', async () => {
      await stack.client.setLock('envlock');
      const env = await runCli(['list-locks', '--json'], { env: { LOCKMGR_NATS_URL: stack.nats.url, LOCKMGR_PREFIX: stack.prefix } });
      expect(env.code).toBe(0);
      expect(JSON.parse(env.stdout).locks.map((l: { name: string }) => l.name)).toEqual(['envlock']);
      const wrongEnv = await runCli(['list-locks', '--prefix', stack.prefix], {
        env: { LOCKMGR_NATS_URL: stack.nats.url, LOCKMGR_PREFIX: 'nobody' },
      });
      expect(wrongEnv.code).toBe(0);

      const file = join(mkdtempSync(join(tmpdir(), 'lockmgr-cli-')), 'client.json');
      writeFileSync(file, JSON.stringify({ natsUrl: stack.nats.url, prefix: stack.prefix }));
      const fromFile = await runCli(['list-locks', '--json', '--config', file]);
      expect(fromFile.code).toBe(0);
      expect(JSON.parse(fromFile.stdout).count).toBe(1);
      // The environment beats the file; the flag beats both.
      const envOverFile = await runCli(['list-locks', '--config', file], { env: { LOCKMGR_PREFIX: 'nobody' } });
      expect(envOverFile.code).toBe(69);
      const flagOverAll = await runCli(['list-locks', '--config', file, '--prefix', stack.prefix], { env: { LOCKMGR_PREFIX: 'nobody' } });
      expect(flagOverAll.code).toBe(0);
    });
  });
});

describe('lockmgr ping as a NATS user that may not ask the services framework', () => {
  let nats: NatsServer;
  let stack: Stack;

  beforeAll(async () => {
    // The daemon connects without credentials (no_auth_user: full rights); ops may not publish to $SRV.
    nats = await startNatsServer({
      config: `authorization {
  users = [
    { user: daemon, password: daemonpw }
    { user: ops, password: opspw, permissions: { publish: { deny: ["$SRV.>"] } } }
  ]
}
no_auth_user: daemon
`,
    });
    stack = await startStack({ store: 'sqlite', nats });
  });
  afterAll(async () => {
    await stack?.stop();
    await nats?.stop();
  });

  it('exits 0 when the lock request is answered, and says that no daemon answered the services ping', async () => {
    const r = await runCli(['ping', '--nats-url', `nats://ops:opspw@127.0.0.1:${nats.port}`, '--prefix', stack.prefix]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(
      `ok: a lock request on prefix "${stack.prefix}" was answered, but no daemon answered $SRV.PING.lockmgr (may this NATS user publish there?)\n`,
    );
    // The daemon user sees the daemon.
    const full = await runCli(['ping', '--nats-url', `nats://daemon:daemonpw@127.0.0.1:${nats.port}`, '--prefix', stack.prefix]);
    expect(full.code).toBe(0);
    expect(full.stdout).toContain(`ok: prefix "${stack.prefix}" is served by 1 daemon (`);
  });
});
