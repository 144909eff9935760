/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: "node",
  roots: ["<rootDir>/test"],
  testMatch: ["**/*.test.ts"],
  // On the PostgreSQL pass: drops the schemas of test databases earlier runs removed.
  globalSetup: "<rootDir>/test/support/globalSetup.ts",
  transform: {
    "^.+\\.(t|j)sx?$": ["@swc/jest", { jsc: { target: "es2022" }, module: { type: "commonjs" } }],
  },
  // ts-mls and the @hpke / @noble packages it loads are ESM-only.
  transformIgnorePatterns: ["/node_modules/(?!(ts-mls|@hpke|@noble)/)"],
  testTimeout: 30000,
};
