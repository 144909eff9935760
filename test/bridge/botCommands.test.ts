/**
 * The bot's commands: parsing (a table of bodies) and the handler, with its effects recorded by
 * fakes of the rooms API and the bridge (the real ones run on Synapse in botCommandsSynapse.test.ts).
 */
import {
  helpText,
  parseCommand,
  runCommand,
  type BotCommand,
  type BotCommandDeps,
  type CommandContext,
} from "../../src/bridge/botCommands";
import type { PermissionLevel } from "../../src/bridge/permissions";
import { HomeserverError } from "../../src/bridge/homeserverClient";
import { isTransient } from "../../src/bridge/matrixBridge";
import { MimiError } from "../../src/errors";
import type { RoomInfo } from "../../src/provider/roomsApiTypes";

describe("parseCommand", () => {
  it.each<[string, BotCommand | undefined]>([
    ["help", { kind: "help" }],
    ["!help", { kind: "help" }],
    ["  HELP  ", { kind: "help" }],
    ["! help", { kind: "help" }],
    ["help me please", { kind: "help" }],
    ["create", { kind: "create", name: undefined }],
    ["create   ", { kind: "create", name: undefined }],
    ["create Planning", { kind: "create", name: "Planning" }],
    ["!create  Q3 planning  room ", { kind: "create", name: "Q3 planning  room" }],
    ["Create Été", { kind: "create", name: "Été" }],
    ["invite !r:hs.test @bob:b.example", { kind: "invite", room: "!r:hs.test", user: "@bob:b.example" }],
    ["!invite   !r:hs.test\t@bob:b.example", { kind: "invite", room: "!r:hs.test", user: "@bob:b.example" }],
    [
      "invite !opaqueV12RoomId @bob:b.example",
      { kind: "invite", room: "!opaqueV12RoomId", user: "@bob:b.example" },
    ],
    ["invite", { kind: "usage", command: "invite" }],
    ["invite !r:hs.test", { kind: "usage", command: "invite" }],
    ["invite @bob:b.example !r:hs.test", { kind: "usage", command: "invite" }],
    ["invite !r:hs.test bob", { kind: "usage", command: "invite" }],
    ["invite !r:hs.test @bob:b.example @carol:c.example", { kind: "usage", command: "invite" }],
    ["rooms", { kind: "rooms", all: false }],
    ["!rooms ALL", { kind: "rooms", all: true }],
    ["rooms mine", { kind: "usage", command: "rooms" }],
    ["rooms all please", { kind: "usage", command: "rooms" }],
    ["frobnicate", { kind: "unknown", command: "frobnicate" }],
    ["!Frobnicate the room", { kind: "unknown", command: "Frobnicate" }],
    ["hello bot", { kind: "unknown", command: "hello" }],
    ["!!help", { kind: "unknown", command: "!help" }],
    ["", undefined],
    ["   ", undefined],
    ["!", undefined],
  ])("%j", (body, command) => {
    expect(parseCommand(body)).toEqual(command);
  });
});

describe("helpText", () => {
  it("lists rooms all for admins only", () => {
    expect(helpText("user")).toContain("create [name]");
    expect(helpText("user")).toContain("invite <");
    expect(helpText("user")).not.toContain("rooms all");
    expect(helpText("admin")).toContain("rooms all");
  });
});

