/** Jest runs the TypeScript sources directly through ts-jest; end-to-end tests spawn the built dist/. */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  transform: { '^.+\\.ts$': ['ts-jest', { tsconfig: 'tsconfig.json', diagnostics: { warnOnly: false } }] },
  testTimeout: 30000,
  globalSetup: '<rootDir>/test/helpers/preflight.ts',
  reporters: ['default', '<rootDir>/test/helpers/summary-reporter.js'],
};
