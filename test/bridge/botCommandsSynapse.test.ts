/**
 * The bot's command room and the bridge's permission list on a real Synapse: a Matrix user opens
 * a direct chat with the bot and creates, joins, lists and invites to MIMI rooms with commands;
 * a user whose level is `none` is refused everywhere and nothing reaches MIMI; an admin lists
 * every room. One Synapse and one provider process for the whole file.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { freePort } from "../../src/util/freePort";
import {
  adminCall,
  clientCall,
  HS,
  instance,
  ready,
  runMain,
  until,
  writeRegistration,
  type Instance,
  type Run,
} from "../support/appserviceRuns";
import { removeDir, tempDir } from "../support/services";
import { ensureSynapse, startSynapse, type SynapseHandle } from "../support/synapse";

const BOT = `@_mimi_bot:${HS}`;

interface TimelineEvent {
  event_id: string;
  sender: string;
  type: string;
  state_key?: string;
  content: { msgtype?: string; body?: string; membership?: string };
}

type Call = ReturnType<typeof clientCall>;

const isBotNotice = (e: TimelineEvent) =>
  e.sender === BOT && e.type === "m.room.message" && e.content.msgtype === "m.notice";

/** The room's timeline as `as` sees it, oldest first. */
async function timeline(as: Call, roomId: string): Promise<TimelineEvent[]> {
  const response = await as("GET", `/rooms/${encodeURIComponent(roomId)}/messages?dir=b&limit=200`);
  expect(response.status).toBe(200);
  return ((await response.json()) as { chunk: TimelineEvent[] }).chunk.reverse();
}

let txn = 0;
/** Sends a text message; answers its event ID. */
async function say(as: Call, roomId: string, body: string): Promise<string> {
  const response = await as("PUT", `/rooms/${encodeURIComponent(roomId)}/send/m.room.message/c${++txn}`, {
    msgtype: "m.text",
    body,
  });
  expect(response.status).toBe(200);
  return ((await response.json()) as { event_id: string }).event_id;
}

/** The bot's first notice after the event `eventId` (the answer to a command there). */
const noticeAfter = (as: Call, roomId: string, eventId: string, timeoutMs = 30_000) =>
  until(async () => {
    const events = await timeline(as, roomId);
    const at = events.findIndex((e) => e.event_id === eventId);
    return at === -1 ? undefined : events.slice(at + 1).find(isBotNotice)?.content.body;
  }, timeoutMs);

/** A command in a command room, and the bot's answer to it. */
async function command(as: Call, roomId: string, body: string): Promise<string> {
  return noticeAfter(as, roomId, await say(as, roomId, body));
}

/** The user opens a direct chat with the bot, as a client does; answers the room and the bot's first notice. */
async function directChat(as: Call): Promise<{ roomId: string; first: string }> {
  const created = await as("POST", "/createRoom", {
    preset: "trusted_private_chat",
    is_direct: true,
    invite: [BOT],
  });
  expect(created.status).toBe(200);
  const { room_id: roomId } = (await created.json()) as { room_id: string };
  const first = await until(async () => (await timeline(as, roomId)).find(isBotNotice)?.content.body, 30_000);
  return { roomId, first };
}

const botMembership = async (as: Call, roomId: string) =>
  (
    (await (
      await as("GET", `/rooms/${encodeURIComponent(roomId)}/state/m.room.member/${encodeURIComponent(BOT)}`)
    ).json()) as { membership?: string }
  ).membership;

