import type { JsonObject } from "../../src/events/types";
import { MIMI_V1, getRoomVersion, supportedRoomVersions } from "../../src/roomVersions";
import {
  DEFAULT_ENCRYPTION_ALGORITHM,
  EventType,
  PARTICIPATIONS,
  authorize,
  checkEventSchema,
} from "../../src/roomVersions/mimi1";
import { fanOutServers, joinedServers, mayRead } from "../../src/roomVersions/servers";
import type {
  EventForFanOut,
  MembershipRules,
  Participation,
  RoomStateView,
} from "../../src/roomVersions/types";
import { ALICE, BOB, CAROL, DAVE, StateBuilder, emptyRoom, event, newRoom } from "./stateBuilder";

const ERIN = "@erin:e.example";
const FRANK = "@frank:f.example";
const HUB = "hub.example";

/** Alice (hub) and Bob (b) joined, Carol (c) invited, Erin (e) knocking, Frank (f) banned, Dave (hub) left. */
function mixedRoom(): StateBuilder {
  return newRoom()
    .joinRules("knock")
    .joined(BOB, DAVE)
    .user(CAROL, "invite", ALICE)
    .user(ERIN, "knock")
    .user(FRANK, "ban", ALICE)
    .user(DAVE, "leave");
}

const userEvent = (target: string, participation: string, extra: JsonObject = {}): EventForFanOut => ({
  type: EventType.User,
  state_key: target,
  content: { participation, ...extra },
});

describe("the version object names its create event and default algorithm (LM-04 §m.room.create, §MLS Considerations)", () => {
  it("is registered under its ID", () => {
    expect(getRoomVersion(MIMI_V1.id)).toBe(MIMI_V1);
    expect(supportedRoomVersions()).toEqual([MIMI_V1.id]);
  });

  it("the create event type is m.room.create and the default algorithm is the one constant", () => {
    expect(MIMI_V1.createEventType).toBe("m.room.create");
    expect(MIMI_V1.defaultEncryptionAlgorithm).toBe(DEFAULT_ENCRYPTION_ALGORITHM);
    expect(MIMI_V1.defaultEncryptionAlgorithm).toBe("m.mls.v1.dhkemx25519-aes128gcm-sha256-ed25519");
  });

  it.each<[string, string | undefined, string]>([
    ["the default algorithm", undefined, DEFAULT_ENCRYPTION_ALGORITHM],
    ["a given algorithm", "m.mls.v1.other-suite", "m.mls.v1.other-suite"],
  ])("createContent with %s is a create event the auth rules accept", (_what, algorithm, expected) => {
    const content = MIMI_V1.createContent(algorithm);
    expect(content).toEqual({ policy_id: MIMI_V1.id, encryption_algorithm: expected });
    const create = event(MIMI_V1.createEventType, ALICE, content, "");
    expect(MIMI_V1.authorize(emptyRoom(), create)).toEqual({ allowed: true });
  });
});

describe("membership: m.room.user and participation (Policy §User Participation)", () => {
  const membership = MIMI_V1.membership;

  it("participation events are m.room.user", () => {
    expect(membership.eventType).toBe(EventType.User);
  });

  it.each<[string, string, Participation | undefined]>([
    ["joined", ALICE, "join"],
    ["joined, then left", DAVE, "leave"],
    ["invited", CAROL, "invite"],
    ["knocking", ERIN, "knock"],
    ["banned", FRANK, "ban"],
    ["never in the room", "@nobody:x.example", undefined],
  ])("participationOf a user %s", (_what, userId, expected) => {
    expect(membership.participationOf(mixedRoom(), userId)).toBe(expected);
  });

  it("participationOf a user whose stored event holds no valid participation is undefined", () => {
    const room = newRoom().put(EventType.User, BOB, { participation: "joined" });
    expect(membership.participationOf(room, BOB)).toBeUndefined();
  });

  it.each<[JsonObject, Participation | undefined]>([
    [{ participation: "join" }, "join"],
    [{ participation: "ban", reason: "spam" }, "ban"],
    [{ participation: "Join" }, undefined],
    [{ participation: ["join"] }, undefined],
    [{ membership: "join" }, undefined],
    [{}, undefined],
  ])("participationIn %j is %s", (content, expected) => {
    expect(membership.participationIn(content)).toBe(expected);
  });

  it.each(
    PARTICIPATIONS.flatMap((change) => [
      [change, undefined, { participation: change }] as const,
      [change, "a reason", { participation: change, reason: "a reason" }] as const,
    ]),
  )("content(%s, %j) is %j, valid m.room.user content", (change, reason, expected) => {
    const content = membership.content(change, reason);
    expect(content).toEqual(expected);
    expect(membership.participationIn(content)).toBe(change);
    expect(checkEventSchema({ type: membership.eventType, stateKey: BOB, content })).toBeUndefined();
  });

  it("the auth rules read participation as participationOf does", () => {
    const room = mixedRoom();
    const join = (userId: string) =>
      authorize(room, event(membership.eventType, userId, membership.content("join"), userId));
    expect(membership.participationOf(room, FRANK)).toBe("ban");
    expect(join(FRANK)).toMatchObject({ allowed: false, rule: "participation.join.banned" });
    expect(membership.participationOf(room, CAROL)).toBe("invite");
    expect(join(CAROL)).toEqual({ allowed: true });
  });
});

