/**
 * `npm run demo`: three MIMI providers on 127.0.0.1 talk over real HTTP with
 * on-disk LevelDB, play a short conversation, and print each room's linear
 * history as every provider sees it.
 */
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseConfig } from "../src/config/config";
import type { FullyFormedEvent } from "../src/events/types";
import { MimiProvider } from "../src/federation/provider";
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
    const roomId = await a.createRoom(ALICE, { roomLocalpart: "demo" });
    step(`alice creates ${roomId}; a.example is its hub`);
    await a.sendEvent(roomId, ALICE, "m.room.name", { name: "MIMI demo" }, "");
    await a.sendEvent(roomId, ALICE, "m.room.join_rules", { rule: "knock" }, "");
    await a.invite(roomId, ALICE, BOB);
    step("alice invites bob: b.example is asked first, then the invite is sequenced");
    await b.membership(roomId, BOB, "join");
    step("bob joins through make_join/send_join; b.example pulls the history and follows the room");
    await c.membership(roomId, CAROL, "knock");
    step("carol knocks from c.example");
    await a.invite(roomId, ALICE, CAROL);
    await c.membership(roomId, CAROL, "join");
    step("alice lets carol in; carol joins");
    await b.sendEvent(roomId, BOB, "org.example.message", { body: "Hello from b.example!" });
    await c.sendEvent(roomId, CAROL, "org.example.message", { body: "And hello from c.example." });
    await a.sendEvent(roomId, ALICE, "org.example.message", { body: "Welcome, both of you." });
    step("all three send messages (followers' events go through the hub)");
    await c.membership(roomId, CAROL, "leave", "off to lunch");
    step("carol leaves");

    // Let the last fan-out land everywhere.
    const hubHistory = await a.history(roomId);
    for (let i = 0; i < 100; i++) {
      const lengths = await Promise.all([b, c].map(async (p) => (await p.history(roomId)).length));
      if (lengths.every((n) => n === hubHistory.length)) break;
      await new Promise((r) => setTimeout(r, 50));
    }

    for (const provider of providers) {
      const history = await provider.history(roomId);
      const role = provider.rooms.room(roomId)?.record.role ?? "-";
      console.log(`\nRoom ${roomId} as seen by ${provider.serverName} (${role}), ${history.length} events:`);
      for (const { seq, eventId, event } of history) {
        console.log(
          `  ${String(seq).padStart(2)}  ${eventId.slice(0, 13)}…  ${event.sender.padEnd(18)} ${event.type.padEnd(20)} ${summary(event)}`,
        );
      }
    }
    const views = await Promise.all(
      providers.map(async (p) => (await p.history(roomId)).map((e) => e.eventId).join()),
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

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
