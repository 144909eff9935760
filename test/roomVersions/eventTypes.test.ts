import type { JsonObject } from "../../src/events/types";
import {
  DEFAULT_ENCRYPTION_ALGORITHM,
  EventType,
  MAX_ROLES,
  ROOM_VERSION_ID,
  checkEventSchema,
  parseRolesContent,
  validateContent,
} from "../../src/roomVersions/mimi1";
import { ALICE, BOB, CREATE_CONTENT, fakeEventId } from "./stateBuilder";

const role = (order: number, extra: JsonObject = {}): JsonObject => ({
  order,
  permissions: {},
  assignees: [],
  ...extra,
});

function manyRoles(count: number): JsonObject {
  const roles: JsonObject = {};
  for (let i = 1; i <= count; i++) roles[`r${i}`] = role(i);
  return { roles };
}

describe("content schemas: valid content", () => {
  it("the room version ID and default algorithm are the agreed strings", () => {
    expect(ROOM_VERSION_ID).toBe("io.mimi-appservice.room.v1");
    expect(DEFAULT_ENCRYPTION_ALGORITHM).toBe("m.mls.v1.dhkemx25519-aes128gcm-sha256-ed25519");
  });

  it.each<[string, JsonObject]>([
    [EventType.Create, CREATE_CONTENT],
    [EventType.Create, { policy_id: ROOM_VERSION_ID, encryption_algorithm: "m.mls.v1.other-suite" }],
    [EventType.User, { participation: "join" }],
    [EventType.User, { participation: "ban", reason: "spam" }],
    [EventType.JoinRules, { rule: "invite" }],
    [EventType.JoinRules, { rule: "knock" }],
    [EventType.JoinRules, { rule: "public" }],
    [EventType.Roles, { roles: {} }],
    [
      EventType.Roles,
      {
        roles: {
          "Admin.role_~-1": {
            order: Number.MAX_SAFE_INTEGER,
            permissions: {
              add: true,
              kick: false,
              ban: true,
              redact: false,
              roles: ["x", "y"],
              sendMessages: true,
            },
            assignees: [ALICE, BOB],
          },
        },
      },
    ],
    [EventType.Roles, manyRoles(MAX_ROLES)],
    [EventType.Name, { name: "" }],
    [EventType.Topic, { topic: "plans" }],
    [EventType.Avatar, { url: "mxc://hub.example/abc" }],
    [EventType.MlsCommit, { message: "AAEC", public_group_state: "AwQFBg" }],
    [
      EventType.MlsCommit,
      { message: "AAEC", public_group_state: "AwQ", prev_commit_event_id: fakeEventId(3) },
    ],
    [
      EventType.Encrypted,
      { algorithm: DEFAULT_ENCRYPTION_ALGORITHM, ciphertext: "AA", commit_event_id: fakeEventId(4) },
    ],
    ["m.room.message", { body: "hi" }],
    ["com.example.anything", {}],
  ])("%s content %j is valid", (type, content) => {
    expect(validateContent(type, content)).toBeUndefined();
  });
});

