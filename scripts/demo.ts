/**
 * `npm run demo`: three MIMI providers on 127.0.0.1 talk over real HTTP with
 * on-disk LevelDB, play a short conversation in an MLS-encrypted room, and
 * print each room's linear history as every provider sees it (with the MLS
 * epoch of each event), one message as it crossed the wire, and what each
 * user's hosted MLS client decrypted.
 *
 * Part two: two real Synapses, a.example and b.example, each with this project
 * as its appservice (test/support/twoHomeservers.ts starts them). alice of
 * a.example and bob and carol of b.example chat in the room "Lunch" through the
 * client-server API only; the demo prints each user's client timeline, the MIMI
 * room's linear history at its hub with the MLS epochs, and each user's MLS
 * client. It stops everything it started, also on failure or Ctrl-C.
 */
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { mimiUserOfGhost } from "../src/bridge/ghosts";
import { parseConfig } from "../src/config/config";
import { ensureSynapse } from "../test/support/synapse";
import {
  startTwoHomeservers,
  USER_PREFIX,
  type Harness,
  type Homeserver,
  type MatrixClient,
  isBotNotice,
  isMembership,
  isMessage,
  type MatrixEvent,
} from "../test/support/twoHomeservers";
import type { FullyFormedEvent, JsonObject } from "../src/events/types";
import { MimiProvider } from "../src/provider/provider";
import { decodeMlsMessageOf, fromBase64 } from "../src/mls/clients/wire";
import { addedUsers } from "../src/mls/federation/welcomes";
import { decodePublicMessageMessage } from "../src/mls/observer/wire";
import type { HistoryEntry } from "../src/provider/roomsApiTypes";
import { freePort } from "../src/util/freePort";

const NAMES = ["a.example", "b.example", "c.example"] as const;
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
  const referenced = content.commit.proposals.filter((p) => p.proposalOrRefType === "reference").length;
  if (referenced > 0) parts.push(`the hub's proposal${referenced > 1 ? "s" : ""} (by reference)`);
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

/** Part one: three providers in one process, no homeserver. */
async function partOne(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "mimi-demo-"));
  const ports = await Promise.all(NAMES.map(() => freePort()));
  const routes = NAMES.map((n, i) => `    ${n}: http://127.0.0.1:${ports[i]}`);
  const providers: MimiProvider[] = [];
  const stop = async () => {
    await Promise.all(providers.map((p) => p.stop()));
    rmSync(dir, { recursive: true, force: true });
  };
  await withCleanup(stop, async () => {
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
  });
}

/** What the demo started and has not stopped yet, stopped in reverse order on exit or Ctrl-C. */
const cleanups: (() => Promise<void> | void)[] = [];
let interrupted = false;

async function runCleanups(): Promise<void> {
  while (cleanups.length > 0) {
    try {
      await cleanups.pop()!();
    } catch (err) {
      console.error(`while stopping: ${(err as Error).message}`);
    }
  }
}

/** Runs `fn`, then `stop` (also if `fn` throws or the demo is interrupted). */
async function withCleanup<T>(stop: () => Promise<void> | void, fn: () => Promise<T>): Promise<T> {
  cleanups.push(stop);
  try {
    return await fn();
  } finally {
    // Once interrupted, the signal handler stops everything, in order.
    const i = interrupted ? -1 : cleanups.lastIndexOf(stop);
    if (i !== -1) {
      cleanups.splice(i, 1);
      await stop();
    }
  }
}

const WAIT_MS = 60_000;
const ROOM_NAME = "Lunch";
/** Portal state a client shows in its room settings, not in the timeline. */
const HIDDEN_STATE = new Set([
  "m.room.power_levels",
  "m.room.join_rules",
  "m.room.history_visibility",
  "m.room.guest_access",
  "m.room.canonical_alias",
  "io.mimi-appservice.portal",
]);

const relatesTo = (e: MatrixEvent) => (e.content["m.relates_to"] ?? {}) as Record<string, unknown>;

/**
 * Part two: two real Synapses, a.example and b.example, each with this project as its
 * appservice (a separate process), play a conversation as Matrix users would, through the
 * client-server API only.
 */