describe("joinedServers: servers with at least one joined user (LM-04 §Sending Events)", () => {
  it.each<[string, () => RoomStateView, string[]]>([
    ["an empty room", emptyRoom, []],
    ["the creator alone", () => newRoom(), [HUB]],
    ["joined, invited, knocking, banned and left users", mixedRoom, [HUB, "b.example"]],
    ["a server whose only user left", () => newRoom().joined(BOB).user(BOB, "leave"), [HUB]],
    ["two users of one server", () => newRoom().joined(DAVE), [HUB]],
    ["a server whose users all left, the hub's too", () => newRoom().user(ALICE, "leave"), []],
    ["a user who was banned after joining", () => newRoom().joined(BOB).user(BOB, "ban", ALICE), [HUB]],
  ])("%s", (_what, room, expected) => {
    expect(MIMI_V1.joinedServers(room())).toEqual(new Set(expected));
  });
});

describe("fanOutServers: joined servers after the event, and the target of a leave or ban (LM-04 §Sending Events)", () => {
  it.each<[string, () => RoomStateView, EventForFanOut, string[]]>([
    ["a message", mixedRoom, { type: "org.example.message", content: { body: "hi" } }, [HUB, "b.example"]],
    [
      "a state event whose state key is a user ID",
      mixedRoom,
      { type: "org.example.status", state_key: CAROL, content: {} },
      [HUB, "b.example"],
    ],
    [
      "a join (state after it)",
      () => mixedRoom().user(CAROL, "join"),
      userEvent(CAROL, "join"),
      [HUB, "b.example", "c.example"],
    ],
    [
      "an invite: not the invitee's server",
      () => newRoom().user(CAROL, "invite", ALICE),
      userEvent(CAROL, "invite"),
      [HUB],
    ],
    [
      "a knock: not the knocker's server",
      () => newRoom().user(ERIN, "knock"),
      userEvent(ERIN, "knock"),
      [HUB],
    ],
    [
      "a voluntary leave of a server's last user",
      () => newRoom().joined(BOB).user(BOB, "leave"),
      userEvent(BOB, "leave"),
      [HUB, "b.example"],
    ],
    [
      "a kick",
      () => newRoom().joined(BOB).user(BOB, "leave", ALICE),
      userEvent(BOB, "leave"),
      [HUB, "b.example"],
    ],
    [
      "a ban",
      () => newRoom().joined(BOB).user(BOB, "ban", ALICE),
      userEvent(BOB, "ban", { reason: "spam" }),
      [HUB, "b.example"],
    ],
    [
      "a ban of a user never in the room",
      () => newRoom().user(FRANK, "ban", ALICE),
      userEvent(FRANK, "ban"),
      [HUB, "f.example"],
    ],
    [
      "a rescinded invite",
      () => newRoom().user(CAROL, "leave", ALICE),
      userEvent(CAROL, "leave"),
      [HUB, "c.example"],
    ],
    [
      "a leave whose server still has a joined user",
      () => newRoom().joined(DAVE).user(DAVE, "leave"),
      userEvent(DAVE, "leave"),
      [HUB],
    ],
    [
      "another type with a leave participation",
      () => newRoom(),
      { type: "org.example.user", state_key: BOB, content: { participation: "leave" } },
      [HUB],
    ],
    [
      "an m.room.user without a valid participation",
      () => newRoom(),
      { type: EventType.User, state_key: BOB, content: { participation: "gone" } },
      [HUB],
    ],
    [
      "an m.room.user whose state key is not a user ID",
      () => newRoom(),
      { type: EventType.User, state_key: "b.example", content: { participation: "ban" } },
      [HUB],
    ],
  ])("%s", (_what, stateAfter, fanned, expected) => {
    expect(MIMI_V1.fanOutServers(stateAfter(), fanned)).toEqual(new Set(expected));
  });

  it("returns a new set each time (callers delete their own server from it)", () => {
    const room = mixedRoom();
    const first = MIMI_V1.fanOutServers(room, { type: "org.example.message", content: {} });
    first.delete(HUB);
    expect(MIMI_V1.fanOutServers(room, { type: "org.example.message", content: {} }).has(HUB)).toBe(true);
  });
});

