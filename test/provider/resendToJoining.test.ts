import { keysHandler } from "../support/expressAuth";
import type { Server } from "node:http";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import express from "express";
import { parseConfig } from "../../src/config/config";
import { canonicalJson } from "../../src/events/canonicalJson";
import { computeEventId, createLimitedEvent } from "../../src/events/pdu";
import { ServerKeysPublisher } from "../../src/federation/keys";
import { MimiProvider } from "../../src/provider/provider";
import { MIMI_V1 } from "../../src/roomVersions";
import { freePort } from "../../src/util/freePort";
import { rawRequest } from "../support/fakeServer";
import { testKey } from "../support/keys";
import { eventually } from "../support/providers";
import { removeDir, tempDir } from "../support/services";
import { testDatabaseConfig } from "../support/store";

const ALICE = "@alice:a.example";
const DAN = "@dan:d.example";

/**
 * LM-04 §Sending Events: a hub must never lose an event it fanned out. A
 * server that has just joined (and is still setting the room up) refuses it
 * as unknown; the hub queues it again until it is taken.
 */
describe("the hub resends an event a joining server refused as unknown", () => {
  it("delivers it again after two M_NOT_FOUND refusals, and stops once it is taken", async () => {
    const dir = tempDir("resend");
    mkdirSync(join(dir, "data"));
    const dKey = testKey("d.example");
    const received: string[] = [];
    let refusalsLeft = 2;
    const app = express();
    app.get("/_matrix/key/v2/server", keysHandler(new ServerKeysPublisher(dKey)));
    app.put("/_matrix/federation/v2/send/:txnId", express.json({ limit: "5mb" }), (req, res) => {
      const failed: Record<string, unknown> = {};
      for (const pdu of (req.body as { pdus: { type: string; content: { body?: string } }[] }).pdus) {
        if (pdu.type !== "org.example.message") continue;
        received.push(pdu.content.body ?? "");
        if (refusalsLeft > 0) {
          refusalsLeft--;
          // Keyed as LM-04 keys results: the ID of the object as received.
          failed[computeEventId(pdu as never, MIMI_V1)] = {
            errcode: "M_NOT_FOUND",
            error: "not in room yet",
          };
        }
      }
      res.json({ failed_pdus: failed });
    });
    const dPort = await freePort();
    const server: Server = await new Promise((resolve) => {
      const s = app.listen(dPort, "127.0.0.1", () => resolve(s));
    });
    const config = parseConfig(
      [
        "server_name: a.example",
        "federation:",
        "  bind_address: 127.0.0.1",
        "  port: 0",
        "  well_known: false",
        "  retry_base_ms: 20",
        "  retry_max_ms: 100",
        "  static_routes:",
        `    d.example: http://127.0.0.1:${dPort}`,
        `database: ${JSON.stringify(await testDatabaseConfig(dir))}`,
        "logging: { level: error }",
        // The tests count the room's events; the hosted MLS clients would add commits of their own.
        "mls: { hosted_clients: false }",
      ].join("\n"),
      dir,
    );
    const a = await MimiProvider.start(config);
    try {
      const { roomId } = await a.rooms.createRoom({ creator: ALICE, txnId: "room" });
      await a.rooms.send({
        roomId,
        sender: ALICE,
        type: "m.room.join_rules",
        content: { rule: "public" },
        stateKey: "",
        txnId: "public",
      });
      const danJoin = createLimitedEvent(
        {
          room_id: roomId,
          type: "m.room.user",
          state_key: DAN,
          sender: DAN,
          origin_server_ts: Date.now(),
          hub_server: "a.example",
          content: { participation: "join" },
        },
        dKey,
        MIMI_V1,
      );
      const body = canonicalJson({ pdus: [danJoin] });
      const joined = await rawRequest({
        baseUrl: `http://127.0.0.1:${a.federationPort}`,
        destination: "a.example",
        method: "PUT",
        path: "/_matrix/federation/v2/send/join",
        body,
        contentType: "application/json",
        signAs: { origin: "d.example", key: dKey },
      });
      expect(joined.status).toBe(200);
      await a.rooms.send({
        roomId,
        sender: ALICE,
        type: "org.example.message",
        content: { body: "hello" },
        txnId: "hello",
      });
      await eventually(async () => expect(received).toEqual(["hello", "hello", "hello"]), 10_000);
      await new Promise((r) => setTimeout(r, 300));
      expect(received).toHaveLength(3);
    } finally {
      await a.stop();
      await new Promise((r) => server.close(r));
      removeDir(dir);
    }
  });
});
