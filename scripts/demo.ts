/**
 * `npm run demo`: three MIMI providers on 127.0.0.1 talk over real HTTP with
 * on-disk LevelDB, play a short conversation in an MLS-encrypted room, and
 * print each room's linear history as every provider sees it (with the MLS
 * epoch of each event), one message as it crossed the wire, and what each
 * user's hosted MLS client decrypted. Then a real Synapse joins in: its user
 * mia creates a room with the appservice's bot invited, invites bob of
 * b.example through his ghost, and they chat, MLS-encrypted between providers.
 */
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { writeFileSync } from "node:fs";
import { Appservice } from "../src/bridge/appservice";
import { buildRegistration, registrationYaml } from "../src/bridge/registration";
import { identityOf, readRegistration } from "../src/bridge/registrationFile";
import { parseConfig } from "../src/config/config";
import { createLogger } from "../src/logging";
import { ensureSynapse, startSynapse } from "../test/support/synapse";
import type { FullyFormedEvent, JsonObject } from "../src/events/types";
import { MimiProvider } from "../src/provider/provider";
import { decodeMlsMessageOf, fromBase64 } from "../src/mls/clients/wire";
import { addedUsers } from "../src/mls/federation/welcomes";
import { decodePublicMessageMessage } from "../src/mls/observer/wire";
import type { HistoryEntry } from "../src/provider/roomsApiTypes";
import { freePort } from "../src/util/freePort";

const NAMES = ["a.example", "b.example", "c.example"] as const;
/** The fourth provider, the appservice of a real Synapse whose server name it shares. */
const HS = "hs.example";
const MIA = "@mia:hs.example";
const ALICE = "@alice:a.example";
const BOB = "@bob:b.example";
const CAROL = "@carol:c.example";

/** The epoch an m.mls.commit begins: its GroupInfo says so in the clear. */
function commitEpoch(event: FullyFormedEvent): bigint {
  const bytes = fromBase64(event.content.public_group_state as string);
  return decodeMlsMessageOf(bytes, "mls_group_info").groupInfo.groupContext.epoch;
}

/** What a commit does, from its PublicMessage (the hub and every provider can read it). */
function describeCommit(event: FullyFormedEvent): string {
  const content = decodePublicMessageMessage(fromBase64(event.content.message as string), "commit").content;
  if (content.contentType !== "commit") return "?";
  if (content.sender.senderType === "new_member_commit") return "external join";
  const parts = addedUsers(fromBase64(event.content.message as string)).map((a) => `add ${a.userId}`);
  const removes = content.commit.proposals.filter(
    (p) => p.proposalOrRefType === "proposal" && p.proposal.proposalType === "remove",
  ).length;
  if (removes > 0) parts.push(`remove ${removes} client${removes > 1 ? "s" : ""}`);
  return parts.length > 0 ? parts.join(", ") : "new group (first commit)";
}

