/**
 * ts-mls is ESM-only and the project is CommonJS: src/mls/tsMls.ts must load under Jest, from the
 * tsc output under plain Node (require(esm)), and under tsx.
 */
import { execFile } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import {
  DependencyError,
  SUPPORTED_CIPHERSUITE,
  UnsupportedCiphersuiteError,
  ciphersuite,
  encodeExternalSenders,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
} from "../../src/mls/tsMls";

const run = promisify(execFile);
const root = resolve(__dirname, "../..");

/** Loads the module, runs a key generation and reports what it saw, as one JSON line. */
const probe = (modulePath: string) => `
const mls = require(${JSON.stringify(modulePath)});
(async () => {
  const cs = await mls.ciphersuite(mls.SUPPORTED_CIPHERSUITE);
  const keys = await cs.signature.keygen();
  const refused = await mls.ciphersuite("MLS_128_DHKEMP256_AES128GCM_SHA256_P256").catch((e) => e.errcode);
  console.log(JSON.stringify({
    suite: cs.name,
    publicKeyLength: keys.publicKey.length,
    patched: typeof mls.encodeExternalSenders === "function",
    refused,
  }));
})();
`;

const expected = {
  suite: SUPPORTED_CIPHERSUITE,
  publicKeyLength: 32,
  patched: true,
  refused: "M_INVALID_PARAM",
};

describe("loading ts-mls through src/mls/tsMls.ts", () => {
  it("loads under Jest, patched, with the deep modules sharing the main entry's instances", async () => {
    const cs = await ciphersuite(SUPPORTED_CIPHERSUITE);
    expect(cs.name).toBe(SUPPORTED_CIPHERSUITE);
    expect(typeof encodeExternalSenders).toBe("function");
    // An error thrown from the main entry is an instance of the class exported by ts-mls/mlsError.js.
    await expect(
      getCiphersuiteImpl(getCiphersuiteFromName("MLS_128_DHKEMP256_AES128GCM_SHA256_P256")),
    ).rejects.toBeInstanceOf(DependencyError);
  });

  it("refuses every cipher suite but the supported one with a typed error", async () => {
    for (const name of [
      "MLS_128_DHKEMP256_AES128GCM_SHA256_P256",
      "MLS_256_XWING_AES256GCM_SHA512_Ed25519",
      "nope",
    ]) {
      const error: unknown = await ciphersuite(name).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(UnsupportedCiphersuiteError);
      expect((error as UnsupportedCiphersuiteError).errcode).toBe("M_INVALID_PARAM");
      expect((error as UnsupportedCiphersuiteError).ciphersuite).toBe(name);
    }
  });

  it("loads from the tsc output under plain Node (require of an ES module)", async () => {
    const outDir = await mkdtemp(join(tmpdir(), "tsmls-build-"));
    try {
      const tsconfig = join(outDir, "tsconfig.json");
      await writeFile(
        tsconfig,
        JSON.stringify({
          extends: join(root, "tsconfig.build.json"),
          compilerOptions: {
            rootDir: join(root, "src"),
            outDir: join(outDir, "dist"),
            typeRoots: [join(root, "node_modules/@types")],
          },
          include: [],
          files: [join(root, "src/mls/tsMls.ts")],
        }),
      );
      await run(process.execPath, [join(root, "node_modules/typescript/bin/tsc"), "-p", tsconfig], {
        cwd: root,
      });
      const { stdout } = await run(process.execPath, ["-e", probe(join(outDir, "dist/mls/tsMls.js"))], {
        cwd: outDir,
        // The output sits outside the project: let it find the project's node_modules.
        env: { ...process.env, NODE_PATH: join(root, "node_modules") },
      });
      expect(JSON.parse(stdout)).toEqual(expected);
    } finally {
      await rm(outDir, { recursive: true, force: true });
    }
  }, 120_000);

  it("loads under tsx", async () => {
    const { stdout } = await run(
      process.execPath,
      [join(root, "node_modules/tsx/dist/cli.mjs"), "-e", probe(join(root, "src/mls/tsMls.ts"))],
      { cwd: root },
    );
    expect(JSON.parse(stdout)).toEqual(expected);
  }, 60_000);
});