async function matrixPart(): Promise<void> {
  console.log(
    "\nPart two, two Matrix homeservers: real Synapses a.example and b.example, each with this project" +
      " as its appservice and MIMI provider (a process of its own).",
  );
  const started = Date.now();
  // Installs Synapse into .synapse/venv on first run (about 20 s).
  ensureSynapse();
  const dir = mkdtempSync(join(tmpdir(), "mimi-demo-matrix-"));
  let ok = false;
  const removeDir = () => {
    if ((ok && !process.env.MIMI_KEEP_DIRS) || interrupted) rmSync(dir, { recursive: true, force: true });
    else console.error(`The homeservers' and appservices' configs and logs are kept in ${dir}`);
  };
  await withCleanup(removeDir, async () => {
    const h = await startTwoHomeservers({ dir, logLevel: "info" });
    await withCleanup(
      () => h.stop(),
      async () => {
        const step = (text: string) =>
          console.log(`  * ${`${((Date.now() - started) / 1000).toFixed(1)} s`.padStart(6)}  ${text}`);
        step(
          `Synapse a.example on ${h.a.synapse.url}, b.example on ${h.b.synapse.url}; both appservices passed their ` +
            "self-check",
        );
        const [alice, bob, carol] = await Promise.all([
          h.a.registerUser("alice"),
          h.b.registerUser("bob"),
          h.b.registerUser("carol"),
        ]);
        const bobOnA = h.a.ghostOf(bob.userId);
        const carolOnA = h.a.ghostOf(carol.userId);
        const aliceOnB = h.b.ghostOf(alice.userId);
        const sentBodies: string[] = [];
        const say = (client: MatrixClient, roomId: string, body: string) => {
          sentBodies.push(body);
          return client.sendText(roomId, body);
        };

        const portalA = await alice.createRoom({ name: ROOM_NAME, invite: [h.a.botUserId] });
        const created = await alice.waitForEvent(
          portalA,
          isBotNotice(h.a.botUserId, /MIMI room/),
          WAIT_MS,
          "the bot's notice",
        );
        const mimiRoomId = /MIMI room (![^\s,]+)/.exec(String(created.content.body))?.[1];
        if (mimiRoomId === undefined)
          throw new Error(`the bot's notice names no MIMI room: ${created.content.body}`);
        step(`alice creates "${ROOM_NAME}" with the bot invited: the portal of the MIMI room ${mimiRoomId}`);

        await alice.invite(portalA, bobOnA);
        const invite = await bob.waitForInvite((i) => i.inviter === h.b.botUserId, WAIT_MS);
        const portalB = await bob.join(invite.roomId);
        await alice.waitForEvent(portalA, isMembership(bobOnA, "join"), WAIT_MS, "bob's ghost joining");
        await bob.waitForEvent(portalB, isMembership(aliceOnB, "join"), WAIT_MS, "alice's ghost joining");
        step(`alice invites bob's ghost ${bobOnA}; bob accepts the invite of b.example's bot`);

        await say(alice, portalA, "Hello Bob, lunch today?");
        await bob.waitForEvent(
          portalB,
          isMessage(aliceOnB, "Hello Bob, lunch today?"),
          WAIT_MS,
          "alice's text",
        );
        await say(bob, portalB, "Hi Alice! Sure.");
        await alice.waitForEvent(portalA, isMessage(bobOnA, "Hi Alice! Sure."), WAIT_MS, "bob's text");
        sentBodies.push("The **new** place?", "The <strong>new</strong> place?");
        await alice.sendHtml(portalA, "The **new** place?", "The <strong>new</strong> place?");
        const html = await bob.waitForEvent(
          portalB,
          isMessage(aliceOnB, "The **new** place?"),
          WAIT_MS,
          "alice's HTML message",
        );
        step("they write both ways, one message formatted (HTML)");

        sentBodies.push("Yes, at noon");
        await bob.sendEvent(portalB, "m.room.message", {
          msgtype: "m.text",
          body: `> <${aliceOnB}> The **new** place?\n\nYes, at noon`,
          "m.relates_to": { "m.in_reply_to": { event_id: html.event_id } },
        });
        await alice.waitForEvent(
          portalA,
          (e) => e.sender === bobOnA && relatesTo(e)["m.in_reply_to"] !== undefined,
          WAIT_MS,
          "bob's reply",
        );
        const meet = await say(alice, portalA, "Meet at 12:30");
        await bob.waitForEvent(portalB, isMessage(aliceOnB, "Meet at 12:30"), WAIT_MS, "alice's message");
        sentBodies.push("* Meet at 12:15", "Meet at 12:15");
        await alice.sendEvent(portalA, "m.room.message", {
          msgtype: "m.text",
          body: "* Meet at 12:15",
          "m.new_content": { msgtype: "m.text", body: "Meet at 12:15" },
          "m.relates_to": { rel_type: "m.replace", event_id: meet },
        });
        await bob.waitForEvent(
          portalB,
          (e) => e.sender === aliceOnB && relatesTo(e).rel_type === "m.replace",
          WAIT_MS,
          "alice's edit",
        );
        const oops = await say(alice, portalA, "oops, wrong room");
        const oopsOnB = await bob.waitForEvent(
          portalB,
          isMessage(aliceOnB, "oops, wrong room"),
          WAIT_MS,
          "alice's slip",
        );
        await alice.redact(portalA, oops);
        await bob.waitForEvent(
          portalB,
          (e) => e.type === "m.room.redaction" && (e.redacts ?? e.content.redacts) === oopsOnB.event_id,
          WAIT_MS,
          "the redaction",
        );
        step("bob replies to the HTML message; alice edits one message and redacts another");

        await alice.invite(portalA, carolOnA);
        await carol.waitForInvite((i) => i.roomId === portalB, WAIT_MS);
        await carol.join(portalB);
        await alice.waitForEvent(portalA, isMembership(carolOnA, "join"), WAIT_MS, "carol's ghost joining");
        await say(carol, portalB, "Can I come too?");
        await alice.waitForEvent(portalA, isMessage(carolOnA, "Can I come too?"), WAIT_MS, "carol's message");
        step("alice invites carol of b.example (her ghost on a.example); carol joins and writes");

        await alice.kick(portalA, carolOnA, "table for two");
        await carol.waitForEvent(portalB, isMembership(carol.userId, "leave"), WAIT_MS, "carol removed");
        await alice.invite(portalA, carolOnA);
        await carol.waitForInvite((i) => i.roomId === portalB, WAIT_MS);
        await alice.ban(portalA, carolOnA, "changed my mind");
        await carol.waitForEvent(portalB, isMembership(carol.userId, "ban"), WAIT_MS, "carol banned");
        step(
          "alice kicks carol, invites her again, then bans her: b.example's bot does the same in bob's room",
        );

        await say(alice, portalA, "See you at noon");
        await bob.waitForEvent(
          portalB,
          isMessage(aliceOnB, "See you at noon"),
          WAIT_MS,
          "alice's last message",
        );
        await bob.leave(portalB);
        await alice.waitForEvent(portalA, isMembership(bobOnA, "leave"), WAIT_MS, "bob's ghost leaving");
        step("alice says goodbye; bob leaves: his ghost leaves alice's room");

        await Promise.all([alice, bob, carol].map((c) => c.sync(0)));
        const domainOf = (userId: string) => userId.slice(userId.indexOf(":") + 1);
        const homeserverOf = (c: MatrixClient) => (domainOf(c.userId) === h.a.domain ? h.a : h.b);
        for (const [client, roomId] of [
          [alice, portalA],
          [bob, portalB],
          [carol, portalB],
        ] as const) {
          const hs = homeserverOf(client);
          console.log(`\n${client.userId}'s client, room "${ROOM_NAME}" (${roomId} on ${hs.domain}):`);
          printTimeline(client.timeline(roomId), hs);
        }

        const history = await hubHistory(h, mimiRoomId);
        printMimiHistory(mimiRoomId, history);

        const hub = mimiRoomId.endsWith(`:${h.a.domain}`) ? h.a : h.b;
        const { participation } = await hub.admin<{ participation: Record<string, string> }>(
          "GET",
          `/rooms/${encodeURIComponent(mimiRoomId)}`,
        );
        console.log(
          "\nEach user's MLS client at the end (GET /rooms/:id/mls?user= on their provider), " +
            "beside their participation at the hub:",
        );
        const mlsRows: string[][] = [];
        for (const client of [alice, bob, carol]) {
          const hs = homeserverOf(client);
          const row = [client.userId, hs.domain, participation[client.userId] ?? "-"];
          try {
            const view = await hs.admin<{ epoch: string; members: string[]; active: boolean }>(
              "GET",
              `/rooms/${encodeURIComponent(mimiRoomId)}/mls?user=${encodeURIComponent(client.userId)}`,
            );
            row.push(`epoch ${view.epoch}`, view.active ? "active" : "removed", view.members.join(", "));
          } catch (err) {
            if (!/ 404 /.test((err as Error).message)) throw err;
            row.push("-", "no MLS client", "");
          }
          mlsRows.push(row);
        }
        printTable(
          ["user", "provider", "participation", "MLS epoch", "client", "members (by leaf)"],
          mlsRows,
        );
        console.log("  (a client stops at the epoch in which its user left: later commits are not for it)");

        const wire = h.federation.map((c) => c.body);
        const leaked = sentBodies.filter((body) => wire.some((w) => w.includes(body)));
        console.log(
          leaked.length > 0
            ? `\nPlaintext crossed MIMI federation: ${JSON.stringify(leaked)}!`
            : `\nNone of the ${sentBodies.length} message texts is in any of the ${wire.length} recorded MIMI ` +
                "federation bodies: they crossed as m.room.encrypted.",
        );
        if (leaked.length > 0) throw new Error("a message body crossed MIMI federation in the clear");
        console.log(`Matrix part: ${((Date.now() - started) / 1000).toFixed(1)} s.`);
      },
    );
    ok = true;
  });
}

