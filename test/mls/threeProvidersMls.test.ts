import { createServer, request as httpRequest, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import {
  eventually,
  startProviders,
  stopProviders,
  type MessageJson,
  type ProviderProcess,
} from "../support/providers";

import { ALICE, BOB, CAROL, ROLES } from "./people";

/** A pass-through HTTP proxy in front of one provider that keeps every request and answer body. */
async function recordingProxy(target: string, seen: string[]): Promise<{ url: string; server: Server }> {
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      seen.push(body.toString("utf8"));
      const upstream = httpRequest(
        `${target}${req.url}`,
        { method: req.method, headers: req.headers },
        (answer) => {
          const parts: Buffer[] = [];
          answer.on("data", (chunk: Buffer) => parts.push(chunk));
          answer.on("end", () => {
            const text = Buffer.concat(parts);
            seen.push(text.toString("utf8"));
            res.writeHead(answer.statusCode ?? 502, answer.headers);
            res.end(text);
          });
        },
      );
      upstream.on("error", () => {
        res.writeHead(502);
        res.end();
      });
      upstream.end(body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
}

const decryptedBodies = (messages: MessageJson[]) =>
  messages.filter((m) => m.status === "decrypted" || m.status === "sent").map((m) => m.content?.body);

describe("MLS across three providers as separate processes", () => {
  let a: ProviderProcess, b: ProviderProcess, c: ProviderProcess;
  const wire: string[] = [];
  const proxies: Server[] = [];
  const plaintexts: string[] = [];
  let roomId: string;
  let n = 0;
  /** A message body that appears nowhere but in its sender's request to its own admin API. */
  const secret = (who: string) => {
    const text = `secret ${who} ${++n} ${Math.random().toString(36).slice(2)}`;
    plaintexts.push(text);
    return text;
  };

  beforeAll(async () => {
    [a, b, c] = await startProviders(
      ["a.example", "b.example", "c.example"],
      {},
      {
        routeOf: async (_name, url) => {
          const proxy = await recordingProxy(url, wire);
          proxies.push(proxy.server);
          return proxy.url;
        },
      },
    );
  }, 60_000);
  afterAll(async () => {
    await stopProviders([a, b, c]);
    for (const proxy of proxies) {
      proxy.closeAllConnections();
      proxy.close();
    }
  });

  async function views(users: [ProviderProcess, string][]) {
    return Promise.all(users.map(([p, user]) => p.mls(roomId, user)));
  }

  /** Every listed client is active, at one epoch, and sees exactly `members`. */
  async function converged(users: [ProviderProcess, string][], members: string[]) {
    await eventually(async () => {
      const seen = await views(users);
      for (const view of seen) {
        expect(view?.active).toBe(true);
        expect([...view!.members].sort()).toEqual([...members].sort());
      }
      expect(new Set(seen.map((v) => v!.epoch)).size).toBe(1);
      expect(new Set(seen.map((v) => v!.tree_hash)).size).toBe(1);
    }, 30_000);
  }

  it("users on all three providers exchange messages, and no plaintext crosses federation", async () => {
    roomId = await a.createRoom(ALICE);
    await a.send(roomId, ALICE, "m.room.roles", ROLES, "");
    for (const [p, user] of [
      [b, BOB],
      [c, CAROL],
    ] as const) {
      await a.invite(roomId, ALICE, user);
      await eventually(async () => expect((await p.invites(user)).map((i) => i.room_id)).toContain(roomId));
      await p.join(roomId, user);
    }
    await converged(
      [
        [a, ALICE],
        [b, BOB],
        [c, CAROL],
      ],
      [ALICE, BOB, CAROL],
    );
    const sent = [secret("alice"), secret("bob"), secret("carol")];
    await a.sendMessage(roomId, ALICE, sent[0]!);
    await b.sendMessage(roomId, BOB, sent[1]!);
    await c.sendMessage(roomId, CAROL, sent[2]!);
    for (const [p, user] of [
      [a, ALICE],
      [b, BOB],
      [c, CAROL],
    ] as const) {
      await eventually(async () => expect(decryptedBodies(await p.messages(roomId, user))).toEqual(sent));
    }
    // Every user message in the history is an m.room.encrypted event.
    const history = await b.history(roomId);
    const encrypted = history.filter((e) => e.type === "m.room.encrypted");
    expect(encrypted).toHaveLength(3);
    expect(history.filter((e) => e.type === "m.mls.commit").length).toBeGreaterThanOrEqual(3);
    expect(wire.length).toBeGreaterThan(10);
    for (const text of plaintexts) expect(wire.filter((body) => body.includes(text))).toEqual([]);
  }, 120_000);

  it("a kicked user's client is removed and cannot read what follows", async () => {
    await a.kick(roomId, ALICE, CAROL);
    await converged(
      [
        [a, ALICE],
        [b, BOB],
      ],
      [ALICE, BOB],
    );
    // c has no joined user left, so the hub sends it nothing more: carol's client stays behind.
    const [alice, carol] = await views([
      [a, ALICE],
      [c, CAROL],
    ]);
    expect(BigInt(carol!.epoch)).toBeLessThan(BigInt(alice!.epoch));
    const after = secret("alice-after-kick");
    await a.sendMessage(roomId, ALICE, after);
    await eventually(async () => expect(decryptedBodies(await b.messages(roomId, BOB))).toContain(after));
    expect(decryptedBodies(await c.messages(roomId, CAROL))).not.toContain(after);
    for (const text of plaintexts) expect(wire.filter((body) => body.includes(text))).toEqual([]);
  }, 120_000);

  it("after SIGKILL and restart a follower's client still decrypts and sends", async () => {
    await b.kill("SIGKILL");
    const whileDown = secret("alice-while-b-down");
    await a.sendMessage(roomId, ALICE, whileDown);
    await b.start();
    await eventually(
      async () => expect(decryptedBodies(await b.messages(roomId, BOB))).toContain(whileDown),
      30_000,
    );
    const fromBob = secret("bob-after-restart");
    await b.sendMessage(roomId, BOB, fromBob);
    await eventually(async () => expect(decryptedBodies(await a.messages(roomId, ALICE))).toContain(fromBob));
    await a.kill("SIGKILL");
    await a.start();
    const fromAlice = secret("alice-after-restart");
    await a.sendMessage(roomId, ALICE, fromAlice);
    await eventually(
      async () => expect(decryptedBodies(await b.messages(roomId, BOB))).toContain(fromAlice),
      30_000,
    );
  }, 120_000);

  it("messages in flight when the hub is killed arrive once each, decrypted, after it restarts", async () => {
    const bodies = Array.from({ length: 20 }, (_, i) => secret(`bob-burst-${i}`));
    const txnIds = bodies.map((_, i) => `burst-${i}`);
    const sends = bodies.map((body, i) => b.sendMessage(roomId, BOB, body, txnIds[i]).catch(() => undefined));
    await new Promise((r) => setTimeout(r, 30));
    await a.kill("SIGKILL");
    await a.start();
    // The calls made while the hub was down answer once their events come back from it.
    await Promise.all(sends);
    // A retried call with the same txnId makes no second event.
    const eventIds = await Promise.all(bodies.map((body, i) => b.sendMessage(roomId, BOB, body, txnIds[i])));
    expect(new Set(eventIds).size).toBe(bodies.length);
    await eventually(async () => {
      const seen = decryptedBodies(await a.messages(roomId, ALICE));
      for (const body of bodies) expect(seen.filter((text) => text === body)).toHaveLength(1);
    }, 60_000);
    const history = await a.history(roomId);
    for (const id of eventIds) expect(history.filter((e) => e.event_id === id)).toHaveLength(1);
    for (const text of plaintexts) expect(wire.filter((body) => body.includes(text))).toEqual([]);
  }, 120_000);

  it("a kicked user invited back rejoins the group; after SIGKILL of c.example she still reads and sends", async () => {
    await a.invite(roomId, ALICE, CAROL);
    await eventually(async () => expect((await c.invites(CAROL)).map((i) => i.room_id)).toContain(roomId));
    await c.join(roomId, CAROL);
    await converged(
      [
        [a, ALICE],
        [b, BOB],
        [c, CAROL],
      ],
      [ALICE, BOB, CAROL],
    );
    // Alice's client added her back by Welcome; her provider, behind since the kick, made no commit.
    const history = await a.history(roomId);
    const rejoined = history.map((e) => e.type === "m.room.user" && e.state_key === CAROL).lastIndexOf(true);
    const commitsSince = history.slice(rejoined).filter((e) => e.type === "m.mls.commit");
    expect(commitsSince.map((e) => e.sender)).toEqual([ALICE]);
    const beforeKill = secret("bob-before-c-killed");
    await b.sendMessage(roomId, BOB, beforeKill);
    await c.kill("SIGKILL");
    const whileDown = secret("alice-while-c-down");
    await a.sendMessage(roomId, ALICE, whileDown);
    await c.start();
    await eventually(async () => {
      const seen = decryptedBodies(await c.messages(roomId, CAROL));
      expect(seen).toEqual(expect.arrayContaining([beforeKill, whileDown]));
    }, 30_000);
    const fromCarol = secret("carol-after-restart");
    await c.sendMessage(roomId, CAROL, fromCarol);
    for (const [p, user] of [
      [a, ALICE],
      [b, BOB],
    ] as const) {
      await eventually(async () =>
        expect(decryptedBodies(await p.messages(roomId, user))).toContain(fromCarol),
      );
    }
    for (const text of plaintexts) expect(wire.filter((body) => body.includes(text))).toEqual([]);
  }, 120_000);
});
