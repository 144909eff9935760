import { escapeUserId, ghostUserId, mimiUserOfGhost, unescapeUserId } from "../../src/bridge/ghosts";

describe("ghosts: remote MIMI users as users of the homeserver", () => {
  it.each([
    ["@bob:b.example", "bob=3ab.example"],
    ["@Bob:b.example", "=42ob=3ab.example"],
    ["@a=b:c.example:8448", "a=3db=3ac.example=3a8448"],
    ["@über:b.example", "=c3=bcber=3ab.example"],
    ["@x_y.z/w-1:[::1]", "x_y.z/w-1=3a=5b=3a=3a1=5d"],
  ])("%s escapes to the localpart %s and back", (userId, escaped) => {
    expect(escapeUserId(userId)).toBe(escaped);
    expect(escaped).toMatch(/^[a-z0-9._=\-/]+$/);
    expect(unescapeUserId(escaped)).toBe(userId);
  });

  it.each([
    ["a bad escape", "bob=zz"],
    ["a truncated escape", "bob=3"],
    ["a kept character written as an escape", "=62ob=3ab.example"],
    ["a capital letter", "Bob=3ab.example"],
    ["invalid UTF-8", "=c3=28"],
  ])("refuses %s", (_name, escaped) => {
    expect(unescapeUserId(escaped)).toBeUndefined();
  });

  it("names the ghost in the namespace, and only our ghosts map back", () => {
    const ghost = ghostUserId("@bob:b.example", "_mimi_", "hs.example.org");
    expect(ghost).toBe("@_mimi_bob=3ab.example:hs.example.org");
    expect(mimiUserOfGhost(ghost, "_mimi_", "hs.example.org")).toBe("@bob:b.example");
    expect(mimiUserOfGhost("@bob:hs.example.org", "_mimi_", "hs.example.org")).toBeUndefined();
    expect(mimiUserOfGhost("@_mimi_bob=3ab.example:other.org", "_mimi_", "hs.example.org")).toBeUndefined();
  });
});
