/**
 * What maps between a portal on a real Synapse and its MIMI room, both ways: replies, edits and
 * redactions of messages (each side's event IDs stand for the same message), the MIMI room's
 * invites, kicks and name changes by a remote user shown in the portal, a refused Matrix action
 * undone in the portal with the bot's notice, and what does not map answered with a notice.
 * Erin of b.example is driven through b.example's admin API.
 */
import { removeDir, tempDir } from "../support/services";
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
import { readFileSync } from "node:fs";
import { join } from "node:path";
import yaml from "js-yaml";
import { portalAlias } from "../../src/bridge/ghosts";
import { freePort } from "../../src/util/freePort";
import { ensureSynapse, startSynapse, type RegisteredUser, type SynapseHandle } from "../support/synapse";
import { openTestStore } from "../support/store";

const BOT = `@_mimi_bot:${HS}`;
const ERIN = "@erin:b.example";
const ERIN_GHOST = `@_mimi_erin=3ab.example:${HS}`;

interface TimelineEvent {
  event_id: string;
  sender: string;
  type: string;
  state_key?: string;
  content: Record<string, unknown> & { body?: string; msgtype?: string };
  unsigned?: { redacted_because?: unknown };
}

interface MimiMessage {
  event_id: string;
  sender: string;
  type?: string;
  content?: Record<string, unknown>;
}