describe("content schemas: invalid content", () => {
  it.each<[string, string, JsonObject, RegExp]>([
    [
      "create: policy_id of another version",
      EventType.Create,
      { ...CREATE_CONTENT, policy_id: "I.1" },
      /policy_id/,
    ],
    [
      "create: no policy_id",
      EventType.Create,
      { encryption_algorithm: DEFAULT_ENCRYPTION_ALGORITHM },
      /policy_id/,
    ],
    ["create: no algorithm", EventType.Create, { policy_id: ROOM_VERSION_ID }, /encryption_algorithm/],
    [
      "create: bare prefix",
      EventType.Create,
      { ...CREATE_CONTENT, encryption_algorithm: "m.mls.v1." },
      /encryption_algorithm/,
    ],
    [
      "create: not MLS",
      EventType.Create,
      { ...CREATE_CONTENT, encryption_algorithm: "m.olm.v1" },
      /encryption_algorithm/,
    ],
    [
      "create: algorithm not a string",
      EventType.Create,
      { ...CREATE_CONTENT, encryption_algorithm: 1 },
      /encryption_algorithm/,
    ],
    ["user: unknown participation", EventType.User, { participation: "member" }, /participation/],
    ["user: no participation", EventType.User, {}, /participation/],
    ["user: reason not a string", EventType.User, { participation: "leave", reason: 5 }, /reason/],
    ["join_rules: unknown rule", EventType.JoinRules, { rule: "restricted" }, /rule/],
    ["join_rules: no rule", EventType.JoinRules, { join_rule: "public" }, /rule/],
    ["roles: no roles", EventType.Roles, {}, /roles must be an object/],
    ["roles: roles an array", EventType.Roles, { roles: [] }, /roles must be an object/],
    ["roles: role ID with a space", EventType.Roles, { roles: { "a b": role(1) } }, /invalid role ID/],
    ["roles: role ID too long", EventType.Roles, { roles: { ["a".repeat(65)]: role(1) } }, /invalid role ID/],
    ["roles: empty role ID", EventType.Roles, { roles: { "": role(1) } }, /invalid role ID/],
    ["roles: role not an object", EventType.Roles, { roles: { a: 1 } }, /role a must be an object/],
    [
      "roles: unknown role field",
      EventType.Roles,
      { roles: { a: role(1, { name: "A" }) } },
      /unknown field "name"/,
    ],
    ["roles: order 0", EventType.Roles, { roles: { a: role(0) } }, /order/],
    ["roles: negative order", EventType.Roles, { roles: { a: role(-1) } }, /order/],
    ["roles: fractional order", EventType.Roles, { roles: { a: role(1.5) } }, /order/],
    ["roles: unsafe integer order", EventType.Roles, { roles: { a: role(2 ** 53) } }, /order/],
    ["roles: order as a string", EventType.Roles, { roles: { a: role(1, { order: "1" }) } }, /order/],
    [
      "roles: shared order",
      EventType.Roles,
      { roles: { a: role(4), b: role(4) } },
      /roles a and b share order 4/,
    ],
    ["roles: no permissions", EventType.Roles, { roles: { a: { order: 1, assignees: [] } } }, /permissions/],
    [
      "roles: permissions an array",
      EventType.Roles,
      { roles: { a: role(1, { permissions: [] }) } },
      /permissions/,
    ],
    [
      "roles: unknown permission",
      EventType.Roles,
      { roles: { a: role(1, { permissions: { invite: true } }) } },
      /unknown permission "invite"/,
    ],
    [
      "roles: boolean permission as a string",
      EventType.Roles,
      { roles: { a: role(1, { permissions: { kick: "yes" } }) } },
      /kick must be a boolean/,
    ],
    [
      "roles: roles permission not an array",
      EventType.Roles,
      { roles: { a: role(1, { permissions: { roles: true } }) } },
      /roles must be an array/,
    ],
    [
      "roles: roles permission with an invalid ID",
      EventType.Roles,
      { roles: { a: role(1, { permissions: { roles: ["a b"] } }) } },
      /invalid role ID/,
    ],
    [
      "roles: roles permission naming a role twice",
      EventType.Roles,
      { roles: { a: role(1, { permissions: { roles: ["x", "x"] } }) } },
      /names x twice/,
    ],
    ["roles: no assignees", EventType.Roles, { roles: { a: { order: 1, permissions: {} } } }, /assignees/],
    [
      "roles: assignee not a user ID",
      EventType.Roles,
      { roles: { a: role(1, { assignees: ["alice"] }) } },
      /not a valid user ID/,
    ],
    [
      "roles: assignee with uppercase localpart",
      EventType.Roles,
      { roles: { a: role(1, { assignees: ["@Alice:a.example"] }) } },
      /not a valid user ID/,
    ],
    [
      "roles: assignee listed twice",
      EventType.Roles,
      { roles: { a: role(1, { assignees: [BOB, BOB] }) } },
      /listed twice/,
    ],
    ["roles: too many roles", EventType.Roles, manyRoles(MAX_ROLES + 1), /at most 256 roles/],
    ["name: missing", EventType.Name, {}, /name must be a string/],
    ["name: not a string", EventType.Name, { name: 1 }, /name must be a string/],
    ["topic: missing", EventType.Topic, {}, /topic must be a string/],
    ["avatar: missing url", EventType.Avatar, { uri: "mxc://a/b" }, /url must be a string/],
    ["commit: no message", EventType.MlsCommit, { public_group_state: "AAEC" }, /message/],
    ["commit: empty message", EventType.MlsCommit, { message: "", public_group_state: "AAEC" }, /message/],
    [
      "commit: padded message",
      EventType.MlsCommit,
      { message: "AA==", public_group_state: "AAEC" },
      /message/,
    ],
    [
      "commit: URL-safe message",
      EventType.MlsCommit,
      { message: "AA-_", public_group_state: "AAEC" },
      /message/,
    ],
    [
      "commit: impossible length",
      EventType.MlsCommit,
      { message: "AAECA", public_group_state: "AAEC" },
      /message/,
    ],
    ["commit: no public_group_state", EventType.MlsCommit, { message: "AAEC" }, /public_group_state/],
    [
      "commit: prev_commit_event_id not an event ID",
      EventType.MlsCommit,
      { message: "AAEC", public_group_state: "AAEC", prev_commit_event_id: "$abc" },
      /prev_commit_event_id/,
    ],
    [
      "encrypted: no algorithm",
      EventType.Encrypted,
      { ciphertext: "AAEC", commit_event_id: fakeEventId(1) },
      /algorithm/,
    ],
    [
      "encrypted: empty algorithm",
      EventType.Encrypted,
      { algorithm: "", ciphertext: "AAEC", commit_event_id: fakeEventId(1) },
      /algorithm/,
    ],
    [
      "encrypted: no ciphertext",
      EventType.Encrypted,
      { algorithm: "m.mls.v1.x", commit_event_id: fakeEventId(1) },
      /ciphertext/,
    ],
    [
      "encrypted: no commit_event_id",
      EventType.Encrypted,
      { algorithm: "m.mls.v1.x", ciphertext: "AAEC" },
      /commit_event_id/,
    ],
  ])("%s is rejected", (_name, type, content, reason) => {
    expect(validateContent(type, content)).toMatch(reason);
  });

  it("content that is not an object is rejected, whatever the type", () => {
    expect(validateContent("com.example.x", [] as unknown as JsonObject)).toBe(
      "content must be a JSON object",
    );
  });

  it("a role ID of __proto__ (from JSON) is an ordinary role", () => {
    const content = JSON.parse(
      `{"roles":{"__proto__":{"order":1,"permissions":{"kick":true},"assignees":["${BOB}"]}}}`,
    );
    expect(parseRolesContent(content)).toEqual([
      { id: "__proto__", order: 1, permissions: { kick: true }, assignees: [BOB] },
    ]);
  });
});