describe("the bot's command room and the permission list, on a real Synapse", () => {
  let synapse: SynapseHandle;
  let synapseDir: string;
  let provider: Instance;
  let run: Run;
  let adminPort: unknown;
  let asAlice: Call;
  let asBob: Call;
  let asMallory: Call;
  let asRoot: Call;
  /** Made by alice's `create Planning` in the first test; the later tests use it. */
  let mimiRoomId: string;
  let portal: string;
  let aliceCommands: string;

  const admin = (path: string) => adminCall(adminPort, "GET", path);
  const mimiRoom = (roomId: string) =>
    admin(`/rooms/${encodeURIComponent(roomId)}`) as Promise<{
      role: string;
      participation: Record<string, string>;
      state: { type: string; content: { name?: string } }[];
    }>;
  const mimiHistory = async (roomId: string) =>
    (
      (await admin(`/rooms/${encodeURIComponent(roomId)}/history?limit=200`)) as {
        events: { type: string; sender: string }[];
      }
    ).events;

  beforeAll(async () => {
    ensureSynapse();
    synapseDir = tempDir("synapse-commands");
    const port = await freePort();
    provider = await instance("commands", `http://127.0.0.1:${port}`);
    writeFileSync(
      provider.config,
      readFileSync(provider.config, "utf8").replace(
        "appservice:\n",
        `appservice:\n  permissions: { ${HS}: user, "@mallory:${HS}": none, "@root:${HS}": admin }\n`,
      ),
    );
    await writeRegistration(provider, `http://127.0.0.1:${provider.appservicePort}`);
    synapse = await startSynapse({
      serverName: HS,
      dir: synapseDir,
      port,
      appserviceRegistrations: [provider.registration],
    });
    run = runMain(["-c", provider.config]);
    adminPort = (await ready(run)).admin_port;
    const call = async (localpart: string) =>
      clientCall(synapse.url, (await synapse.registerUser(localpart)).accessToken);
    asAlice = await call("alice");
    asBob = await call("bob");
    asMallory = await call("mallory");
    asRoot = await call("root");
  }, 240_000);

  afterAll(async () => {
    if (run !== undefined && run.child.exitCode === null) {
      run.child.kill("SIGTERM");
      await run.exited;
    }
    await synapse?.stop();
    for (const dir of [provider?.dir, synapseDir]) if (dir !== undefined) removeDir(dir);
  }, 60_000);

  it("a direct chat with the bot takes commands: help, create, join the portal and chat, rooms, invite", async () => {
    const dm = await directChat(asAlice);
    aliceCommands = dm.roomId;
    expect(dm.first).toContain("This is your command room");
    expect(dm.first).toContain("create [name]");
    // Admin commands are not offered to a plain user.
    expect(dm.first).not.toContain("rooms all");

    const help = await command(asAlice, dm.roomId, "help");
    expect(help).toContain("Commands (a leading ! is optional):");
    expect(help).toContain("- invite <MIMI room ID or its Matrix room ID> <MIMI user ID>");

    // create: a MIMI room hosted here with alice as its creator, named, and a portal she is invited to.
    const created = await command(asAlice, dm.roomId, "!create Planning");
    const match = /Created the MIMI room "Planning" (![^ ]+)\. Its Matrix room is (![^ ]+) \(/.exec(created);
    expect(match).not.toBeNull();
    [, mimiRoomId, portal] = match as unknown as [string, string, string];
    expect(created).toContain(`https://matrix.to/#/${encodeURIComponent(portal)}`);
    const room = await mimiRoom(mimiRoomId);
    expect(room.role).toBe("hub");
    expect(room.participation).toEqual({ [`@alice:${HS}`]: "join" });
    expect(room.state.find((e) => e.type === "m.room.name")?.content.name).toBe("Planning");
    // The command room itself is no MIMI room.
    expect(((await admin("/rooms")) as { rooms: string[] }).rooms).toEqual([mimiRoomId]);

    // She accepts the bot's invite; the portal has the name; her message lands in the MIMI room.
    expect((await asAlice("POST", `/join/${encodeURIComponent(portal)}`, {})).status).toBe(200);
    const name = (await (
      await asAlice("GET", `/rooms/${encodeURIComponent(portal)}/state/m.room.name/`)
    ).json()) as { name?: string };
    expect(name.name).toBe("Planning");
    await say(asAlice, portal, "agenda: budget");
    await until(async () =>
      (await mimiHistory(mimiRoomId)).find(
        (e) => e.type === "m.room.encrypted" && e.sender === `@alice:${HS}`,
      ),
    );

    // rooms: the room, its name, hub and portal.
    expect(await command(asAlice, dm.roomId, "rooms")).toBe(
      `Your MIMI rooms (1):\n- "Planning" ${mimiRoomId}, hub ${HS}, Matrix room ${portal}`,
    );

    // invite by the portal's Matrix room ID: bob is invited in MIMI and to the portal; his join joins him.
    expect(await command(asAlice, dm.roomId, `invite ${portal} @bob:${HS}`)).toBe(
      `Invited @bob:${HS} to the MIMI room ${mimiRoomId}. The bot invited them to its Matrix room ${portal}.`,
    );
    expect((await mimiRoom(mimiRoomId)).participation[`@bob:${HS}`]).toBe("invite");
    expect((await asBob("POST", `/join/${encodeURIComponent(portal)}`, {})).status).toBe(200);
    await until(async () =>
      (await mimiRoom(mimiRoomId)).participation[`@bob:${HS}`] === "join" ? true : undefined,
    );
    // A refusal is answered with its reason as it is.
    expect(await command(asAlice, dm.roomId, `invite !nowhere:${HS} @bob:${HS}`)).toBe(
      `@bob:${HS} was not invited to !nowhere:${HS}: ${HS} is not in room !nowhere:${HS}`,
    );

    // Each command was answered once: the greeting and five answers.
    expect((await timeline(asAlice, dm.roomId)).filter(isBotNotice)).toHaveLength(6);
  }, 180_000);

  it("a user whose level is none is refused everywhere, and nothing reaches MIMI", async () => {
    const refusal = `@mallory:${HS} is not allowed to use this MIMI bridge`;
    // Her direct chat with the bot: a refusal, and the bot leaves.
    const dm = await directChat(asMallory);
    expect(dm.first).toContain(refusal);
    await until(async () => ((await botMembership(asMallory, dm.roomId)) === "leave" ? true : undefined));
    // A room she invites the bot to becomes no portal.
    const created = await asMallory("POST", "/createRoom", { name: "Mine", invite: [BOT] });
    const { room_id: roomId } = (await created.json()) as { room_id: string };
    const notice = await until(
      async () => (await timeline(asMallory, roomId)).find(isBotNotice)?.content.body,
    );
    expect(notice).toContain(refusal);
    await until(async () => ((await botMembership(asMallory, roomId)) === "leave" ? true : undefined));
    expect(((await admin("/rooms")) as { rooms: string[] }).rooms).toEqual([mimiRoomId]);

    // Let into a portal on Matrix, her join and her message are refused, once each.
    expect(
      (await asAlice("POST", `/rooms/${encodeURIComponent(portal)}/invite`, { user_id: `@mallory:${HS}` }))
        .status,
    ).toBe(200);
    expect((await asMallory("POST", `/join/${encodeURIComponent(portal)}`, {})).status).toBe(200);
    const join = await until(async () =>
      (await timeline(asMallory, portal)).find(
        (e) =>
          e.type === "m.room.member" && e.state_key === `@mallory:${HS}` && e.content.membership === "join",
      ),
    );
    expect(await noticeAfter(asMallory, portal, join.event_id)).toContain(refusal);
    expect(await noticeAfter(asMallory, portal, await say(asMallory, portal, "let me in"))).toContain(
      refusal,
    );
    // Alice's invite of her is alice's to make; mallory's own join is not made.
    expect((await mimiRoom(mimiRoomId)).participation[`@mallory:${HS}`]).toBe("invite");
    expect((await mimiHistory(mimiRoomId)).filter((e) => e.sender === `@mallory:${HS}`)).toEqual([]);
    const refusals = (await timeline(asMallory, portal)).filter(
      (e) => isBotNotice(e) && e.content.body?.includes(refusal),
    );
    expect(refusals).toHaveLength(2);
  }, 120_000);

  it("an unknown command is answered naming it; rooms all is for admins, with member counts", async () => {
    expect(await command(asAlice, aliceCommands, "frobnicate the room")).toBe(
      'Unknown command "frobnicate". Send help for the list of commands.',
    );
    expect(await command(asAlice, aliceCommands, "rooms all")).toBe("rooms all is for the bridge's admins.");
    const dm = await directChat(asRoot);
    expect(dm.first).toContain("rooms all");
    expect(await command(asRoot, dm.roomId, "!rooms all")).toBe(
      `Every MIMI room of this provider (1):\n- "Planning" ${mimiRoomId}, hub ${HS} (hub), 2 members`,
    );
    // The admin is in no room of their own.
    expect(await command(asRoot, dm.roomId, "rooms")).toContain("You are in no MIMI room");
  }, 120_000);
});
