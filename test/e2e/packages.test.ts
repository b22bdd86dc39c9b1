/**
 * The packages as they are published: the client tarball installs alone into an empty project
 * with `nats` as its only dependency (no SQLite binding, Sequelize, pg, winston or yargs), and
 * works from `require`, from `import` and from TypeScript; no tarball carries the bench or tests,
 * each carries the license.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

jest.setTimeout(180_000);

const ROOT = join(__dirname, '..', '..');
const TSC = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');

/** A command's stdout; a failure's message includes what it printed. */
function run(cmd: string, args: string[], cwd: string): string {
  try {
    return execFileSync(cmd, args, {
      cwd,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, npm_config_audit: 'false', npm_config_fund: 'false' },
    });
  } catch (err) {
    const e = err as Error & { stdout?: string; stderr?: string };
    throw new Error(`${cmd} ${args.join(' ')} failed: ${e.message}\n${e.stdout ?? ''}${e.stderr ?? ''}`, { cause: err });
  }
}

interface PackedFile {
  path: string;
}

/** `npm pack` of a workspace: the tarball's file list, and the tarball (in `dir`) unless dry. */
function pack(workspace: string, dir: string, dry = false): { filename: string; files: string[] } {
  const out = run('npm', ['pack', '-w', workspace, '--json', '--pack-destination', dir, ...(dry ? ['--dry-run'] : [])], ROOT);
  // npm prints the build's output before the JSON when prepack runs.
  const [info] = JSON.parse(out.slice(out.indexOf('['))) as { filename: string; files: PackedFile[] }[];
  return { filename: join(dir, info!.filename), files: info!.files.map((f) => f.path) };
}