function summary(event: FullyFormedEvent): string {
  const c = event.content as Record<string, unknown>;
  switch (event.type) {
    case "m.mls.commit":
      return `MLS commit -> epoch ${commitEpoch(event)}: ${describeCommit(event)}`;
    case "m.room.encrypted":
      return `ciphertext ${(c.ciphertext as string).slice(0, 24)}… (commit ${(c.commit_event_id as string).slice(0, 9)}…)`;
    case "m.room.create":
      return `room created (policy ${String(c.policy_id)})`;
    case "m.room.user":
      return `${event.state_key} -> ${String(c.participation)}${c.reason ? ` (${String(c.reason)})` : ""}`;
    case "m.room.name":
      return `name "${String(c.name)}"`;
    case "m.room.join_rules":
      return `join rule ${String(c.rule)}`;
    case "m.room.roles":
      return `roles ${Object.keys(c.roles as object).join(", ")}`;
    default:
      return typeof c.body === "string" ? `"${c.body}"` : JSON.stringify(c);
  }
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "mimi-demo-"));
  const ports = await Promise.all(NAMES.map(() => freePort()));
  const hsPort = await freePort();
  const routes = [
    ...NAMES.map((n, i) => `    ${n}: http://127.0.0.1:${ports[i]}`),
    `    ${HS}: http://127.0.0.1:${hsPort}`,
  ];
  const providers: MimiProvider[] = [];
  try {
    for (const [i, name] of NAMES.entries()) {
      mkdirSync(join(dir, name));
      const config = parseConfig(
        [
          `server_name: ${name}`,
          "federation:",
          "  bind_address: 127.0.0.1",
          `  port: ${ports[i]}`,
          "  well_known: false",
          "  static_routes:",
          ...routes,
          "logging: { level: warn }",
        ].join("\n"),
        join(dir, name),
      );
      providers.push(await MimiProvider.start(config));
      console.log(`${name}: federation listener on 127.0.0.1:${ports[i]}, data in ${join(dir, name)}`);
    }
    const [a, b, c] = providers as [MimiProvider, MimiProvider, MimiProvider];
    const step = (text: string) => console.log(`  * ${text}`);

    console.log("\nConversation:");
    let txn = 0;
    const txnId = () => `demo-${++txn}`;
    const { roomId } = await a.rooms.createRoom({ creator: ALICE, roomLocalpart: "demo", txnId: txnId() });
    step(`alice creates ${roomId}; a.example is its hub`);
    const send = (p: MimiProvider, sender: string, type: string, content: JsonObject, stateKey?: string) =>
      p.rooms.send({
        roomId,
        sender,
        type,
        content,
        txnId: txnId(),
        ...(stateKey === undefined ? {} : { stateKey }),
      });
    await send(a, ALICE, "m.room.name", { name: "MIMI demo" }, "");
    await send(a, ALICE, "m.room.join_rules", { rule: "knock" }, "");
    await a.rooms.invite({ roomId, sender: ALICE, target: BOB, txnId: txnId() });
    step("alice invites bob: b.example is asked first, then the invite is sequenced");
    await b.rooms.changeOwnParticipation({ roomId, user: BOB, change: "join", txnId: txnId() });
    step("bob joins through make_join/send_join; b.example pulls the history and follows the room");
    await c.rooms.changeOwnParticipation({ roomId, user: CAROL, change: "knock", txnId: txnId() });
    step("carol knocks from c.example");
    await a.rooms.invite({ roomId, sender: ALICE, target: CAROL, txnId: txnId() });
    await c.rooms.changeOwnParticipation({ roomId, user: CAROL, change: "join", txnId: txnId() });
    step("alice lets carol in; carol joins");
    await inOneGroup(roomId, [
      [a, ALICE],
      [b, BOB],
      [c, CAROL],
    ]);
    step(
      "alice's client added bob's and carol's to the room's MLS group: KeyPackages claimed from b.example " +
        "and c.example, each Welcome passed on by the hub",
    );
    const sentBodies: string[] = [];
    const message = (p: MimiProvider, sender: string, body: string) => {
      sentBodies.push(body);
      return p.rooms.sendMessage({
        roomId,
        sender,
        type: "m.room.message",
        content: { body },
        txnId: txnId(),
      });
    };
    const { eventId: bobsMessage } = await message(b, BOB, "Hello from b.example!");
    await message(c, CAROL, "And hello from c.example.");
    await message(a, ALICE, "Welcome, both of you.");
    step("all three send messages, encrypted by their hosted MLS clients (followers' go through the hub)");
    await c.rooms.changeOwnParticipation({
      roomId,
      user: CAROL,
      change: "leave",
      reason: "off to lunch",
      txnId: txnId(),
    });
    await inOneGroup(roomId, [
      [a, ALICE],
      [b, BOB],
    ]);
    step("carol leaves; a member's client commits her removal from the group");
    await message(b, BOB, "Carol cannot read this one.");
    step("bob sends one more message");

    // Let the last fan-out land everywhere.
    const hubHistory = await historyOf(a, roomId);
    for (let i = 0; i < 100; i++) {
      const lengths = await Promise.all([b, c].map(async (p) => (await historyOf(p, roomId)).length));
      if (lengths.every((n) => n === hubHistory.length)) break;
      await new Promise((r) => setTimeout(r, 50));
    }

    for (const provider of providers) {
      const history = await historyOf(provider, roomId);
      const role = provider.rooms.roomInfo(roomId)?.role ?? "-";
      console.log(`\nRoom ${roomId} as seen by ${provider.serverName} (${role}), ${history.length} events:`);
      console.log("  seq  event ID        epoch  sender             type                 content");
      let epoch = "-";
      for (const { seq, eventId, event } of history) {
        if (event.type === "m.mls.commit") epoch = String(commitEpoch(event));
        console.log(
          `  ${String(seq).padStart(3)}  ${eventId.slice(0, 13)}…  ${epoch.padStart(5)}  ${event.sender.padEnd(18)} ${event.type.padEnd(20)} ${summary(event)}`,
        );
      }
    }
    const wire = (await historyOf(a, roomId)).find((e) => e.eventId === bobsMessage)!;
    console.log(`\nBob's first message as it crossed the wire (b.example -> a.example -> c.example):`);
    console.log(
      JSON.stringify(
        { type: wire.event.type, sender: wire.event.sender, content: wire.event.content },
        null,
        2,
      )
        .split("\n")
        .map((line) => `  ${line.length > 110 ? `${line.slice(0, 107)}...` : line}`)
        .join("\n"),
    );
    for (const [provider, user] of [
      [a, ALICE],
      [b, BOB],
      [c, CAROL],
    ] as const) {
      const seen = await provider.rooms.messages(roomId, user, { fromSeq: 1, limit: 1000 });
      const group = await provider.rooms.clientGroup(roomId, user);
      console.log(`\nWhat ${user}'s MLS client decrypted (it is at epoch ${group?.epoch}):`);
      for (const m of seen) {
        const text =
          m.content?.body === undefined ? `(${m.reason ?? m.status})` : `"${String(m.content.body)}"`;
        console.log(
          `  ${String(m.seq).padStart(3)}  epoch ${m.epoch.padStart(2)}  ${m.status.padEnd(9)}  ${m.sender.padEnd(18)} ${text}`,
        );
      }
    }
    // c.example has no joined user after carol leaves: it holds the history up to her leave.
    const ids = await Promise.all(
      providers.map(async (p) => (await historyOf(p, roomId)).map((e) => e.eventId)),
    );
    const prefixes = ids.every((list) => list.every((id, i) => id === ids[0]![i]));
    console.log(
      prefixes
        ? "\nAll three providers hold the same linear history (same event IDs, same order; c.example's ends at carol's leave)."
        : "\nThe providers' histories differ!",
    );
    const everything = JSON.stringify(await historyOf(a, roomId));
    console.log(
      sentBodies.some((body) => everything.includes(body))
        ? "A message's plaintext is in the history!"
        : "No message's plaintext is in any event: each message crossed federation as an m.room.encrypted event.",
    );
    await matrixPart(dir, routes, hsPort, b);
  } finally {
    await Promise.all(providers.map((p) => p.stop()));
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Part two: a Matrix user on a real Synapse chats with bob of b.example through the appservice. */
async function matrixPart(dir: string, routes: string[], hsPort: number, b: MimiProvider): Promise<void> {
  console.log(
    "\nPart two, a Matrix homeserver: a real Synapse, and this project as its appservice (hs.example).",
  );
  ensureSynapse();
  const [synapsePort, appservicePort] = [await freePort(), await freePort()];
  const home = join(dir, HS);
  mkdirSync(home);
  const config = parseConfig(
    [
      `server_name: ${HS}`,
      "federation:",
      "  bind_address: 127.0.0.1",
      `  port: ${hsPort}`,
      "  well_known: false",
      "  static_routes:",
      ...routes,
      `homeserver: { url: "http://127.0.0.1:${synapsePort}" }`,
      `appservice: { port: ${appservicePort} }`,
      "logging: { level: warn }",
    ].join("\n"),
    home,
  );
  const matrix = config.matrix!;
  // What `npm start -- -c config.yaml -r -u <url>` writes, for Synapse's app_service_config_files.
  writeFileSync(
    matrix.appservice.registrationPath,
    registrationYaml(buildRegistration(identityOf(matrix), `http://127.0.0.1:${appservicePort}`)),
  );
  const synapse = await startSynapse({
    serverName: HS,
    dir: join(dir, "synapse"),
    port: synapsePort,
    appserviceRegistrations: [matrix.appservice.registrationPath],
  });
  const provider = await MimiProvider.start(config);
  let appservice: Appservice | undefined;
  try {
    appservice = await Appservice.start({
      matrix,
      registration: readRegistration(matrix),
      kv: provider.kv,
      log: createLogger("appservice"),
      rooms: provider.rooms,
      mimiServerName: HS,
    });
    const step = (text: string) => console.log(`  * ${text}`);
    step(
      `Synapse on 127.0.0.1:${synapsePort}; the appservice passed its self-check (versions, whoami, ping)`,
    );
    const mia = await synapse.registerUser("mia");
    const asMia = async (method: string, path: string, body?: unknown) => {
      const response = await fetch(`${synapse.url}/_matrix/client/v3${path}`, {
        method,
        headers: { authorization: `Bearer ${mia.accessToken}`, "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      return (await response.json()) as Record<string, unknown>;
    };
    const timeline = async (matrixRoomId: string) =>
      (
        (await asMia("GET", `/rooms/${encodeURIComponent(matrixRoomId)}/messages?dir=f&limit=100`)) as {
          chunk: {
            sender: string;
            type: string;
            content: { msgtype?: string; body?: string; membership?: string };
          }[];
        }
      ).chunk;
    const until = async <T>(probe: () => Promise<T | undefined>): Promise<T> => {
      for (let i = 0; i < 600; i++) {
        const value = await probe();
        if (value !== undefined) return value;
        await new Promise((r) => setTimeout(r, 50));
      }
      throw new Error("the demo timed out");
    };
    const bot = `@_mimi_bot:${HS}`;
    const { room_id: matrixRoomId } = (await asMia("POST", "/createRoom", {
      name: "Matrix meets MIMI",
      invite: [bot],
    })) as { room_id: string };
    const notice = await until(async () =>
      (await timeline(matrixRoomId)).find((e) => e.sender === bot && e.content.msgtype === "m.notice"),
    );
    const mimiRoomId = /MIMI room (\S+),/.exec(notice.content.body ?? "")![1]!;
    step(
      `mia creates the Matrix room ${matrixRoomId} with the bot invited: it becomes the portal of ${mimiRoomId}`,
    );
    const bobGhost = `@_mimi_bob=3ab.example:${HS}`;
    await asMia("POST", `/rooms/${encodeURIComponent(matrixRoomId)}/invite`, { user_id: bobGhost });
    await until(async () => (await b.rooms.listInvites(BOB)).find((i) => i.roomId === mimiRoomId));
    await b.rooms.changeOwnParticipation({ roomId: mimiRoomId, user: BOB, change: "join", txnId: "demo-m1" });
    step(`mia invites bob's ghost ${bobGhost}; b.example gets the MIMI invite and bob joins`);
    await inOneGroup(mimiRoomId, [
      [provider, MIA],
      [b, BOB],
    ]);
    await b.rooms.sendMessage({
      roomId: mimiRoomId,
      sender: BOB,
      type: "m.room.message",
      content: { msgtype: "m.text", body: "Hi Mia, this is Bob on b.example." },
      txnId: "demo-m2",
    });
    await until(async () =>
      (await timeline(matrixRoomId)).find((e) => e.sender === bobGhost && e.type === "m.room.message"),
    );
    await asMia("PUT", `/rooms/${encodeURIComponent(matrixRoomId)}/send/m.room.message/demo-m3`, {
      msgtype: "m.text",
      body: "Hi Bob, this is Mia in her Matrix client.",
    });
    const fromMia = await until(async () =>
      (await b.rooms.messages(mimiRoomId, BOB, { fromSeq: 1, limit: 1000 })).find((m) => m.sender === MIA),
    );
    step("bob writes from b.example, mia answers from Matrix; each side decrypts the other's message");

    console.log(`\nMia's Matrix room ${matrixRoomId}, as her client sees it:`);
    for (const e of await timeline(matrixRoomId)) {
      const what =
        e.type === "m.room.member"
          ? `(${e.content.membership})`
          : e.type === "m.room.message"
            ? `"${e.content.body}"`
            : "";
      if (e.type === "m.room.member" || e.type === "m.room.message") {
        console.log(`  ${e.sender.padEnd(34)} ${e.type.padEnd(15)} ${what}`);
      }
    }
    console.log(`\nThe MIMI room ${mimiRoomId} at its hub hs.example:`);
    for (const { seq, event } of await historyOf(provider, mimiRoomId)) {
      console.log(
        `  ${String(seq).padStart(3)}  ${event.sender.padEnd(20)} ${event.type.padEnd(20)} ${summary(event)}`,
      );
    }
    console.log(`\nBob's client on b.example decrypted mia's message: "${String(fromMia.content?.body)}"`);
  } finally {
    await appservice?.stop();
    await provider.stop();
    await synapse.stop();
  }
}

/** Waits until these users' clients are in one group at one epoch, with no one else in it. */
async function inOneGroup(roomId: string, users: (readonly [MimiProvider, string])[]): Promise<void> {
  for (let i = 0; i < 400; i++) {
    const views = await Promise.all(users.map(([p, user]) => p.rooms.clientGroup(roomId, user)));
    const epochs = new Set(views.map((v) => v?.epoch));
    if (epochs.size === 1 && views.every((v) => v?.active && v.members.length === users.length)) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error("the clients did not reach one group");
}

/** The whole history of a room, page by page. */
async function historyOf(provider: MimiProvider, roomId: string): Promise<HistoryEntry[]> {
  const all: HistoryEntry[] = [];
  let from: number | undefined = 1;
  while (from !== undefined) {
    const page = await provider.rooms.history(roomId, { fromSeq: from, limit: 1000 });
    all.push(...page.events);
    from = page.nextSeq;
  }
  return all;
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
