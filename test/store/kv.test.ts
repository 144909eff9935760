import { join } from "node:path";
import { prefixEnd } from "../../src/store/kv";
import { removeDir, tempDir } from "../support/services";
import { openTestStore, TEST_STORE_NAME } from "../support/store";

describe(`prefix scans, commits and listeners on ${TEST_STORE_NAME}`, () => {
  it.each([
    ["an ASCII suffix", "abc"],
    ["a BMP character", "\u00e9t\u00e9"],
    ["U+FFFD", "\ufffd"],
    ["an emoji (beyond U+FFFF)", "\u{1F600}x"],
    ["the highest code point", "\u{10FFFF}"],
  ])("finds a key with %s after the prefix, and nothing of the next prefix", async (_name, suffix) => {
    const dir = tempDir("kv");
    const kv = await openTestStore(join(dir, "db"), { durability: "os" });
    const prefix = "s\u0000room\u0000";
    await kv.commit([
      { type: "put", key: prefix + suffix, value: "in" },
      { type: "put", key: "s\u0000room2\u0000x", value: "next room" },
      { type: "put", key: "s\u0000roon\u0000x", value: "after" },
    ]);
    const found: string[] = [];
    for await (const [, value] of kv.range({ gte: prefix, lt: prefixEnd(prefix) })) found.push(value);
    expect(found).toEqual(["in"]);
    await kv.close();
    removeDir(dir);
  });

  it("commits without waiting for the disk when asked, in order with synced commits", async () => {
    const dir = tempDir("kv");
    const kv = await openTestStore(join(dir, "db"), { durability: "fsync" });
    await Promise.all([
      kv.commit([{ type: "put", key: "a", value: "1" }], { durable: false }),
      kv.commit([{ type: "put", key: "a", value: "2" }]),
    ]);
    expect(await kv.get("a")).toBe("2");
    await kv.close();
    removeDir(dir);
  });

  it("tells listeners of each landed batch before its commits resolve; a throwing listener changes nothing", async () => {
    const dir = tempDir("kv");
    const kv = await openTestStore(join(dir, "db"), { durability: "os" });
    const seen: string[][] = [];
    kv.onCommitted(() => {
      throw new Error("a broken listener");
    });
    const unsubscribe = kv.onCommitted((ops) => seen.push(ops.map((op) => `${op.type} ${op.key}`)));
    await kv.commit([{ type: "put", key: "a", value: "1" }]).then(() => seen.push(["resolved"]));
    await kv.commit([{ type: "del", key: "a" }]);
    unsubscribe();
    await kv.commit([{ type: "put", key: "b", value: "2" }]);
    expect(seen).toEqual([["put a"], ["resolved"], ["del a"]]);
    expect(await kv.get("b")).toBe("2");
    await kv.close();
    removeDir(dir);
  });
});