describe("state keys and the reserved m. namespace", () => {
  it.each<[string, string, string | undefined, JsonObject, string]>([
    ["a known state type without a state key", EventType.Name, undefined, { name: "x" }, "schema.state_key"],
    ["m.room.create with a non-empty state key", EventType.Create, "x", CREATE_CONTENT, "schema.state_key"],
    ["m.room.roles with a non-empty state key", EventType.Roles, "x", { roles: {} }, "schema.state_key"],
    [
      "m.room.user keyed by something other than a user ID",
      EventType.User,
      "bob",
      { participation: "join" },
      "schema.state_key",
    ],
    [
      "m.room.user with the empty state key",
      EventType.User,
      "",
      { participation: "join" },
      "schema.state_key",
    ],
    ["m.room.encrypted with a state key", EventType.Encrypted, "", {}, "schema.state_key"],
    [
      "an unknown m. type with a state key",
      "m.room.member",
      ALICE,
      { membership: "join" },
      "schema.reserved_type",
    ],
    [
      "known-type content that fails its schema",
      EventType.User,
      BOB,
      { participation: "member" },
      "schema.m.room.user",
    ],
    [
      "custom content that is not an object",
      "com.example.x",
      undefined,
      "text" as unknown as JsonObject,
      "schema.content",
    ],
  ])("%s is rejected", (_name, type, stateKey, content, rule) => {
    const violation = checkEventSchema(
      stateKey === undefined ? { type, content } : { type, stateKey, content },
    );
    expect(violation?.rule).toBe(rule);
  });

  it.each<[string, string, string | undefined]>([
    ["an unknown m. type without a state key (custom room event)", "m.room.message", undefined],
    ["a custom state event", "com.example.state", "anything"],
    ["a custom room event", "com.example.event", undefined],
  ])("%s is accepted", (_name, type, stateKey) => {
    const content = { any: ["json", 1, null] };
    expect(
      checkEventSchema(stateKey === undefined ? { type, content } : { type, stateKey, content }),
    ).toBeUndefined();
  });
});
