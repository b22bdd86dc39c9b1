/**
 * Prints one plain closing line, `N passed, N failed, N skipped`, after jest's own summary, so
 * that any tool reading the run's last lines sees the counts without parsing jest's format.
 */
class SummaryReporter {
  onRunComplete(_contexts, results) {
    const skipped = results.numPendingTests + results.numTodoTests;
    process.stdout.write(`\n${results.numPassedTests} passed, ${results.numFailedTests} failed, ${skipped} skipped\n`);
  }
}
module.exports = SummaryReporter;
