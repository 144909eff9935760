/**
 * The `mls` section's entry point, run by `npm run bench -- mls` on code compiled by tsc (as
 * `npm start` runs the provider): under tsx, ts-mls's encoders run several times slower.
 */
import { mlsSection } from "./mls";
import { mlsMessagesSection } from "./mlsMessages";
import { removeAllTempDirs } from "./util";

async function main(): Promise<void> {
  await mlsSection();
  await mlsMessagesSection();
}

main().then(
  () => removeAllTempDirs(),
  (err: unknown) => {
    console.error(err);
    removeAllTempDirs();
    process.exit(1);
  },
);