/** The MIMI room's whole linear history from its hub's admin API. */
async function hubHistory(h: Harness, roomId: string): Promise<HistoryJson[]> {
  const hub = roomId.endsWith(`:${h.a.domain}`) ? h.a : h.b;
  const events: HistoryJson[] = [];
  let from: number | undefined = 1;
  while (from !== undefined) {
    const page: { events: HistoryJson[]; next_seq?: number } = await hub.admin(
      "GET",
      `/rooms/${encodeURIComponent(roomId)}/history?from=${from}&limit=1000`,
    );
    events.push(...page.events);
    from = page.next_seq;
  }
  return events;
}

type HistoryJson = FullyFormedEvent & { seq: number; event_id: string };

function printMimiHistory(roomId: string, history: HistoryJson[]): void {
  const hub = roomId.slice(roomId.indexOf(":") + 1);
  console.log(
    `\nThe MIMI room ${roomId}, its linear history at the hub ${hub} (admin API), ${history.length} events:`,
  );
  const epochOf = new Map<string, string>();
  // The group's members by leaf index, replayed from the commits, to name whom a removal removes.
  const leaves: (string | undefined)[] = [];
  const place = (user: string) => {
    const blank = leaves.findIndex((l) => l === undefined);
    leaves[blank === -1 ? leaves.length : blank] = user;
  };
  const nameOf = (leaf: number) => leaves[leaf] ?? `leaf ${leaf}`;
  /** Removals the hub proposed since the last commit (a commit takes them by reference). */
  let proposed: number[] = [];
  const rows = history.map((e) => {
    const c = e.content as Record<string, unknown>;
    let epoch = "";
    let what: string;
    switch (e.type) {
      case "m.mls.commit": {
        epoch = String(commitEpoch(e));
        epochOf.set(e.event_id, epoch);
        const content = decodePublicMessageMessage(fromBase64(c.message as string), "commit").content;
        if (content.contentType !== "commit") {
          what = "?";
          break;
        }
        if (leaves.length === 0 && content.sender.senderType === "member") leaves[0] = e.sender;
        const removed = content.commit.proposals.flatMap((p) =>
          p.proposalOrRefType === "proposal" && p.proposal.proposalType === "remove"
            ? [p.proposal.remove.removed]
            : [],
        );
        if (content.commit.proposals.some((p) => p.proposalOrRefType === "reference"))
          removed.push(...proposed);
        proposed = [];
        const parts = removed.map((leaf) => `remove ${nameOf(leaf)}`);
        for (const leaf of removed) leaves[leaf] = undefined;
        for (const { userId } of addedUsers(fromBase64(c.message as string))) {
          parts.push(`add ${userId}`);
          place(userId);
        }
        if (content.sender.senderType === "new_member_commit") {
          parts.push(`external join of ${e.sender}`);
          place(e.sender);
        }
        what = parts.length > 0 ? parts.join(", ") : epoch === "1" ? `new group of ${e.sender}` : "update";
        break;
      }
      case "m.room.encrypted": {
        epoch = epochOf.get(c.commit_event_id as string) ?? "?";
        const bytes = Buffer.from(c.ciphertext as string, "base64");
        what = `ciphertext, ${bytes.length} bytes (…${bytes.subarray(-4).toString("hex")})`;
        break;
      }
      case "io.mimi-appservice.mls.proposal": {
        const content = decodePublicMessageMessage(fromBase64(c.message as string), "proposal").content;
        if (content.contentType === "proposal" && content.proposal.proposalType === "remove") {
          proposed.push(content.proposal.remove.removed);
          what = `the hub, MLS external sender, proposes: remove ${nameOf(content.proposal.remove.removed)}`;
        } else {
          what = `the hub proposes: ${content.contentType === "proposal" ? content.proposal.proposalType : "?"}`;
        }
        break;
      }
      case "m.room.user":
        what = `${String(c.participation)}${c.reason ? ` (${String(c.reason)})` : ""}`;
        break;
      default:
        what = summary(e);
    }
    return [String(e.seq), e.type, e.sender, e.state_key ?? "", epoch, what];
  });
  printTable(["seq", "type", "sender", "state key", "epoch", ""], rows);
  const messages = history.filter((e) => e.type === "m.room.encrypted").length;
  console.log(
    `  (${messages} m.room.encrypted events: the messages, the reply, the edit and the redaction, as MLS ciphertext)`,
  );
}

