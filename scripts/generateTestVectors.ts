/**
 * Rewrites docs/test-vectors/events.json from the real hub and follower code.
 * Run from the repository root: `npx tsx scripts/generateTestVectors.ts`.
 * The output is deterministic; test/vectors/testVectors.test.ts fails when the
 * committed file and the code disagree.
 */
import { writeFileSync } from "node:fs";
import { resolve } from "node:path";
import { TEST_VECTORS_PATH, buildTestVectors, serializeTestVectors } from "./testVectors";

const path = resolve(__dirname, "..", TEST_VECTORS_PATH);
const file = buildTestVectors();
writeFileSync(path, serializeTestVectors(file), "utf8");
console.log(`wrote ${file.vectors.length} vectors to ${path}`);
