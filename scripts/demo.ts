/**
 * `npm run demo`: three MIMI providers on 127.0.0.1 talk over real HTTP with
 * on-disk LevelDB, play a short conversation, and print each room's linear
 * history as every provider sees it.
 */
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseConfig } from "../src/config/config";
import type { FullyFormedEvent, JsonObject } from "../src/events/types";
import { MimiProvider } from "../src/provider/provider";
import type { HistoryEntry } from "../src/provider/roomsApiTypes";
import { freePort } from "../src/util/freePort";

const NAMES = ["a.example", "b.example", "c.example"] as const;
const ALICE = "@alice:a.example";
const BOB = "@bob:b.example";
const CAROL = "@carol:c.example";

function summary(event: FullyFormedEvent): string {
  const c = event.content as Record<string, unknown>;
  switch (event.type) {
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
  const routes = NAMES.map((n, i) => `    ${n}: http://127.0.0.1:${ports[i]}`);
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
    await send(b, BOB, "org.example.message", { body: "Hello from b.example!" });
    await send(c, CAROL, "org.example.message", { body: "And hello from c.example." });
    await send(a, ALICE, "org.example.message", { body: "Welcome, both of you." });
    step("all three send messages (followers' events go through the hub)");
    await c.rooms.changeOwnParticipation({
      roomId,
      user: CAROL,
      change: "leave",
      reason: "off to lunch",
      txnId: txnId(),
    });
    step("carol leaves");

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
      for (const { seq, eventId, event } of history) {
        console.log(
          `  ${String(seq).padStart(2)}  ${eventId.slice(0, 13)}…  ${event.sender.padEnd(18)} ${event.type.padEnd(20)} ${summary(event)}`,
        );
      }
    }
    const views = await Promise.all(
      providers.map(async (p) => (await historyOf(p, roomId)).map((e) => e.eventId).join()),
    );
    console.log(
      views.every((v) => v === views[0])
        ? "\nAll three providers hold the same linear history (same event IDs, same order)."
        : "\nThe providers' histories differ!",
    );
  } finally {
    await Promise.all(providers.map((p) => p.stop()));
    rmSync(dir, { recursive: true, force: true });
  }
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
