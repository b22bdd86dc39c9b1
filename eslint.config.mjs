// The lint gate (`npm run lint`, part of `npm test`): typescript-eslint with type information,
// and the import boundaries between the packages' folders.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

/** A relative import reaching into one of `folders`, from any depth. */
const into = (...folders) => `^(\\.\\./)+(${folders.join('|')})(/|$)`;

const DAEMON_ONLY_PACKAGES = ['better-sqlite3', 'sqlite3', 'pg', 'prom-client', 'sequelize', 'umzug', 'winston', 'yargs'];

/** Imports a folder may not make: what it is told, and why. */
function boundary(files, patterns) {
  return { files, rules: { '@typescript-eslint/no-restricted-imports': ['error', { patterns }] } };
}

export default tseslint.config(
  { ignores: ['**/dist/**', '**/node_modules/**', 'bench/results/**', 'coverage/**', 'test-results/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/await-thenable': 'error',
      '@typescript-eslint/consistent-type-imports': ['error', { fixStyle: 'inline-type-imports' }],
      '@typescript-eslint/no-import-type-side-effects': 'error',
      // tsconfig's noUnusedLocals/noUnusedParameters report these, with the compiler's own rules.
      '@typescript-eslint/no-unused-vars': 'off',
      // Casts and non-null assertions are used where a check has just been made.
      '@typescript-eslint/no-non-null-assertion': 'off',
      '@typescript-eslint/no-explicit-any': 'error',
    },
  },
  // The client and the protocol are published in the client package: they never reach into the
  // daemon or the CLI, nor use what only the daemon depends on.
  boundary(
    ['client/**/*.ts', 'shared/**/*.ts'],
    [
      { regex: into('daemon', 'cli'), message: 'client/ and shared/ are packaged without the daemon and the CLI.' },
      { regex: '^lockmgr-daemon(/|$)', message: 'the client package does not depend on the daemon package.' },
      { group: DAEMON_ONLY_PACKAGES, message: 'the client package depends on nats only.' },
    ],
  ),
  boundary(
    ['shared/**/*.ts'],
    [{ regex: into('client', 'daemon', 'cli'), message: 'shared/ is the protocol: it imports nothing of ours.' }],
  ),
  // The daemon serves the protocol; it never uses the client (the CLI may use both).
  boundary(
    ['daemon/**/*.ts'],
    [
      { regex: into('client'), message: 'the daemon does not use the client; put what both need in shared/.' },
      { regex: '^lockmgr(/|$)', message: 'the daemon does not use the client package.' },
    ],
  ),
  // client/ and daemon/ are packages whose main module is their build: within the repository, a
  // folder import would load a stale compiled copy (and its own classes). Name the index instead.
  {
    files: ['**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            {
              regex: '^(\\.\\./)+(client|daemon)$',
              message: "import '…/client/index' (or '…/daemon/index'): the folder is a package whose main is its build.",
            },
          ],
        },
      ],
    },
  },
  {
    files: ['**/*.js', '**/*.mjs'],
    extends: [tseslint.configs.disableTypeChecked],
    languageOptions: {
      globals: { require: 'readonly', module: 'writable', __dirname: 'readonly', process: 'readonly', console: 'readonly' },
    },
    rules: { '@typescript-eslint/no-require-imports': 'off' },
  },
);