describe('package tarballs', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'lockmgr-packages-'));
    // Copies an earlier pack left (git ignores them): packing must make them again from the root LICENSE.
    for (const workspace of ['client', 'daemon']) rmSync(join(ROOT, workspace, 'LICENSE'), { force: true });
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('are released together: the workspace and both packages have one version', () => {
    const version = (dir: string) => (JSON.parse(readFileSync(join(ROOT, dir, 'package.json'), 'utf8')) as { version: string }).version;
    expect([version('client'), version('daemon')]).toEqual([version('.'), version('.')]);
  });

  it('say where their source is: the repository and their folder in it', () => {
    const repository = (dir: string) =>
      (JSON.parse(readFileSync(join(ROOT, dir, 'package.json'), 'utf8')) as { repository?: unknown }).repository;
    const url = 'git+https://github.com/lockmgr/lockmgr.git';
    expect(repository('.')).toEqual({ type: 'git', url });
    expect(repository('client')).toEqual({ type: 'git', url, directory: 'client' });
    expect(repository('daemon')).toEqual({ type: 'git', url, directory: 'daemon' });
  });

  it('hold only their compiled code and the license, never the bench or the tests', () => {
    for (const workspace of ['client', 'daemon']) {
      const { files } = pack(workspace, dir, true);
      expect(files).toContain('package.json');
      expect([workspace, files]).toEqual([workspace, expect.arrayContaining(['LICENSE'])]);
      const foreign = files.filter((f) => !/^(package\.json|README\.md|LICENSE|dist\/(client|daemon|cli|shared)\/[\w./-]+)$/.test(f));
      expect([workspace, foreign]).toEqual([workspace, []]);
      expect(files.some((f) => /bench|test/.test(f))).toBe(false);
    }
    // The daemon package carries the lockmgr command.
    expect(pack('daemon', dir, true).files).toContain('dist/cli/main.js');
  });

  describe('the client, installed alone into an empty project', () => {
    let project: string;
    beforeAll(() => {
      const tarball = pack('client', dir).filename;
      project = join(dir, 'consumer');
      run('mkdir', ['-p', project], dir);
      writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', private: true }));
      run('npm', ['install', '--prefer-offline', '--no-package-lock', tarball], project);
    });

    it('brings nats and nothing of the daemon', () => {
      const installed = readdirSync(join(project, 'node_modules')).filter((n) => !n.startsWith('.'));
      expect(installed).toEqual(expect.arrayContaining(['lockmgr', 'nats']));
      for (const daemonOnly of ['better-sqlite3', 'sqlite3', 'sequelize', 'pg', 'winston', 'yargs', 'umzug', 'lockmgr-daemon']) {
        expect([daemonOnly, existsSync(join(project, 'node_modules', daemonOnly))]).toEqual([daemonOnly, false]);
      }
      // Everything installed is nats or what nats needs.
      const tree = JSON.parse(run('npm', ['ls', '--all', '--json'], project)) as {
        dependencies: Record<string, { dependencies?: object }>;
      };
      expect(Object.keys(tree.dependencies)).toEqual(['lockmgr']);
      expect(Object.keys(tree.dependencies.lockmgr!.dependencies ?? {})).toEqual(['nats']);
    });

    it("carries the repository's MIT license", () => {
      const license = readFileSync(join(project, 'node_modules', 'lockmgr', 'LICENSE'), 'utf8');
      expect(license).toBe(readFileSync(join(ROOT, 'LICENSE'), 'utf8'));
      expect(license).toMatch(/^MIT License\n\nCopyright \(c\) 2026 the lockmgr authors\n/);
      const manifest = JSON.parse(readFileSync(join(project, 'node_modules', 'lockmgr', 'package.json'), 'utf8'));
      expect(manifest.license).toBe('MIT');
      expect(manifest.repository).toMatchObject({ directory: 'client' });
    });

    it('works with require and with import', () => {
      const probe = 'typeof m.LockClient + typeof m.setLock + typeof m.Locked + (new m.LockFail("x") instanceof m.Locked)';
      expect(run('node', ['-e', `const m = require('lockmgr'); console.log(${probe})`], project).trim()).toBe(
        'functionfunctionfunctiontrue',
      );
      const esm = `import * as m from 'lockmgr'; import { LockClient, Locked } from 'lockmgr'; console.log(${probe}, typeof LockClient, typeof Locked)`;
      expect(run('node', ['--input-type=module', '-e', esm], project).trim()).toBe('functionfunctionfunctiontrue function function');
    });

    it('type-checks from CommonJS and ES module TypeScript, and its types catch mistakes', () => {
      const body = `
        export async function use(): Promise<number> {
          const client = await LockClient.connect({ servers: 'nats://127.0.0.1:4222', prefix: 'lock' });
          const res: LockSetResult = await client.setLock('a', 'b', { timeout: 30, fail: true });
          const lock: Lock = await client.getLock('a', { expires: 60, wait: 1 });
          try {
            await client.withLock('c', { expires: 5 }, async (mgr) => mgr.main_lock?.token);
          } catch (err) {
            if (err instanceof Locked) return err.lock?.token ?? 0;
          }
          // @ts-expect-error a lock name is a string
          await client.getLock(42);
          await client.close();
          return res.counts.created + lock.token;
        }
      `;
      writeFileSync(join(project, 'cjs.ts'), `import { LockClient, Locked, type Lock, type LockSetResult } from 'lockmgr';\n${body}`);
      writeFileSync(join(project, 'esm.mts'), `import { LockClient, Locked, type Lock, type LockSetResult } from 'lockmgr';\n${body}`);
      const tsconfig = {
        compilerOptions: {
          strict: true,
          noEmit: true,
          // As `tsc --init` sets it: nats's own declarations need the DOM library otherwise.
          skipLibCheck: true,
          module: 'node16',
          moduleResolution: 'node16',
          target: 'ES2022',
          lib: ['ES2022'],
          typeRoots: [join(ROOT, 'node_modules', '@types')],
          types: ['node'],
        },
        files: ['cjs.ts', 'esm.mts'],
      };
      writeFileSync(join(project, 'tsconfig.json'), JSON.stringify(tsconfig));
      expect(run('node', [TSC, '-p', 'tsconfig.json'], project)).toBe('');
    });
  });
});
