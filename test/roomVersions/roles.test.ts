import {
  DEFAULT_PERMISSIONS,
  SUPERUSER_PERMISSIONS,
  effectivePower,
  mayAffectRole,
  resolvePermissions,
} from "../../src/roomVersions/mimi1";
import { ALICE, BOB, CAROL, newRoom } from "./stateBuilder";

describe("Policy draft §Calculating Permissions and §Effective Power Level", () => {
  // The draft's example with Permission A = kick, B = ban, C = redact.
  const worked = () =>
    newRoom().roles({
      A: { order: 1, permissions: { kick: true, ban: false }, assignees: [BOB] },
      B: { order: 2, permissions: { kick: false, redact: false }, assignees: [BOB] },
      C: { order: 3, permissions: { ban: true, redact: false }, assignees: [BOB] },
    });

  it("the draft's worked example resolves A = false, B = true, C = false", () => {
    const resolved = resolvePermissions(worked(), BOB);
    expect({ kick: resolved.kick, ban: resolved.ban, redact: resolved.redact }).toEqual({
      kick: false,
      ban: true,
      redact: false,
    });
  });

  it("the draft's worked example gives effective power levels A = 2, B = 3, C = 3", () => {
    const room = worked();
    expect([
      effectivePower(room, BOB, "kick"),
      effectivePower(room, BOB, "ban"),
      effectivePower(room, BOB, "redact"),
    ]).toEqual([2, 3, 3]);
  });

  it("the higher order wins whatever the order of the roles in the event", () => {
    const room = newRoom().roles({
      high: { order: 9, permissions: { kick: true }, assignees: [BOB] },
      low: { order: 4, permissions: { kick: false }, assignees: [BOB] },
    });
    expect(resolvePermissions(room, BOB).kick).toBe(true);
    expect(effectivePower(room, BOB, "kick")).toBe(9);
  });

  it("a permission no assigned role defines takes its default, and its effective power is 0 (decision 4)", () => {
    const room = newRoom().roles({ mod: { order: 5, permissions: { kick: true }, assignees: [BOB] } });
    expect(resolvePermissions(room, CAROL)).toEqual(DEFAULT_PERMISSIONS);
    expect(resolvePermissions(room, BOB)).toEqual({ ...DEFAULT_PERMISSIONS, kick: true });
    expect(effectivePower(room, BOB, "ban")).toBe(0);
    expect(effectivePower(room, CAROL, "kick")).toBe(0);
  });

  it("the defaults are add, kick, ban, redact false; roles none; sendMessages true", () => {
    expect(DEFAULT_PERMISSIONS).toEqual({
      add: false,
      kick: false,
      ban: false,
      redact: false,
      roles: [],
      sendMessages: true,
    });
  });

  it("roles the user is not assigned do not count", () => {
    const room = newRoom().roles({ mod: { order: 5, permissions: { ban: true }, assignees: [CAROL] } });
    expect(resolvePermissions(room, BOB).ban).toBe(false);
    expect(effectivePower(room, BOB, "ban")).toBe(0);
  });

  it("the roles permission takes the list of the highest role that defines it", () => {
    const room = newRoom().roles({
      a: { order: 1, permissions: { roles: ["a", "b"] }, assignees: [BOB] },
      b: { order: 2, permissions: { roles: ["c"] }, assignees: [BOB] },
    });
    const resolved = resolvePermissions(room, BOB);
    expect(resolved.roles).toEqual(["c"]);
    expect(mayAffectRole(resolved, "c")).toBe(true);
    expect(mayAffectRole(resolved, "a")).toBe(false);
  });

  it("role IDs named like Object.prototype members are ordinary role IDs", () => {
    const room = newRoom().roles({
      constructor: { order: 1, permissions: { kick: true, roles: ["toString"] }, assignees: [BOB] },
    });
    const resolved = resolvePermissions(room, BOB);
    expect(resolved.kick).toBe(true);
    expect(mayAffectRole(resolved, "toString")).toBe(true);
    expect(mayAffectRole(resolved, "constructor")).toBe(false);
    expect(mayAffectRole(resolvePermissions(room, CAROL), "toString")).toBe(false);
  });
});

describe("Decision 2: the creator is superuser until the first m.room.roles event", () => {
  it("before roles the creator holds every permission and outranks everyone", () => {
    const room = newRoom();
    expect(resolvePermissions(room, ALICE)).toEqual(SUPERUSER_PERMISSIONS);
    expect(mayAffectRole(resolvePermissions(room, ALICE), "any-role")).toBe(true);
    expect(effectivePower(room, ALICE, "kick")).toBe(Number.POSITIVE_INFINITY);
  });

  it("before roles everybody else has the defaults and power 0", () => {
    const room = newRoom().joined(BOB);
    expect(resolvePermissions(room, BOB)).toEqual(DEFAULT_PERMISSIONS);
    expect(effectivePower(room, BOB, "ban")).toBe(0);
  });

  it("after the first roles event only roles count, the creator's included", () => {
    const room = newRoom().roles({ mod: { order: 5, permissions: { kick: true }, assignees: [ALICE] } });
    expect(resolvePermissions(room, ALICE)).toEqual({ ...DEFAULT_PERMISSIONS, kick: true });
    expect(effectivePower(room, ALICE, "kick")).toBe(5);
    expect(effectivePower(room, ALICE, "ban")).toBe(0);
  });

  it("an empty roles event also ends the superuser rights", () => {
    const room = newRoom().roles({});
    expect(resolvePermissions(room, ALICE)).toEqual(DEFAULT_PERMISSIONS);
    expect(effectivePower(room, ALICE, "kick")).toBe(0);
  });

  it("a stored roles event that does not parse grants nothing (fails closed)", () => {
    const room = newRoom().put("m.room.roles", "", { roles: "broken" });
    expect(resolvePermissions(room, ALICE)).toEqual(DEFAULT_PERMISSIONS);
    expect(effectivePower(room, ALICE, "ban")).toBe(0);
  });
});