describe("runCommand", () => {
  const ALICE = "@alice:hs.test";
  let calls: string[];
  let rooms: Record<string, RoomInfo>;
  let inviteError: Error | undefined;
  let portalInviteError: Error | undefined;
  let deps: BotCommandDeps;
  const ctx = (level: PermissionLevel = "user"): CommandContext => ({
    matrixUser: ALICE,
    mimiUser: ALICE,
    level,
    txnId: (purpose) => `t-${purpose}`,
  });
  const room = (roomId: string, participation: Record<string, string>, name?: string): RoomInfo => ({
    roomId,
    roomVersion: "io.mimi-appservice.room.v1",
    hubServer: roomId.slice(roomId.indexOf(":") + 1),
    role: roomId.endsWith(":hs.test") ? "hub" : "follower",
    headSeq: 3,
    headEventId: "$h",
    participation,
    state:
      name === undefined ? [] : [{ type: "m.room.name", stateKey: "", sender: ALICE, content: { name } }],
  });

  beforeEach(() => {
    calls = [];
    inviteError = undefined;
    portalInviteError = undefined;
    rooms = {
      "!a:hs.test": room("!a:hs.test", { [ALICE]: "join", "@bob:b.example": "join" }, "Planning"),
      "!b:b.example": room("!b:b.example", {
        [ALICE]: "join",
        "@bob:b.example": "join",
        "@c:b.example": "join",
      }),
      "!c:hs.test": room("!c:hs.test", { [ALICE]: "leave", "@dan:hs.test": "join" }),
    };
    deps = {
      rooms: {
        createRoom: async ({ creator, txnId }) => {
          calls.push(`createRoom ${creator} ${txnId}`);
          return { roomId: "!new:hs.test" };
        },
        send: async ({ roomId, type, content, txnId }) => {
          calls.push(`send ${roomId} ${type} ${JSON.stringify(content)} ${txnId}`);
          return { eventId: "$name" };
        },
        invite: async ({ roomId, sender, target, txnId }) => {
          calls.push(`invite ${roomId} ${sender} ${target} ${txnId}`);
          if (inviteError !== undefined) throw inviteError;
          return { eventId: "$invite" };
        },
        listRooms: () => Object.keys(rooms),
        roomInfo: (roomId) => rooms[roomId],
      },
      openPortal: async (mimiRoomId, user, name) => {
        calls.push(`openPortal ${mimiRoomId} ${user} ${name ?? "-"}`);
        return "!portal:hs.test";
      },
      portalOf: async (matrixRoomId) => (matrixRoomId === "!portal-a:hs.test" ? "!a:hs.test" : undefined),
      portalFor: async (mimiRoomId) => (mimiRoomId === "!a:hs.test" ? "!portal-a:hs.test" : undefined),
      invitePortal: async (mimiRoomId, user) => {
        if (!user.endsWith(":hs.test") || mimiRoomId !== "!a:hs.test") return undefined;
        calls.push(`invitePortal ${mimiRoomId} ${user}`);
        if (portalInviteError !== undefined) throw portalInviteError;
        return "!portal-a:hs.test";
      },
      mimiUserOfGhost: (id) => (id === "@_mimi_bob=3ab.example:hs.test" ? "@bob:b.example" : undefined),
      isTransient,
    };
  });

  it("help answers the command list", async () => {
    expect(await runCommand({ kind: "help" }, ctx(), deps)).toBe(helpText("user"));
  });

  it("create makes the MIMI room with the user as creator, names it, opens its portal and links it", async () => {
    const answer = await runCommand({ kind: "create", name: "Q3" }, ctx(), deps);
    expect(calls).toEqual([
      "createRoom @alice:hs.test t-create",
      'send !new:hs.test m.room.name {"name":"Q3"} t-create-name',
      "openPortal !new:hs.test @alice:hs.test Q3",
    ]);
    expect(answer).toContain('"Q3" !new:hs.test');
    expect(answer).toContain("!portal:hs.test");
    expect(answer).toContain("https://matrix.to/#/!portal%3Ahs.test");
  });

  it("create without a name sets none", async () => {
    await runCommand({ kind: "create", name: undefined }, ctx(), deps);
    expect(calls).toEqual(["createRoom @alice:hs.test t-create", "openPortal !new:hs.test @alice:hs.test -"]);
  });

  it("invite takes a portal's Matrix room ID or a MIMI room ID, and a ghost or a MIMI user ID", async () => {
    expect(
      await runCommand({ kind: "invite", room: "!portal-a:hs.test", user: "@bob:b.example" }, ctx(), deps),
    ).toBe("Invited @bob:b.example to the MIMI room !a:hs.test.");
    await runCommand(
      { kind: "invite", room: "!b:b.example", user: "@_mimi_bob=3ab.example:hs.test" },
      ctx(),
      deps,
    );
    expect(calls).toEqual([
      "invite !a:hs.test @alice:hs.test @bob:b.example t-invite",
      "invite !b:b.example @alice:hs.test @bob:b.example t-invite",
    ]);
  });

  it("invite of a local user also invites their Matrix account to the portal", async () => {
    expect(await runCommand({ kind: "invite", room: "!a:hs.test", user: "@dan:hs.test" }, ctx(), deps)).toBe(
      "Invited @dan:hs.test to the MIMI room !a:hs.test. The bot invited them to its Matrix room !portal-a:hs.test.",
    );
    portalInviteError = new HomeserverError("403 M_FORBIDDEN dan is banned", 403, "M_FORBIDDEN");
    expect(await runCommand({ kind: "invite", room: "!a:hs.test", user: "@dan:hs.test" }, ctx(), deps)).toBe(
      "Invited @dan:hs.test to the MIMI room !a:hs.test. The bot could not invite them to its Matrix room: 403 M_FORBIDDEN dan is banned",
    );
    expect(calls).toEqual([
      "invite !a:hs.test @alice:hs.test @dan:hs.test t-invite",
      "invitePortal !a:hs.test @dan:hs.test",
      "invite !a:hs.test @alice:hs.test @dan:hs.test t-invite",
      "invitePortal !a:hs.test @dan:hs.test",
    ]);
  });

  it("invite answers the MIMI policy's refusal verbatim", async () => {
    inviteError = new MimiError("M_FORBIDDEN", "sender's role may not invite (mimi1.auth.invite_power)");
    expect(await runCommand({ kind: "invite", room: "!a:hs.test", user: "@x:c.example" }, ctx(), deps)).toBe(
      "@x:c.example was not invited to !a:hs.test: sender's role may not invite (mimi1.auth.invite_power)",
    );
  });

  it("a failure worth waiting out is thrown, for the bridge to try again", async () => {
    inviteError = new MimiError("M_UNKNOWN", "the hub does not answer");
    await expect(
      runCommand({ kind: "invite", room: "!a:hs.test", user: "@x:c.example" }, ctx(), deps),
    ).rejects.toThrow("the hub does not answer");
  });

  it("rooms lists the rooms the user has joined, with name, hub and portal", async () => {
    const answer = await runCommand({ kind: "rooms", all: false }, ctx(), deps);
    expect(answer.split("\n")).toEqual([
      "Your MIMI rooms (2):",
      '- "Planning" !a:hs.test, hub hs.test, Matrix room !portal-a:hs.test',
      "- !b:b.example, hub b.example, no Matrix room",
    ]);
    rooms = {};
    expect(await runCommand({ kind: "rooms", all: false }, ctx(), deps)).toContain("You are in no MIMI room");
  });

  it("rooms all is for admins: every room with its member count", async () => {
    expect(await runCommand({ kind: "rooms", all: true }, ctx("user"), deps)).toBe(
      "rooms all is for the bridge's admins.",
    );
    const answer = await runCommand({ kind: "rooms", all: true }, ctx("admin"), deps);
    expect(answer.split("\n")).toEqual([
      "Every MIMI room of this provider (3):",
      '- "Planning" !a:hs.test, hub hs.test (hub), 2 members',
      "- !b:b.example, hub b.example (follower), 3 members",
      "- !c:hs.test, hub hs.test (hub), 1 member",
    ]);
  });

  it("a user whose level is none is refused, and nothing is done", async () => {
    for (const command of [
      { kind: "help" },
      { kind: "create", name: "x" },
      { kind: "invite", room: "!a:hs.test", user: "@bob:b.example" },
      { kind: "rooms", all: false },
    ] as BotCommand[]) {
      expect(await runCommand(command, ctx("none"), deps)).toContain(
        "is not allowed to use this MIMI bridge",
      );
    }
    expect(calls).toEqual([]);
  });

  it("an unknown command is named, pointing to help; a wrong use shows the usage", async () => {
    expect(await runCommand({ kind: "unknown", command: "frob" }, ctx(), deps)).toBe(
      'Unknown command "frob". Send help for the list of commands.',
    );
    expect(await runCommand({ kind: "usage", command: "invite" }, ctx(), deps)).toBe(
      "Usage: invite <MIMI room ID or its Matrix room ID> <MIMI user ID>",
    );
    expect(await runCommand({ kind: "usage", command: "rooms" }, ctx("admin"), deps)).toBe(
      "Usage: rooms | rooms all",
    );
  });
});
