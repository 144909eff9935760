import type { JsonObject } from "../../src/events/types";
import { EventType, redactContent } from "../../src/roomVersions/mimi1";
import { ALICE, CREATE_CONTENT, fakeEventId } from "./stateBuilder";

const ROLES_CONTENT: JsonObject = {
  roles: { admin: { order: 1, permissions: { add: true, roles: ["admin"] }, assignees: [ALICE] } },
  note: "dropped",
};

const cases: [string, JsonObject, JsonObject][] = [
  [
    EventType.Create,
    { ...CREATE_CONTENT, extra: { nested: [1, 2] } },
    { ...CREATE_CONTENT, extra: { nested: [1, 2] } },
  ],
  [EventType.User, { participation: "ban", reason: "spam", extra: 1 }, { participation: "ban" }],
  [EventType.JoinRules, { rule: "knock", extra: true }, { rule: "knock" }],
  [EventType.Roles, ROLES_CONTENT, { roles: ROLES_CONTENT.roles }],
  [
    EventType.MlsCommit,
    { message: "AAEC", public_group_state: "AwQF", prev_commit_event_id: fakeEventId(1), extra: "x" },
    { message: "AAEC", public_group_state: "AwQF", prev_commit_event_id: fakeEventId(1) },
  ],
  [
    EventType.Encrypted,
    { algorithm: "m.mls.v1.x", ciphertext: "BgcI", commit_event_id: fakeEventId(2), extra: "x" },
    { algorithm: "m.mls.v1.x", commit_event_id: fakeEventId(2) },
  ],
  [EventType.Name, { name: "Plans" }, {}],
  [EventType.Topic, { topic: "Plans" }, {}],
  [EventType.Avatar, { url: "mxc://a/b" }, {}],
  ["m.room.message", { body: "hi", msgtype: "m.text" }, {}],
  ["com.example.state", { participation: "join", rule: "public" }, {}],
  ["toString", { participation: "join" }, {}],
  ["constructor", { message: "AAEC" }, {}],
];

describe("content redaction (LM-04 §Event Redactions, this version's types)", () => {
  it.each(cases)("%s keeps exactly its listed fields", (type, content, expected) => {
    expect(redactContent(type, content)).toEqual(expected);
  });

  it("a commit without prev_commit_event_id gains no such field", () => {
    expect(redactContent(EventType.MlsCommit, { message: "AAEC", public_group_state: "AwQF" })).toEqual({
      message: "AAEC",
      public_group_state: "AwQF",
    });
  });

  it.each(cases)("redacting %s never changes its input, nor shares objects with it", (type, content) => {
    const before = JSON.stringify(content);
    const redacted = redactContent(type, content);
    expect(JSON.stringify(content)).toBe(before);
    for (const value of Object.values(redacted)) {
      if (typeof value === "object" && value !== null) {
        expect(Object.values(content).some((original) => original === value)).toBe(false);
      }
    }
  });
});
