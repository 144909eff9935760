/**
 * The appservice against a real Synapse: the registration written by `-r`, the start-up
 * self-check and its clear failures, and the homeserver's transactions stored durably.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { freePort } from "../../src/util/freePort";
import {
  ADMIN_TOKEN,
  adminCall,
  clientCall,
  HS,
  instance,
  plainProvider,
  ready,
  runMain,
  until,
  writeRegistration,
  type Instance,
  type Run,
} from "../support/appserviceRuns";
import { removeDir, tempDir } from "../support/services";
import { ensureSynapse, startSynapse, type SynapseHandle } from "../support/synapse";

/**
 * A message of erin's from b.example, through its admin API; tried until her client is in the
 * room's group (right after her join it may still be on its way).
 */
const erinSays = (adminPort: unknown, roomId: string, txnId: string, body: string) =>
  until(async () => {
    const response = await fetch(
      `http://127.0.0.1:${String(adminPort)}/_mimi/admin/v1/rooms/${encodeURIComponent(roomId)}/messages/${txnId}`,
      {
        method: "PUT",
        headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
        body: JSON.stringify({
          sender: "@erin:b.example",
          type: "m.room.message",
          content: { msgtype: "m.text", body },
        }),
      },
    );
    return response.status === 200 ? true : undefined;
  }, 30_000);