describe("mapping between a portal and its MIMI room", () => {
  let synapse: SynapseHandle;
  let local: Instance;
  let remote: Instance;
  let synapseDir: string;
  let localRun: Run;
  let remoteRun: Run;
  let remoteAdmin: unknown;

  beforeAll(async () => {
    ensureSynapse();
    synapseDir = tempDir("synapse-mapping");
    const port = await freePort();
    const remotePort = await freePort();
    local = await instance("mapping", `http://127.0.0.1:${port}`, { routes: { "b.example": remotePort } });
    remote = await plainProvider("b.example", remotePort, { [HS]: local.federationPort });
    await writeRegistration(local, `http://127.0.0.1:${local.appservicePort}`);
    synapse = await startSynapse({
      serverName: HS,
      dir: synapseDir,
      port,
      appserviceRegistrations: [local.registration],
    });
    localRun = runMain(["-c", local.config]);
    remoteRun = runMain(["-c", remote.config]);
    await ready(localRun);
    remoteAdmin = (await ready(remoteRun)).admin_port;
  }, 240_000);

  afterAll(async () => {
    for (const run of [localRun, remoteRun]) {
      if (run !== undefined && run.child.exitCode === null) {
        run.child.kill("SIGTERM");
        await run.exited;
      }
    }
    await synapse?.stop();
    for (const dir of [local?.dir, remote?.dir, synapseDir]) if (dir !== undefined) removeDir(dir);
  });

  const remoteCall = (method: string, path: string, body?: unknown) =>
    adminCall(remoteAdmin, method, path, body);

  /** Erin's client's messages in the MIMI room, as b.example reads them. */
  const erinReads = async (mimiRoomId: string) =>
    (
      (await remoteCall(
        "GET",
        `/rooms/${encodeURIComponent(mimiRoomId)}/messages?user=${encodeURIComponent(ERIN)}&limit=100`,
      )) as { messages: MimiMessage[] }
    ).messages;

  /** Erin sends a message, once her client is in the room's group. */
  const erinSends = (mimiRoomId: string, txnId: string, type: string, content: Record<string, unknown>) =>
    until(async () => {
      const response = await fetch(
        `http://127.0.0.1:${String(remoteAdmin)}/_mimi/admin/v1/rooms/${encodeURIComponent(mimiRoomId)}/messages/${txnId}`,
        {
          method: "PUT",
          headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
          body: JSON.stringify({ sender: ERIN, type, content }),
        },
      );
      return response.status === 200 ? ((await response.json()) as { event_id: string }).event_id : undefined;
    }, 30_000);

  const user = (registered: RegisteredUser) => {
    const call = clientCall(synapse.url, registered.accessToken);
    const json = async (method: string, path: string, body?: unknown) => {
      const response = await call(method, path, body);
      const answer = (await response.json()) as Record<string, unknown>;
      if (response.status !== 200)
        throw new Error(`${method} ${path}: ${response.status} ${JSON.stringify(answer)}`);
      return answer;
    };
    const timeline = async (roomId: string) =>
      (
        (await json("GET", `/rooms/${encodeURIComponent(roomId)}/messages?dir=f&limit=200`)) as {
          chunk: TimelineEvent[];
        }
      ).chunk;
    let txn = 0;
    return {
      json,
      timeline,
      /** The first room the user is invited to, once there is one. */
      firstInvite: () =>
        until(async () => {
          // Synapse caches an initial sync for a while: a filter of its own each time gets a fresh one.
          const filter = encodeURIComponent(
            JSON.stringify({ room: { timeline: { limit: 1, not_types: [`x.${Date.now()}`] } } }),
          );
          const sync = (await json("GET", `/sync?timeout=0&filter=${filter}`)) as {
            rooms?: { invite?: Record<string, unknown> };
          };
          return Object.keys(sync.rooms?.invite ?? {})[0];
        }, 30_000),
      send: async (roomId: string, content: Record<string, unknown>) =>
        (
          (await json(
            "PUT",
            `/rooms/${encodeURIComponent(roomId)}/send/m.room.message/t${Date.now()}-${txn++}`,
            content,
          )) as { event_id: string }
        ).event_id,
      waitFor: (roomId: string, predicate: (e: TimelineEvent) => boolean, timeoutMs = 30_000) =>
        until(async () => (await timeline(roomId)).find(predicate), timeoutMs),
    };
  };

  /** Dave's portal with Erin in it: he creates it with the bot, invites her ghost, she joins at b.example. */
  async function portalWithErin(localpart: string) {
    const dave = user(await synapse.registerUser(localpart));
    const { room_id: roomId } = (await dave.json("POST", "/createRoom", { invite: [BOT] })) as {
      room_id: string;
    };
    const notice = await dave.waitFor(roomId, (e) => e.sender === BOT && e.content.msgtype === "m.notice");
    const mimiRoomId = /MIMI room (![^ ]+:hs1\.test)/.exec(notice.content.body ?? "")![1]!;
    await dave.json("POST", `/rooms/${encodeURIComponent(roomId)}/invite`, { user_id: ERIN_GHOST });
    await until(async () => {
      const invites = (await remoteCall("GET", `/users/${ERIN}/invites`)) as {
        invites: { room_id: string }[];
      };
      return invites.invites.find((i) => i.room_id === mimiRoomId);
    });
    await remoteCall("PUT", `/rooms/${encodeURIComponent(mimiRoomId)}/join/j-${localpart}`, { user: ERIN });
    await dave.waitFor(
      roomId,
      (e) => e.sender === ERIN_GHOST && e.type === "m.room.member" && e.content.membership === "join",
    );
    return { dave, roomId, mimiRoomId, daveId: `@${localpart}:${HS}` };
  }

  it("replies, edits and redactions in Matrix reach the MIMI room naming the MIMI events", async () => {
    const { dave, roomId, mimiRoomId, daveId } = await portalWithErin("dave");
    const original = await dave.send(roomId, { msgtype: "m.text", body: "lunch at noon?" });
    const originalMimi = await until(async () =>
      (await erinReads(mimiRoomId)).find((m) => m.sender === daveId && m.content?.body === "lunch at noon?"),
    );
    await dave.send(roomId, {
      msgtype: "m.text",
      body: "> lunch at noon?\n\nor one?",
      format: "org.matrix.custom.html",
      formatted_body: "<p>or <b>one</b>?</p>",
      "m.relates_to": { "m.in_reply_to": { event_id: original } },
    });
    await dave.send(roomId, {
      msgtype: "m.text",
      body: "* lunch at half past twelve?",
      "m.new_content": { msgtype: "m.text", body: "lunch at half past twelve?" },
      "m.relates_to": { rel_type: "m.replace", event_id: original },
    });
    await dave.json("PUT", `/rooms/${encodeURIComponent(roomId)}/redact/${encodeURIComponent(original)}/r1`, {
      reason: "typo",
    });
    const seen = await until(async () => {
      const messages = await erinReads(mimiRoomId);
      return messages.some((m) => m.type === "m.room.redaction") ? messages : undefined;
    });
    const reply = seen.find((m) => m.content?.body === "> lunch at noon?\n\nor one?");
    expect(reply?.content).toEqual({
      msgtype: "m.text",
      body: "> lunch at noon?\n\nor one?",
      format: "org.matrix.custom.html",
      formatted_body: "<p>or <b>one</b>?</p>",
      "m.relates_to": { "m.in_reply_to": { event_id: originalMimi.event_id } },
      // Synapse names a registered user after their localpart.
      "io.mimi-appservice.sender_name": "dave",
    });
    const edit = seen.find((m) => m.content?.body === "* lunch at half past twelve?");
    expect(edit?.content).toEqual({
      msgtype: "m.text",
      body: "* lunch at half past twelve?",
      "m.new_content": { msgtype: "m.text", body: "lunch at half past twelve?" },
      "m.relates_to": { rel_type: "m.replace", event_id: originalMimi.event_id },
      "io.mimi-appservice.sender_name": "dave",
    });
    const redaction = seen.find((m) => m.type === "m.room.redaction");
    expect(redaction).toMatchObject({
      sender: daveId,
      content: { redacts: originalMimi.event_id, reason: "typo" },
    });
  }, 150_000);

  it("display names travel inside MLS: the sender's name in the MIMI room, the ghost's in Matrix", async () => {
    const { dave, roomId, mimiRoomId, daveId } = await portalWithErin("della");
    await dave.json("PUT", `/profile/${encodeURIComponent(daveId)}/displayname`, { displayname: "Della D." });
    await dave.send(roomId, { msgtype: "m.text", body: "named" });
    const seen = await until(async () =>
      (await erinReads(mimiRoomId)).find((m) => m.sender === daveId && m.content?.body === "named"),
    );
    expect(seen.content?.["io.mimi-appservice.sender_name"]).toBe("Della D.");
    // The hub's history holds only ciphertext: the name is not in it.
    const history = JSON.stringify(
      await remoteCall("GET", `/rooms/${encodeURIComponent(mimiRoomId)}/history?limit=200`),
    );
    expect(history).not.toContain("Della D.");

    await erinSends(mimiRoomId, "name1", "m.room.message", {
      msgtype: "m.text",
      body: "from Erin",
      "io.mimi-appservice.sender_name": "Erin\u0007 E.\u202e",
    });
    const shown = await dave.waitFor(
      roomId,
      (e) => e.sender === ERIN_GHOST && e.content.body === "from Erin",
    );
    expect(shown.content["io.mimi-appservice.sender_name"]).toBeUndefined();
    const profile = await until(async () => {
      const answer = await dave.json("GET", `/profile/${encodeURIComponent(ERIN_GHOST)}`);
      return answer.displayname === "Erin E. (b.example)" ? answer : undefined;
    });
    expect(profile.displayname).toBe("Erin E. (b.example)");
  }, 120_000);

  it("a remote user's replies, edits and redactions show in the portal naming the portal's events", async () => {
    const { dave, roomId, mimiRoomId } = await portalWithErin("dana");
    const first = await erinSends(mimiRoomId, "e1", "m.room.message", {
      msgtype: "m.text",
      body: "hello Dana",
    });
    const shown = await dave.waitFor(
      roomId,
      (e) => e.sender === ERIN_GHOST && e.content.body === "hello Dana",
    );
    await erinSends(mimiRoomId, "e2", "m.room.message", {
      msgtype: "m.text",
      body: "did you see?",
      "m.relates_to": { "m.in_reply_to": { event_id: first } },
    });
    await erinSends(mimiRoomId, "e3", "m.room.message", {
      msgtype: "m.text",
      body: "* hello, Dana",
      "m.new_content": { msgtype: "m.text", body: "hello, Dana" },
      "m.relates_to": { rel_type: "m.replace", event_id: first },
    });
    const reply = await dave.waitFor(
      roomId,
      (e) => e.sender === ERIN_GHOST && e.content.body === "did you see?",
    );
    expect(reply.content["m.relates_to"]).toEqual({ "m.in_reply_to": { event_id: shown.event_id } });
    const edit = await dave.waitFor(
      roomId,
      (e) => e.sender === ERIN_GHOST && e.content.body === "* hello, Dana",
    );
    expect(edit.content["m.relates_to"]).toEqual({ rel_type: "m.replace", event_id: shown.event_id });
    expect(edit.content["m.new_content"]).toEqual({ msgtype: "m.text", body: "hello, Dana" });

    // A dave's message: Erin may not take it back, only her own.
    const davesOwn = await dave.send(roomId, { msgtype: "m.text", body: "mine" });
    const davesMimi = await until(async () =>
      (await erinReads(mimiRoomId)).find((m) => m.content?.body === "mine"),
    );
    await erinSends(mimiRoomId, "e4", "m.room.redaction", { redacts: davesMimi.event_id });
    await erinSends(mimiRoomId, "e5", "m.room.redaction", { redacts: first });
    await dave.waitFor(
      roomId,
      (e) => e.event_id === shown.event_id && e.unsigned?.redacted_because !== undefined,
    );
    await erinSends(mimiRoomId, "e6", "m.room.message", { msgtype: "m.text", body: "after" });
    await dave.waitFor(roomId, (e) => e.sender === ERIN_GHOST && e.content.body === "after");
    const mine = (await dave.timeline(roomId)).find((e) => e.event_id === davesOwn);
    expect(mine?.unsigned?.redacted_because).toBeUndefined();
    expect(mine?.content.body).toBe("mine");
  }, 150_000);

  it("the MIMI room's invites, kicks and renames by a remote user show in the portal", async () => {
    // Erin's room on b.example; she invites Frank of this homeserver, who accepts in his client.
    const frank = user(await synapse.registerUser("frank"));
    const frankId = `@frank:${HS}`;
    const { room_id: mimiRoomId } = (await remoteCall("PUT", "/createRoom/c-frank", { creator: ERIN })) as {
      room_id: string;
    };
    await remoteCall("PUT", `/rooms/${encodeURIComponent(mimiRoomId)}/invite/i-frank`, {
      sender: ERIN,
      target: frankId,
    });
    const portal = await frank.firstInvite();
    await frank.json("POST", `/join/${encodeURIComponent(portal)}`, {});
    await until(async () => {
      const room = (await remoteCall("GET", `/rooms/${encodeURIComponent(mimiRoomId)}`)) as {
        participation: Record<string, string>;
      };
      return room.participation[frankId] === "join" ? true : undefined;
    }, 30_000);

    // Erin renames the room: the portal's name follows.
    await remoteCall("PUT", `/rooms/${encodeURIComponent(mimiRoomId)}/send/m.room.name/n1`, {
      sender: ERIN,
      state_key: "",
      content: { name: "Erin's corner" },
    });
    await frank.waitFor(portal, (e) => e.type === "m.room.name" && e.content.name === "Erin's corner");

    // Erin invites Gina of this homeserver: the bot invites her into the portal.
    const gina = user(await synapse.registerUser("gina"));
    await remoteCall("PUT", `/rooms/${encodeURIComponent(mimiRoomId)}/invite/i-gina`, {
      sender: ERIN,
      target: `@gina:${HS}`,
    });
    await frank.waitFor(
      portal,
      (e) => e.type === "m.room.member" && e.state_key === `@gina:${HS}` && e.content.membership === "invite",
    );
    expect(gina).toBeDefined();

    // Erin kicks Frank: he is removed from the portal, saying by whom.
    await remoteCall("PUT", `/rooms/${encodeURIComponent(mimiRoomId)}/kick/k-frank`, {
      sender: ERIN,
      target: frankId,
      reason: "bye",
    });
    const kick = await until(async () => {
      const state = (await frank.json(
        "GET",
        `/rooms/${encodeURIComponent(portal)}/state/m.room.member/${encodeURIComponent(frankId)}`,
      )) as { membership?: string; reason?: string };
      return state.membership === "leave" ? state : undefined;
    }, 30_000);
    expect(kick.reason).toContain(`by ${ERIN} in the MIMI room: bye`);
  }, 180_000);

  it("a local user invited into a portal joins the MIMI room; their kick the MIMI room refuses is undone", async () => {
    const { dave, roomId, mimiRoomId } = await portalWithErin("doris");
    const hank = user(await synapse.registerUser("hank"));
    const hankId = `@hank:${HS}`;
    await dave.json("POST", `/rooms/${encodeURIComponent(roomId)}/invite`, { user_id: hankId });
    await until(async () => {
      const room = (await remoteCall("GET", `/rooms/${encodeURIComponent(mimiRoomId)}`)) as {
        participation: Record<string, string>;
      };
      return room.participation[hankId] === "invite" ? true : undefined;
    }, 30_000);
    await hank.json("POST", `/join/${encodeURIComponent(roomId)}`, {});
    await until(async () => {
      const room = (await remoteCall("GET", `/rooms/${encodeURIComponent(mimiRoomId)}`)) as {
        participation: Record<string, string>;
      };
      return room.participation[hankId] === "join" ? true : undefined;
    }, 30_000);
    // Dave makes Hank a moderator in Matrix; in the MIMI room he stays a plain member.
    const levels = await dave.json("GET", `/rooms/${encodeURIComponent(roomId)}/state/m.room.power_levels/`);
    await dave.json("PUT", `/rooms/${encodeURIComponent(roomId)}/state/m.room.power_levels/`, {
      ...levels,
      users: { ...(levels.users as Record<string, number>), [hankId]: 50 },
    });
    await hank.json("POST", `/rooms/${encodeURIComponent(roomId)}/kick`, { user_id: ERIN_GHOST });
    const refusal = await hank.waitFor(
      roomId,
      (e) =>
        e.sender === BOT && (e.content.body ?? "").startsWith(`Not done in the MIMI room (leave of ${ERIN})`),
    );
    expect(refusal.content.body).toContain("Put back in this room.");
    const ghostState = await until(async () => {
      const state = (await hank.json(
        "GET",
        `/rooms/${encodeURIComponent(roomId)}/state/m.room.member/${encodeURIComponent(ERIN_GHOST)}`,
      )) as { membership?: string };
      return state.membership === "join" ? state : undefined;
    }, 30_000);
    expect(ghostState.membership).toBe("join");
    const room = (await remoteCall("GET", `/rooms/${encodeURIComponent(mimiRoomId)}`)) as {
      participation: Record<string, string>;
    };
    expect(room.participation[ERIN]).toBe("join");
  }, 150_000);

  it("a portal alias joins a public MIMI room of another provider; a room that refuses the join is left again", async () => {
    const ivy = user(await synapse.registerUser("ivy"));
    const ivyId = `@ivy:${HS}`;
    const { room_id: mimiRoomId } = (await remoteCall("PUT", "/createRoom/c-public", { creator: ERIN })) as {
      room_id: string;
    };
    await remoteCall("PUT", `/rooms/${encodeURIComponent(mimiRoomId)}/send/m.room.join_rules/jr1`, {
      sender: ERIN,
      state_key: "",
      content: { rule: "public" },
    });
    await remoteCall("PUT", `/rooms/${encodeURIComponent(mimiRoomId)}/send/m.room.name/n-public`, {
      sender: ERIN,
      state_key: "",
      content: { name: "Open room" },
    });
    const alias = portalAlias(mimiRoomId, "_mimi_", HS);
    const joined = (await ivy.json("POST", `/join/${encodeURIComponent(alias)}`, {})) as { room_id: string };
    await until(async () => {
      const room = (await remoteCall("GET", `/rooms/${encodeURIComponent(mimiRoomId)}`)) as {
        participation: Record<string, string>;
      };
      return room.participation[ivyId] === "join" ? true : undefined;
    }, 30_000);
    await ivy.waitFor(joined.room_id, (e) => e.type === "m.room.name" && e.content.name === "Open room");
    // Her client joins the group by external commit (RFC 9420 §12.4.3.2): Erin's client sees it first.
    await until(async () => {
      const group = (await remoteCall(
        "GET",
        `/rooms/${encodeURIComponent(mimiRoomId)}/mls?user=${encodeURIComponent(ERIN)}`,
      )) as { members: string[] };
      return group.members.includes(ivyId) ? true : undefined;
    }, 30_000);
    await erinSends(mimiRoomId, "p1", "m.room.message", { msgtype: "m.text", body: "welcome, Ivy" });
    await ivy.waitFor(joined.room_id, (e) => e.sender === ERIN_GHOST && e.content.body === "welcome, Ivy");

    // An invite-only room: Ivy gets into the portal, the MIMI room refuses her, the bot removes her.
    const { room_id: closed } = (await remoteCall("PUT", "/createRoom/c-closed", { creator: ERIN })) as {
      room_id: string;
    };
    const closedPortal = (await ivy.json(
      "POST",
      `/join/${encodeURIComponent(portalAlias(closed, "_mimi_", HS))}`,
      {},
    )) as {
      room_id: string;
    };
    const state = await until(async () => {
      const member = (await ivy
        .json(
          "GET",
          `/rooms/${encodeURIComponent(closedPortal.room_id)}/state/m.room.member/${encodeURIComponent(ivyId)}`,
        )
        .catch(() => ({ membership: "leave" }))) as { membership?: string; reason?: string };
      return member.membership === "leave" ? member : undefined;
    }, 30_000);
    expect(state.membership).toBe("leave");
    const room = (await remoteCall("GET", `/rooms/${encodeURIComponent(closed)}`)) as {
      participation: Record<string, string>;
    };
    expect(room.participation[ivyId]).toBeUndefined();
    // An alias that names no valid MIMI room is not found.
    const missing = await clientCall(synapse.url, (await synapse.registerUser("ivy2")).accessToken)(
      "POST",
      `/join/${encodeURIComponent(`#_mimi_not-a-room:${HS}`)}`,
      {},
    );
    expect(missing.status).toBe(404);
  }, 150_000);

  it("the homeserver's query for a user of the namespace registers the ghost, named after its MIMI user", async () => {
    const { hs_token: hsToken } = yaml.load(readFileSync(local.registration, "utf8")) as { hs_token: string };
    const query = (userId: string, token = hsToken) =>
      fetch(`http://127.0.0.1:${local.appservicePort}/_matrix/app/v1/users/${encodeURIComponent(userId)}`, {
        headers: { authorization: `Bearer ${token}` },
      });
    const zed = `@_mimi_zed=3ab.example:${HS}`;
    expect((await query(zed, "wrong-token")).status).toBe(403);
    expect((await query(zed)).status).toBe(200);
    const viewer = user(await synapse.registerUser("viewer"));
    const profile = await viewer.json("GET", `/profile/${encodeURIComponent(zed)}`);
    expect(profile.displayname).toBe("@zed:b.example");
    // Not a ghost (bad escape), and not a remote user (our own server's): not found.
    expect((await query(`@_mimi_Bad:${HS}`)).status).toBe(404);
    expect((await query(`@_mimi_ann=3a${HS}:${HS}`)).status).toBe(404);
  }, 60_000);

  it("a portal room made just before a crash is found again by its mark, not made twice", async () => {
    const { as_token: asToken } = yaml.load(readFileSync(local.registration, "utf8")) as { as_token: string };
    const asBot = clientCall(synapse.url, asToken);
    const botRooms = async () =>
      ((await (await asBot("GET", "/joined_rooms")).json()) as { joined_rooms: string[] }).joined_rooms;
    const { room_id: mimiRoomId } = (await remoteCall("PUT", "/createRoom/c-crash", { creator: ERIN })) as {
      room_id: string;
    };
    // The state a crash leaves: the attempt recorded, the marked room made, no portal record.
    localRun.child.kill("SIGKILL");
    await localRun.exited;
    const store = await openTestStore(join(local.dir, "data", "db"), { durability: "os" });
    await store.commit([{ type: "put", key: `bo\u0000${mimiRoomId}`, value: "1" }]);
    await store.close();
    const made = await asBot("POST", "/createRoom", {
      preset: "private_chat",
      initial_state: [{ type: "io.mimi-appservice.portal", state_key: "", content: { room_id: mimiRoomId } }],
    });
    const { room_id: orphan } = (await made.json()) as { room_id: string };
    const before = (await botRooms()).length;
    localRun = runMain(["-c", local.config]);
    await ready(localRun);

    const kim = user(await synapse.registerUser("kim"));
    await remoteCall("PUT", `/rooms/${encodeURIComponent(mimiRoomId)}/invite/i-kim`, {
      sender: ERIN,
      target: `@kim:${HS}`,
    });
    const portal = await kim.firstInvite();
    expect(portal).toBe(orphan);
    expect((await botRooms()).length).toBe(before);
  }, 120_000);

  it("when the portal's reader leaves, another local member's client reads the MIMI room for it", async () => {
    const { dave, roomId, mimiRoomId, daveId } = await portalWithErin("dina");
    const lena = user(await synapse.registerUser("lena"));
    const lenaId = `@lena:${HS}`;
    await dave.json("POST", `/rooms/${encodeURIComponent(roomId)}/invite`, { user_id: lenaId });
    await until(async () => {
      const room = (await remoteCall("GET", `/rooms/${encodeURIComponent(mimiRoomId)}`)) as {
        participation: Record<string, string>;
      };
      return room.participation[lenaId] === "invite" ? true : undefined;
    }, 30_000);
    await lena.json("POST", `/join/${encodeURIComponent(roomId)}`, {});
    await until(async () => {
      const group = (await remoteCall(
        "GET",
        `/rooms/${encodeURIComponent(mimiRoomId)}/mls?user=${encodeURIComponent(ERIN)}`,
      )) as { members: string[] };
      return group.members.includes(lenaId) ? true : undefined;
    }, 30_000);
    await dave.json("POST", `/rooms/${encodeURIComponent(roomId)}/leave`, {});
    await until(async () => {
      const room = (await remoteCall("GET", `/rooms/${encodeURIComponent(mimiRoomId)}`)) as {
        participation: Record<string, string>;
      };
      return room.participation[daveId] === "leave" ? true : undefined;
    }, 30_000);
    await erinSends(mimiRoomId, "after-dina", "m.room.message", {
      msgtype: "m.text",
      body: "still here, Lena?",
    });
    await lena.waitFor(roomId, (e) => e.sender === ERIN_GHOST && e.content.body === "still here, Lena?");
  }, 120_000);

  it("what does not map is answered with a notice", async () => {
    const { dave, roomId } = await portalWithErin("dorothy");
    const target = await dave.send(roomId, { msgtype: "m.text", body: "react to this" });
    const reaction = await dave.json("PUT", `/rooms/${encodeURIComponent(roomId)}/send/m.reaction/x1`, {
      "m.relates_to": { rel_type: "m.annotation", event_id: target, key: "👍" },
    });
    expect(reaction.event_id).toBeDefined();
    await dave.waitFor(
      roomId,
      (e) =>
        e.sender === BOT &&
        e.content.body === "Not sent to the MIMI room: m.reaction events are not bridged to the MIMI room.",
    );
    await dave.send(roomId, { msgtype: "m.image", body: "cat.png", url: "mxc://x/y" });
    await dave.waitFor(
      roomId,
      (e) =>
        e.sender === BOT && (e.content.body ?? "").includes('messages of type "m.image" are not bridged'),
    );
  }, 150_000);
});