function printTable(header: string[], rows: string[][]): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const numeric = header.map((_, i) => rows.every((r) => /^\d*$/.test(r[i]!)));
  const line = (cells: string[]) =>
    `  ${cells
      .map((cell, i) =>
        numeric[i] ? cell.padStart(widths[i]!) : i === cells.length - 1 ? cell : cell.padEnd(widths[i]!),
      )
      .join("  ")}`.trimEnd();
  console.log(line(header));
  for (const row of rows) console.log(line(row));
}

/** One user's timeline as a client would show it: edits applied, redactions blanked, replies named. */
function printTimeline(events: MatrixEvent[], hs: Homeserver): void {
  const byId = new Map(events.map((e) => [e.event_id, e]));
  const edits = new Map<string, MatrixEvent>();
  const redacted = new Set<string>();
  for (const e of events) {
    const rel = relatesTo(e);
    if (rel.rel_type === "m.replace" && typeof rel.event_id === "string") edits.set(rel.event_id, e);
    if (e.type === "m.room.redaction") redacted.add(String(e.redacts ?? e.content.redacts));
  }
  const who = (userId: string) => {
    const mimiUser = mimiUserOfGhost(userId, USER_PREFIX, hs.domain);
    return mimiUser === undefined || userId === hs.botUserId ? userId : `${userId} (${mimiUser})`;
  };
  const text = (e: MatrixEvent, withHtml = true): string => {
    const content = (edits.get(e.event_id)?.content["m.new_content"] ?? e.content) as Record<string, unknown>;
    // A reply's body starts with the quoted message as a fallback ("> ..." lines): a client hides it.
    const body = String(content.body ?? "").replace(/^(>.*\n)+\n/, "");
    const html =
      withHtml && content.format === "org.matrix.custom.html"
        ? `  [HTML: ${String(content.formatted_body)}]`
        : "";
    return content.msgtype === "m.notice"
      ? `[notice] ${body}`
      : content.msgtype === "m.emote"
        ? `* ${body}`
        : body + html;
  };
  const rows: [string, string][] = [];
  const memberships = new Map<string, string>();
  for (const e of events) {
    const c = e.content;
    if (e.type === "m.room.message") {
      if (relatesTo(e).rel_type === "m.replace") continue;
      if (redacted.has(e.event_id)) {
        rows.push([who(e.sender), "[redacted]"]);
        continue;
      }
      const parent = (relatesTo(e)["m.in_reply_to"] as { event_id?: string } | undefined)?.event_id;
      const to = parent === undefined ? undefined : byId.get(parent);
      const reply =
        parent === undefined
          ? ""
          : to === undefined
            ? `(reply to ${parent}) `
            : `(reply to ${to.sender}: "${text(to, false)}") `;
      rows.push([who(e.sender), `${reply}${text(e)}${edits.has(e.event_id) ? " (edited)" : ""}`]);
    } else if (e.type === "m.room.member" && e.state_key !== undefined) {
      const before = memberships.get(e.state_key);
      const now = String(c.membership);
      memberships.set(e.state_key, now);
      const target = who(e.state_key);
      const reason = typeof c.reason === "string" ? `: ${c.reason}` : "";
      const self = e.sender === e.state_key;
      const what =
        now === "join"
          ? before === "join"
            ? typeof c.displayname === "string"
              ? `— set the display name "${c.displayname}"`
              : "— changed their profile"
            : "— joined"
          : now === "invite"
            ? `— invited ${target}`
            : now === "ban"
              ? `— banned ${target}${reason}`
              : now === "leave"
                ? self
                  ? before === "invite"
                    ? "— declined the invite"
                    : "— left"
                  : before === "invite"
                    ? `— withdrew the invite of ${target}${reason}`
                    : `— kicked ${target}${reason}`
                : `— ${now} ${target}`;
      rows.push([who(e.sender), what]);
    } else if (e.type === "m.room.create") {
      rows.push([who(e.sender), "— created the room"]);
    } else if (e.type === "m.room.name") {
      rows.push([who(e.sender), `— named the room "${String(c.name)}"`]);
    } else if (e.type === "m.room.topic") {
      rows.push([who(e.sender), `— set the topic "${String(c.topic)}"`]);
    } else if (e.type === "m.room.redaction" || HIDDEN_STATE.has(e.type)) {
      continue;
    } else {
      rows.push([who(e.sender), `— ${e.type}`]);
    }
  }
  const width = Math.max(...rows.map(([sender]) => sender.length));
  for (const [sender, what] of rows)
    console.log(`  ${sender.padStart(width)}${what.startsWith("—") ? " " : ": "}${what}`);
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

/** Ctrl-C reaches the demo more than once (from the terminal, and relayed by npm and tsx). */
const REPEAT_SIGNAL_GRACE_MS = 3_000;
/** If stopping takes longer, exit anyway: the exit handlers SIGKILL the child processes. */
const STOP_TIMEOUT_MS = 30_000;
let interruptedAt = 0;
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    const code = signal === "SIGINT" ? 130 : 143;
    if (interrupted) {
      if (Date.now() - interruptedAt < REPEAT_SIGNAL_GRACE_MS) return;
      console.error(`${signal} again: exiting at once`);
      process.exit(code);
    }
    interrupted = true;
    interruptedAt = Date.now();
    console.error(`\n${signal}: stopping everything the demo started...`);
    setTimeout(() => process.exit(code), STOP_TIMEOUT_MS).unref();
    void runCleanups().finally(() => process.exit(code));
  });
}

partOne()
  .then(matrixPart)
  .then(() => process.exit(0))
  .catch(async (err: unknown) => {
    if (interrupted) return; // the signal handler stops everything and exits
    await runCleanups();
    const message = err instanceof Error ? err.message : String(err);
    const frames =
      err instanceof Error ? (err.stack ?? "").split("\n").filter((l) => l.startsWith("    at ")) : [];
    console.error(`\nThe demo failed: ${message}\n${frames.slice(0, 5).join("\n")}`);
    // The message may end in long log tails: say it once more, in one line.
    if (message.includes("\n")) console.error(`\nThe demo failed: ${message.split("\n")[0]}`);
    process.exit(1);
  });