describe("the appservice on a real Synapse", () => {
  let synapse: SynapseHandle;
  let good: Instance;
  let unreachable: Instance;
  let remote: Instance;
  let synapseDir: string;
  const runs: Run[] = [];

  beforeAll(async () => {
    ensureSynapse();
    synapseDir = tempDir("synapse-as");
    // The homeserver's URL is known once it has a port: pick it first.
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const remotePort = await freePort();
    good = await instance("good", url, { routes: { "b.example": remotePort } });
    remote = await plainProvider("b.example", remotePort, { [HS]: good.federationPort });
    await writeRegistration(good, `http://127.0.0.1:${good.appservicePort}`);
    // A second appservice whose registration points where nothing listens.
    unreachable = await instance("unreachable", url, {
      id: "mimi-b",
      sender: "_mimib_bot",
      prefix: "_mimib_",
    });
    await writeRegistration(unreachable, "http://127.0.0.1:9");
    synapse = await startSynapse({
      serverName: HS,
      dir: synapseDir,
      port,
      appserviceRegistrations: [good.registration, unreachable.registration],
    });
  }, 240_000);

  afterEach(async () => {
    for (const run of runs.splice(0)) {
      if (run.child.exitCode === null) {
        run.child.kill("SIGTERM");
        await run.exited;
      }
    }
  });

  afterAll(async () => {
    await synapse?.stop();
    for (const dir of [good?.dir, unreachable?.dir, remote?.dir, synapseDir])
      if (dir !== undefined) removeDir(dir);
  });

  it("starts; a room created with the bot invited becomes the portal of a new MIMI room, and messages go to it encrypted", async () => {
    const run = runMain(["-c", good.config]);
    runs.push(run);
    const line = await ready(run);
    expect(line.appservice_port).toBe(good.appservicePort);
    expect(run.stderr).toContain("homeserver reached");
    expect(run.stderr).toContain(`@_mimi_bot:${HS}`);
    let adminPort = line.admin_port;
    const admin = async (path: string) => {
      const response = await fetch(`http://127.0.0.1:${String(adminPort)}/_mimi/admin/v1${path}`, {
        headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
      });
      expect(response.status).toBe(200);
      return (await response.json()) as Record<string, unknown>;
    };

    // Alice creates a room with the bot invited, as a client does.
    const alice = await synapse.registerUser("alice");
    const asAlice = clientCall(synapse.url, alice.accessToken);
    const created = await asAlice("POST", "/createRoom", { name: "Plans", invite: [`@_mimi_bot:${HS}`] });
    expect(created.status).toBe(200);
    const { room_id: roomId } = (await created.json()) as { room_id: string };

    // The bot joins and says which MIMI room this is; the MIMI room has Alice as its creator.
    const notice = await until(async () => {
      const page = (await (
        await asAlice("GET", `/rooms/${encodeURIComponent(roomId)}/messages?dir=b&limit=20`)
      ).json()) as {
        chunk: { sender: string; content: { msgtype?: string; body?: string } }[];
      };
      return page.chunk.find((e) => e.sender === `@_mimi_bot:${HS}` && e.content.msgtype === "m.notice");
    });
    const mimiRoomId = /MIMI room (![^ ]+:hs1\.test)/.exec(notice.content.body ?? "")?.[1];
    expect(mimiRoomId).toBeDefined();
    const room = await admin(`/rooms/${encodeURIComponent(mimiRoomId!)}`);
    expect(room.role).toBe("hub");
    expect(room.participation).toEqual({ [`@alice:${HS}`]: "join" });
    // The name she gave the room before the bot came is the MIMI room's.
    expect(
      (room.state as { type: string; content: { name?: string } }[]).find((e) => e.type === "m.room.name")
        ?.content.name,
    ).toBe("Plans");

    // Alice's message reaches the MIMI room as an m.room.encrypted event of hers, no plaintext in it.
    const sent = await asAlice("PUT", `/rooms/${encodeURIComponent(roomId)}/send/m.room.message/t1`, {
      msgtype: "m.text",
      body: "see you at noon",
    });
    expect(sent.status).toBe(200);
    const encrypted = await until(async () => {
      const history = (await admin(`/rooms/${encodeURIComponent(mimiRoomId!)}/history?limit=100`)) as {
        events: { type: string; sender: string; content: unknown }[];
      };
      return history.events.find((e) => e.type === "m.room.encrypted" && e.sender === `@alice:${HS}`);
    });
    expect(JSON.stringify(encrypted)).not.toContain("see you at noon");
    // Her topic for the room becomes the MIMI room's.
    expect(
      (await asAlice("PUT", `/rooms/${encodeURIComponent(roomId)}/state/m.room.topic/`, { topic: "Lunch" }))
        .status,
    ).toBe(200);
    await until(async () => {
      const state = (await admin(`/rooms/${encodeURIComponent(mimiRoomId!)}`)) as {
        state: { type: string; content: { topic?: string } }[];
      };
      return state.state.find((e) => e.type === "m.room.topic" && e.content.topic === "Lunch");
    });
    // Redelivering or restarting makes no second portal and no second message.
    run.child.kill("SIGTERM");
    await run.exited;
    const again = runMain(["-c", good.config]);
    runs.push(again);
    adminPort = (await ready(again)).admin_port;
    const history = (await admin(`/rooms/${encodeURIComponent(mimiRoomId!)}/history?limit=100`)) as {
      events: { type: string }[];
    };
    expect(history.events.filter((e) => e.type === "m.room.encrypted")).toHaveLength(1);
    expect(((await admin("/rooms")) as { rooms: string[] }).rooms).toEqual([mimiRoomId]);
  }, 90_000);

  it("a Matrix user and a user of another MIMI provider chat: invite by ghost, messages both ways", async () => {
    const run = runMain(["-c", good.config]);
    runs.push(run);
    const line = await ready(run);
    const other = runMain(["-c", remote.config]);
    runs.push(other);
    const otherLine = await ready(other);
    const dave = await synapse.registerUser("dave");
    const asDave = clientCall(synapse.url, dave.accessToken);
    const created = await asDave("POST", "/createRoom", { invite: [`@_mimi_bot:${HS}`] });
    const { room_id: roomId } = (await created.json()) as { room_id: string };
    const timeline = async () =>
      (
        (await (
          await asDave("GET", `/rooms/${encodeURIComponent(roomId)}/messages?dir=b&limit=50`)
        ).json()) as {
          chunk: { sender: string; type: string; content: { msgtype?: string; body?: string } }[];
        }
      ).chunk;
    const notice = await until(async () =>
      (await timeline()).find((e) => e.sender === `@_mimi_bot:${HS}` && e.content.msgtype === "m.notice"),
    );
    const mimiRoomId = /MIMI room (![^ ]+:hs1\.test)/.exec(notice.content.body ?? "")![1]!;

    // Dave invites Erin of b.example by inviting her ghost; b.example sees the invite, she joins there.
    const erinGhost = `@_mimi_erin=3ab.example:${HS}`;
    expect(
      (await asDave("POST", `/rooms/${encodeURIComponent(roomId)}/invite`, { user_id: erinGhost })).status,
    ).toBe(200);
    await until(async () => {
      const invites = (await adminCall(otherLine.admin_port, "GET", "/users/@erin:b.example/invites")) as {
        invites: { room_id: string }[];
      };
      return invites.invites.find((i) => i.room_id === mimiRoomId);
    });
    await adminCall(otherLine.admin_port, "PUT", `/rooms/${encodeURIComponent(mimiRoomId)}/join/j1`, {
      user: "@erin:b.example",
    });

    // Her ghost joins Dave's room as soon as she joins the MIMI room, before she says anything.
    await until(
      async () =>
        (await timeline()).find(
          (e) =>
            e.sender === erinGhost &&
            e.type === "m.room.member" &&
            (e.content as { membership?: string }).membership === "join",
        ),
      30_000,
    );

    // Erin writes from b.example: Dave reads it in his room, from her ghost.
    await erinSays(otherLine.admin_port, mimiRoomId, "m1", "hi Dave");
    const shown = await until(
      async () => (await timeline()).find((e) => e.sender === erinGhost && e.content.body === "hi Dave"),
      30_000,
    );
    expect(shown.type).toBe("m.room.message");

    // Dave answers in Matrix: Erin's client on b.example decrypts it.
    await asDave("PUT", `/rooms/${encodeURIComponent(roomId)}/send/m.room.message/a1`, {
      msgtype: "m.text",
      body: "hi Erin",
    });
    await until(async () => {
      const page = (await adminCall(
        otherLine.admin_port,
        "GET",
        `/rooms/${encodeURIComponent(mimiRoomId)}/messages?user=${encodeURIComponent("@erin:b.example")}&wait_ms=1000`,
      )) as { messages: { sender: string; content?: { body?: string } }[] };
      return page.messages.find((m) => m.sender === `@dave:${HS}` && m.content?.body === "hi Erin");
    }, 30_000);

    // Dave removes Erin's ghost from his room: Erin is kicked from the MIMI room, as b.example sees it.
    const kicked = await asDave("POST", `/rooms/${encodeURIComponent(roomId)}/kick`, {
      user_id: erinGhost,
      reason: "wrong room",
    });
    expect(kicked.status).toBe(200);
    await until(async () => {
      const room = (await adminCall(
        otherLine.admin_port,
        "GET",
        `/rooms/${encodeURIComponent(mimiRoomId)}`,
      )) as {
        participation: Record<string, string>;
      };
      return room.participation["@erin:b.example"] === "leave" ? true : undefined;
    }, 30_000);
    expect(line.ready).toBe(true);
  }, 120_000);

  it("a user of another provider invites a Matrix user: the bot delivers it, and joining the portal joins the MIMI room", async () => {
    const run = runMain(["-c", good.config]);
    runs.push(run);
    await ready(run);
    const other = runMain(["-c", remote.config]);
    runs.push(other);
    const otherLine = await ready(other);
    const frank = await synapse.registerUser("frank");
    const frankCalls = clientCall(synapse.url, frank.accessToken);
    const asFrank = async (method: string, path: string, body?: unknown) => {
      const response = await frankCalls(method, path, body);
      expect(response.status).toBe(200);
      return (await response.json()) as Record<string, unknown>;
    };
    // Erin makes a room on b.example and invites Frank.
    const { room_id: mimiRoomId } = (await adminCall(otherLine.admin_port, "PUT", "/createRoom/c1", {
      creator: "@erin:b.example",
    })) as { room_id: string };
    await adminCall(otherLine.admin_port, "PUT", `/rooms/${encodeURIComponent(mimiRoomId)}/invite/i1`, {
      sender: "@erin:b.example",
      target: `@frank:${HS}`,
    });
    // Frank's client gets an invite from the bot; he accepts it.
    const portal = await until(async () => {
      // Synapse caches an initial sync for a while: a filter of its own each time gets a fresh one.
      const filter = encodeURIComponent(
        JSON.stringify({ room: { timeline: { limit: 1, not_types: [`x.${Date.now()}`] } } }),
      );
      const sync = (await asFrank("GET", `/sync?timeout=0&filter=${filter}`)) as {
        rooms?: { invite?: Record<string, unknown> };
      };
      return Object.keys(sync.rooms?.invite ?? {})[0];
    }, 30_000);
    await asFrank("POST", `/join/${encodeURIComponent(portal)}`, {});
    await until(async () => {
      const room = (await adminCall(
        otherLine.admin_port,
        "GET",
        `/rooms/${encodeURIComponent(mimiRoomId)}`,
      )) as {
        participation: Record<string, string>;
      };
      return room.participation[`@frank:${HS}`] === "join" ? true : undefined;
    }, 30_000);
    // Erin's message reaches him from her ghost.
    await erinSays(otherLine.admin_port, mimiRoomId, "m2", "welcome Frank");
    await until(async () => {
      const page = (await asFrank("GET", `/rooms/${encodeURIComponent(portal)}/messages?dir=b&limit=30`)) as {
        chunk: { sender: string; content: { body?: string } }[];
      };
      return page.chunk.find(
        (e) => e.sender === `@_mimi_erin=3ab.example:${HS}` && e.content.body === "welcome Frank",
      );
    }, 30_000);
  }, 120_000);

  it("after a restart, what the homeserver queued meanwhile arrives at once, not after its backoff", async () => {
    const alice = await synapse.registerUser("carol");
    const invite = async (ghost: string): Promise<string> => {
      const created = await fetch(`${synapse.url}/_matrix/client/v3/createRoom`, {
        method: "POST",
        headers: { authorization: `Bearer ${alice.accessToken}`, "content-type": "application/json" },
        body: JSON.stringify({ invite: [ghost] }),
      });
      expect(created.status).toBe(200);
      return ((await created.json()) as { room_id: string }).room_id;
    };
    // Down: the homeserver's deliveries fail and it backs off (2 s, 4 s, 8 s, 16 s, ...).
    const first = await invite(`@_mimi_down1=40b.example:${HS}`);
    await new Promise((resolve) => setTimeout(resolve, 16_000));
    const second = await invite(`@_mimi_down2=40b.example:${HS}`);
    const run = runMain(["-c", good.config]);
    runs.push(run);
    await ready(run);
    const readyAt = Date.now();
    // Its start-up ping makes the homeserver retry now, not after the 16 s or more it waits.
    const arrived = () => run.stderr.includes(first) && run.stderr.includes(second);
    while (!arrived() && Date.now() - readyAt < 30_000) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    expect(arrived()).toBe(true);
    expect(Date.now() - readyAt).toBeLessThan(5_000);
  }, 90_000);

  it("refuses to start when the homeserver does not know its as_token, saying what to do", async () => {
    const other = join(good.dir, "other-registration.yaml");
    await writeRegistration(good, `http://127.0.0.1:${good.appservicePort}`, other);
    const config = join(good.dir, "other-config.yaml");
    writeFileSync(
      config,
      readFileSync(good.config, "utf8").replace("appservice:\n", `appservice:\n  registration: ${other}\n`),
    );
    const run = runMain(["-c", config]);
    runs.push(run);
    expect(await run.exited).toBe(3);
    expect(run.stderr).toContain("does not know our as_token");
    expect(run.stderr).toContain("app_service_config_files");
  }, 60_000);

  it("refuses to start when the homeserver cannot reach it, naming the URL", async () => {
    const run = runMain(["-c", unreachable.config]);
    runs.push(run);
    expect(await run.exited).toBe(3);
    expect(run.stderr).toContain("the homeserver cannot reach the appservice at http://127.0.0.1:9");
  }, 60_000);

  it("refuses to start when the homeserver is not there", async () => {
    const down = await instance("down", `http://127.0.0.1:${await freePort()}`);
    await writeRegistration(down, `http://127.0.0.1:${down.appservicePort}`);
    const run = runMain(["-c", down.config]);
    runs.push(run);
    expect(await run.exited).toBe(3);
    expect(run.stderr).toContain("cannot reach the homeserver at http://127.0.0.1:");
    removeDir(down.dir);
  }, 60_000);
});
