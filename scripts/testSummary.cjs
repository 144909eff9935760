// Prints Jest's totals, one line per results file (one Jest pass each, e.g. one per store engine),
// then one plain closing line over all of them: "Tests: N passed, N failed". Each argument is a
// file written by `jest --json --outputFile=FILE`, optionally labelled as LABEL=FILE; without a
// label, a file named .jest-results.ENGINE.json is labelled by its engine. Exits 1 when any pass
// failed a test or ran none.
const { readFileSync } = require("node:fs");
const { basename } = require("node:path");

const ENGINES = { leveldb: "LevelDB", postgres: "PostgreSQL" };

function labelOf(file) {
  const engine = /^\.jest-results\.([^.]+)\.json$/.exec(basename(file))?.[1];
  return engine === undefined ? file : (ENGINES[engine] ?? engine);
}

const args = process.argv.slice(2);
if (args.length === 0) {
  console.error("usage: node scripts/testSummary.cjs [LABEL=]RESULTS.json...");
  process.exit(2);
}
let passed = 0;
let failed = 0;
let ok = true;
for (const arg of args) {
  const eq = arg.indexOf("=");
  const [label, file] = eq > 0 ? [arg.slice(0, eq), arg.slice(eq + 1)] : [labelOf(arg), arg];
  const result = JSON.parse(readFileSync(file, "utf8"));
  const suites = result.numFailedTestSuites > 0 ? `, ${result.numFailedTestSuites} suites failed` : "";
  console.log(`Tests on ${label}: ${result.numPassedTests} passed, ${result.numFailedTests} failed${suites}`);
  passed += result.numPassedTests;
  failed += result.numFailedTests;
  if (result.numFailedTests > 0 || result.numFailedTestSuites > 0 || result.numTotalTests === 0) ok = false;
}
console.log(`Tests: ${passed} passed, ${failed} failed`);
process.exit(ok ? 0 : 1);
