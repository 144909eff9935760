/**
 * Jest's global setup: on the PostgreSQL pass, drops the schemas earlier runs' tests left behind
 * (see sweepTestSchemas), before any test file runs.
 */
import { sweepTestSchemas, TEST_STORE_ENGINE } from "./store";

export default async function globalSetup(): Promise<void> {
  if (TEST_STORE_ENGINE === "postgres") await sweepTestSchemas();
}
