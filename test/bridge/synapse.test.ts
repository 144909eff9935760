import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import yaml from "js-yaml";
import { freePort } from "../../src/util/freePort";
import { removeDir, tempDir } from "../support/services";
import { ensureSynapse, startSynapse, type SynapseHandle } from "../support/synapse";

const SETUP_TIMEOUT_MS = 180_000;

async function call<T>(
  hs: SynapseHandle,
  token: string,
  method: string,
  path: string,
  body?: unknown,
): Promise<T> {
  const res = await fetch(`${hs.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: HTTP ${res.status} ${text}`);
  return JSON.parse(text) as T;
}

interface SyncResponse {
  next_batch: string;
  rooms?: {
    join?: Record<string, { timeline?: { events?: { type: string; content: Record<string, unknown> }[] } }>;
  };
}

describe("Synapse test harness", () => {
  beforeAll(() => {
    // Installs on first use (about 30 s); throws rather than skipping if it cannot.
    ensureSynapse();
  }, SETUP_TIMEOUT_MS);

  describe("a single homeserver", () => {
    let dir: string;
    let hs: SynapseHandle;

    beforeAll(async () => {
      dir = tempDir("synapse-hs1");
      hs = await startSynapse({ serverName: "hs1.test", dir });
    }, SETUP_TIMEOUT_MS);

    afterAll(async () => {
      await hs?.stop();
      if (dir !== undefined) removeDir(dir);
    }, 30_000);

    it("carries a message between two local users, and survives a restart", async () => {
      const alice = await hs.registerUser("alice");
      const bob = await hs.registerUser("bob");
      expect(alice.userId).toBe("@alice:hs1.test");
      expect(bob.userId).toBe("@bob:hs1.test");
      expect(alice.deviceId).toEqual(expect.any(String));

      const { room_id: roomId } = await call<{ room_id: string }>(
        hs,
        alice.accessToken,
        "POST",
        "/_matrix/client/v3/createRoom",
        { preset: "private_chat", invite: [bob.userId], name: "harness" },
      );
      // Room version 12 (Synapse's default): the room ID is the create event's hash, no server part.
      expect(roomId).toMatch(/^![A-Za-z0-9_-]+$/);
      expect(roomId).not.toContain(":");
      const create = await call<{ room_version?: string }>(
        hs,
        alice.accessToken,
        "GET",
        `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/state/m.room.create/`,
      );
      expect(create.room_version).toBe("12");

      await call(hs, bob.accessToken, "POST", `/_matrix/client/v3/join/${encodeURIComponent(roomId)}`, {});
      const initial = await call<SyncResponse>(
        hs,
        bob.accessToken,
        "GET",
        "/_matrix/client/v3/sync?timeout=0",
      );

      const text = `hello bob ${randomBytes(4).toString("hex")}`;
      await call(
        hs,
        alice.accessToken,
        "PUT",
        `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/m.room.message/txn1`,
        { msgtype: "m.text", body: text },
      );

      let since = initial.next_batch;
      let seen = false;
      const deadline = Date.now() + 20_000;
      while (!seen && Date.now() < deadline) {
        const sync = await call<SyncResponse>(
          hs,
          bob.accessToken,
          "GET",
          `/_matrix/client/v3/sync?timeout=5000&since=${encodeURIComponent(since)}`,
        );
        since = sync.next_batch;
        const events = sync.rooms?.join?.[roomId]?.timeline?.events ?? [];
        seen = events.some((e) => e.type === "m.room.message" && e.content.body === text);
      }
      expect(seen).toBe(true);

      const pidBefore = hs.pid;
      await hs.restart();
      expect(hs.pid).not.toBe(pidBefore);
      const whoami = await call<{ user_id: string }>(
        hs,
        alice.accessToken,
        "GET",
        "/_matrix/client/v3/account/whoami",
      );
      expect(whoami.user_id).toBe(alice.userId);
    });
  });

  describe("a homeserver with an appservice registration", () => {
    let dir: string;
    let hs: SynapseHandle;
    const asToken = randomBytes(24).toString("hex");

    beforeAll(async () => {
      dir = tempDir("synapse-hs2");
      const registration = join(dir, "mimi-registration.yaml");
      writeFileSync(
        registration,
        yaml.dump({
          id: "mimi",
          url: `http://127.0.0.1:${await freePort()}`,
          as_token: asToken,
          hs_token: randomBytes(24).toString("hex"),
          sender_localpart: "_mimi_bot",
          rate_limited: false,
          namespaces: {
            users: [{ exclusive: true, regex: "@_mimi_.*:hs2\\.test" }],
            aliases: [],
            rooms: [],
          },
        }),
      );
      hs = await startSynapse({ serverName: "hs2.test", dir, appserviceRegistrations: [registration] });
    }, SETUP_TIMEOUT_MS);

    afterAll(async () => {
      await hs?.stop();
      if (dir !== undefined) removeDir(dir);
    }, 30_000);

    it("accepts the appservice's as_token as its sender user", async () => {
      const whoami = await call<{ user_id: string }>(hs, asToken, "GET", "/_matrix/client/v3/account/whoami");
      expect(whoami.user_id).toBe("@_mimi_bot:hs2.test");
    });
  });
});