describe("mayRead: servers with a joined user, and the hub (LM-04 §Invites: invited is not participating)", () => {
  it.each<[string, string, string, boolean]>([
    ["the hub", HUB, HUB, true],
    ["a server with a joined user", "b.example", HUB, true],
    ["a server with only an invited user", "c.example", HUB, false],
    ["a server with only a knocking user", "e.example", HUB, false],
    ["a server with only a banned user", "f.example", HUB, false],
    ["a stranger", "x.example", HUB, false],
    ["the hub named by the room record even with no joined user", "hub2.example", "hub2.example", true],
  ])("%s (%s)", (_what, server, hubServer, expected) => {
    expect(MIMI_V1.mayRead(mixedRoom(), server, hubServer)).toBe(expected);
  });

  it("a server whose last user left may no longer read", () => {
    const room = newRoom().joined(BOB);
    expect(MIMI_V1.mayRead(room, "b.example", HUB)).toBe(true);
    room.user(BOB, "leave");
    expect(MIMI_V1.mayRead(room, "b.example", HUB)).toBe(false);
  });
});

describe("strippedStateTypes (LM-04 §Stripped State)", () => {
  it("lists create, name, avatar, topic and join rules", () => {
    expect(MIMI_V1.strippedStateTypes).toEqual([
      "m.room.create",
      "m.room.name",
      "m.room.avatar",
      "m.room.topic",
      "m.room.join_rules",
    ]);
  });

  it.each(MIMI_V1.strippedStateTypes.map((type) => [type]))(
    "%s is a room-wide state type of this version (empty state key)",
    (type) => {
      expect(checkEventSchema({ type, stateKey: "", content: {} })?.rule).not.toBe("schema.state_key");
      expect(checkEventSchema({ type, content: {} })?.rule).toBe("schema.state_key");
    },
  );
});

describe("fan-out and visibility follow the version's membership rules, not m.room.user", () => {
  /** LM-04 §m.room.member: what a second version would describe. */
  const LM_MEMBERSHIP: MembershipRules = {
    eventType: "m.room.member",
    participationIn: (content) => {
      const value = content["membership"];
      return typeof value === "string" && (PARTICIPATIONS as readonly string[]).includes(value)
        ? (value as Participation)
        : undefined;
    },
    participationOf: (state, userId) => {
      const entry = state.get("m.room.member", userId);
      return entry === undefined ? undefined : LM_MEMBERSHIP.participationIn(entry.content);
    },
    content: (change, reason): JsonObject => {
      const content: JsonObject = { membership: change };
      if (reason !== undefined) content.reason = reason;
      return content;
    },
  };

  function lmRoom(): StateBuilder {
    return emptyRoom()
      .put("m.room.create", "", { room_version: "I.1" })
      .put("m.room.member", ALICE, { membership: "join" })
      .put("m.room.member", BOB, { membership: "join" }, BOB)
      .put("m.room.member", CAROL, { membership: "invite" })
      .put(EventType.User, "@ghost:g.example", { participation: "join" });
  }

  it("joinedServers reads m.room.member's membership, and ignores m.room.user", () => {
    expect(joinedServers(LM_MEMBERSHIP, lmRoom())).toEqual(new Set([HUB, "b.example"]));
    expect(joinedServers(MIMI_V1.membership, lmRoom())).toEqual(new Set(["g.example"]));
  });

  it.each<[string, EventForFanOut, string[]]>([
    [
      "a kick",
      { type: "m.room.member", state_key: CAROL, content: LM_MEMBERSHIP.content("leave") },
      [HUB, "b.example", "c.example"],
    ],
    [
      "a ban",
      { type: "m.room.member", state_key: CAROL, content: LM_MEMBERSHIP.content("ban") },
      [HUB, "b.example", "c.example"],
    ],
    ["an m.room.user leave", userEvent(CAROL, "leave"), [HUB, "b.example"]],
  ])("fanOutServers for %s", (_what, fanned, expected) => {
    expect(fanOutServers(LM_MEMBERSHIP, lmRoom(), fanned)).toEqual(new Set(expected));
  });

  it.each<[string, boolean]>([
    [HUB, true],
    ["b.example", true],
    ["c.example", false],
    ["g.example", false],
  ])("mayRead %s: %s", (server, expected) => {
    expect(mayRead(LM_MEMBERSHIP, lmRoom(), server, HUB)).toBe(expected);
  });
});
