// Prints Jest's totals as one plain closing line: "Tests: N passed, N failed".
const { readFileSync } = require("node:fs");
const result = JSON.parse(readFileSync(process.argv[2], "utf8"));
console.log(`Tests: ${result.numPassedTests} passed, ${result.numFailedTests} failed`);
process.exit(result.numFailedTests === 0 && result.numTotalTests > 0 ? 0 : 1);
