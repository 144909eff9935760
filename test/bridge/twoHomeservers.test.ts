/**
 * Two homeservers, each a MIMI provider through its appservice running as a separate process,
 * end to end and only as Matrix users would act: through the client-server API of their own
 * Synapse. alice is on a.example, bob and carol on b.example; the MIMI room is hosted by a.example.
 *
 * The steps share one harness start and run in order; once one fails, the later ones are
 * reported as not run rather than failing for the same reason. A failure carries the last lines
 * of both appservices' stderr and both Synapses' logs (set MIMI_KEEP_DIRS=1 to keep all of them,
 * MIMI_TEST_LOGS=1 to see the appservices' stderr as it comes).
 */
import { readFileSync, statSync } from "node:fs";
import { removeDir, tempDir } from "../support/services";
import {
  describeTimeline,
  startTwoHomeservers,
  type Harness,
  type MatrixClient,
  isBotNotice,
  isMembership,
  isMessage,
  type MatrixEvent,
} from "../support/twoHomeservers";

jest.setTimeout(300_000);

const WAIT_MS = 60_000;
const BURST = 20;

let h: Harness;
let dir: string;
let alice: MatrixClient;
let bob: MatrixClient;
let carol: MatrixClient;
/** alice's room on a.example, the portal of the MIMI room; bob's portal of it on b.example. */
let portalA: string;
let portalB: string;
let mimiRoomId: string;
/** The ghosts: of bob and carol on a.example, of alice on b.example. */
let bobOnA: string;
let carolOnA: string;
let aliceOnB: string;
/** Every message body sent in this file: none may cross MIMI federation in the clear. */
const sentBodies: string[] = [];
let failedStep: string | undefined;

/** A step of the story: skipped once an earlier one failed; a failure carries the processes' logs. */
function step(name: string, fn: () => Promise<void>, timeoutMs?: number): void {
  it(
    name,
    async () => {
      if (failedStep !== undefined) throw new Error(`not run: the earlier step "${failedStep}" failed`);
      try {
        await fn();
      } catch (err) {
        failedStep = name;
        const message = err instanceof Error ? err.message : String(err);
        if (!message.includes("--- appservice of")) {
          (err as Error).message = `${message}\n${h?.diagnostics() ?? ""}`;
        }
        throw err;
      }
    },
    timeoutMs,
  );
}

/** Sends a text message and keeps its body for the wire check. */
function say(client: MatrixClient, roomId: string, body: string, txnId?: string): Promise<string> {
  sentBodies.push(body);
  return client.sendText(roomId, body, txnId);
}

function sayHtml(client: MatrixClient, roomId: string, body: string, html: string): Promise<string> {
  sentBodies.push(body, html);
  return client.sendHtml(roomId, body, html);
}

const relatesTo = (e: MatrixEvent) => (e.content["m.relates_to"] ?? {}) as Record<string, unknown>;

beforeAll(async () => {
  dir = tempDir("two-homeservers");
  h = await startTwoHomeservers({ dir });
  [alice, bob, carol] = await Promise.all([
    h.a.registerUser("alice"),
    h.b.registerUser("bob"),
    h.b.registerUser("carol"),
  ]);
  bobOnA = h.a.ghostOf("@bob:b.example");
  carolOnA = h.a.ghostOf("@carol:b.example");
  aliceOnB = h.b.ghostOf("@alice:a.example");
}, 240_000);

afterAll(async () => {
  await h?.stop();
  if (dir !== undefined && !process.env.MIMI_KEEP_DIRS) removeDir(dir);
});

describe("two homeservers, each with its appservice as a separate process", () => {
  step("the ghosts and the bot have the configured names", async () => {
    expect(h.a.botUserId).toBe("@_mimi_bot:a.example");
    expect(bobOnA).toBe("@_mimi_bob=3ab.example:a.example");
    expect(aliceOnB).toBe("@_mimi_alice=3aa.example:b.example");
  });

  step(
    "alice's room with the bot invited becomes the portal of a MIMI room hosted by a.example",
    async () => {
      portalA = await alice.createRoom({ name: "Across homeservers", invite: [h.a.botUserId] });
      const notice = await alice.waitForEvent(
        portalA,
        isBotNotice(h.a.botUserId, /MIMI room/),
        WAIT_MS,
        "the bot's notice",
      );
      mimiRoomId = /MIMI room (![^\s,]+)/.exec(String(notice.content.body))![1]!;
      expect(mimiRoomId).toMatch(/:a\.example$/);
      expect(alice.timeline(portalA).some(isMembership(h.a.botUserId, "join"))).toBe(true);
    },
  );

  step("alice invites bob's ghost: bob gets an invite on b.example from its bot, and joins", async () => {
    await alice.invite(portalA, bobOnA);
    const invite = await bob.waitForInvite((i) => i.inviter === h.b.botUserId, WAIT_MS);
    portalB = await bob.join(invite.roomId);
    await bob.waitForEvent(
      portalB,
      isBotNotice(h.b.botUserId, new RegExp(`invites you to the MIMI room ${escape(mimiRoomId)}`)),
      WAIT_MS,
      "the bot's notice naming the MIMI room",
    );
    // Each side's ghost of the other joins their portal.
    await alice.waitForEvent(portalA, isMembership(bobOnA, "join"), WAIT_MS, "bob's ghost joining");
    await bob.waitForEvent(portalB, isMembership(aliceOnB, "join"), WAIT_MS, "alice's ghost joining");
  });

  step("they exchange messages both ways, each shown from the other's ghost, HTML included", async () => {
    await say(alice, portalA, "hello bob, from a.example");
    await bob.waitForEvent(
      portalB,
      isMessage(aliceOnB, "hello bob, from a.example"),
      WAIT_MS,
      "alice's text",
    );
    await say(bob, portalB, "hi alice, from b.example");
    const fromBob = await alice.waitForEvent(
      portalA,
      isMessage(bobOnA, "hi alice, from b.example"),
      WAIT_MS,
      "bob's text",
    );
    expect(fromBob.content.msgtype).toBe("m.text");

    await sayHtml(alice, portalA, "this is **bold**", "this is <strong>bold</strong>");
    const html = await bob.waitForEvent(
      portalB,
      isMessage(aliceOnB, "this is **bold**"),
      WAIT_MS,
      "alice's HTML",
    );
    expect(html.content).toMatchObject({
      msgtype: "m.text",
      format: "org.matrix.custom.html",
      formatted_body: "this is <strong>bold</strong>",
    });
    sentBodies.push("waves back", "<em>waves</em> back");
    await bob.sendEvent(portalB, "m.room.message", {
      msgtype: "m.emote",
      body: "waves back",
      format: "org.matrix.custom.html",
      formatted_body: "<em>waves</em> back",
    });
    const emote = await alice.waitForEvent(portalA, isMessage(bobOnA, "waves back"), WAIT_MS, "bob's emote");
    expect(emote.content).toMatchObject({
      msgtype: "m.emote",
      format: "org.matrix.custom.html",
      formatted_body: "<em>waves</em> back",
    });
    // Nobody sees their own messages echoed by a ghost of themselves.
    expect(alice.timeline(portalA).filter((e) => e.sender === h.a.ghostOf("@alice:a.example"))).toEqual([]);
  });

  // Built alongside this test in src/bridge/matrixBridge.ts (linked event IDs, messageContent.ts).
  describe("replies, edits and redactions", () => {
    /** A message of alice's and its copy on b.example, once shown there. */
    async function aliceSaysAndBobSees(body: string): Promise<{ onA: string; onB: string }> {
      const onA = await say(alice, portalA, body);
      const shown = await bob.waitForEvent(portalB, isMessage(aliceOnB, body), WAIT_MS, `"${body}"`);
      return { onA, onB: shown.event_id };
    }

    step("a reply points at the other side's event of the message it answers", async () => {
      const original = await aliceSaysAndBobSees("what time is lunch?");
      sentBodies.push("at noon", "> what time is lunch?");
      await bob.sendEvent(portalB, "m.room.message", {
        msgtype: "m.text",
        body: "> <@_mimi_alice=3aa.example:b.example> what time is lunch?\n\nat noon",
        "m.relates_to": { "m.in_reply_to": { event_id: original.onB } },
      });
      const reply = await alice.waitForEvent(
        portalA,
        (e) => e.sender === bobOnA && relatesTo(e)["m.in_reply_to"] !== undefined,
        WAIT_MS,
        "bob's reply",
      );
      expect(relatesTo(reply)["m.in_reply_to"]).toEqual({ event_id: original.onA });
      expect(String(reply.content.body)).toContain("at noon");

      // And the other way: alice answers bob's reply, as her client shows it.
      sentBodies.push("noon it is");
      const answer = await alice.sendEvent(portalA, "m.room.message", {
        msgtype: "m.text",
        body: "noon it is",
        "m.relates_to": { "m.in_reply_to": { event_id: reply.event_id } },
      });
      const shown = await bob.waitForEvent(
        portalB,
        isMessage(aliceOnB, "noon it is"),
        WAIT_MS,
        "alice's answer",
      );
      const bobsReply = bob
        .timeline(portalB)
        .find((e) => e.sender === bob.userId && String(e.content.body).endsWith("at noon"));
      expect(relatesTo(shown)["m.in_reply_to"]).toEqual({ event_id: bobsReply?.event_id });
      expect(answer).not.toBe(shown.event_id);
    });

    step("an edit shows as an edit of the other side's event of the message", async () => {
      const original = await aliceSaysAndBobSees("lunch at 1pm");
      sentBodies.push("* lunch at 12pm", "lunch at 12pm");
      await alice.sendEvent(portalA, "m.room.message", {
        msgtype: "m.text",
        body: "* lunch at 12pm",
        "m.new_content": { msgtype: "m.text", body: "lunch at 12pm" },
        "m.relates_to": { rel_type: "m.replace", event_id: original.onA },
      });
      const edit = await bob.waitForEvent(
        portalB,
        (e) => e.sender === aliceOnB && relatesTo(e).rel_type === "m.replace",
        WAIT_MS,
        "alice's edit",
      );
      expect(relatesTo(edit).event_id).toBe(original.onB);
      expect(edit.content["m.new_content"]).toMatchObject({ msgtype: "m.text", body: "lunch at 12pm" });
    });

    step("a redaction redacts the other side's event of the message", async () => {
      const original = await aliceSaysAndBobSees("oops, wrong room");
      await alice.redact(portalA, original.onA);
      const redaction = await bob.waitForEvent(
        portalB,
        (e) => e.type === "m.room.redaction" && (e.redacts ?? e.content.redacts) === original.onB,
        WAIT_MS,
        "the redaction of alice's message",
      );
      expect([aliceOnB, h.b.botUserId]).toContain(redaction.sender);
    });
  });

  step(
    "carol of b.example joins the MIMI room; alice kicks and bans her: she is out of it on b.example",
    async () => {
      // alice invites carol's ghost: the MIMI invite reaches b.example, whose bot invites carol into
      // the portal it has for the room already (bob's).
      await alice.invite(portalA, carolOnA);
      const invite = await carol.waitForInvite((i) => i.roomId === portalB, WAIT_MS);
      expect(invite.inviter).toBe(h.b.botUserId);
      await carol.join(portalB);
      await alice.waitForEvent(portalA, isMembership(carolOnA, "join"), WAIT_MS, "carol's ghost joining");
      await say(carol, portalB, "carol here");
      await alice.waitForEvent(portalA, isMessage(carolOnA, "carol here"), WAIT_MS, "carol's message");

      // alice kicks carol's ghost: b.example's bot removes carol from the portal, saying why.
      await alice.kick(portalA, carolOnA, "off topic");
      const kicked = await carol.waitForEvent(
        portalB,
        isMembership(carol.userId, "leave"),
        WAIT_MS,
        "carol removed from the portal",
      );
      expect(kicked.sender).toBe(h.b.botUserId);
      expect(String(kicked.content.reason)).toContain("@alice:a.example");
      expect(String(kicked.content.reason)).toContain("off topic");
      // What she writes no longer reaches the MIMI room: the homeserver refuses it.
      await expect(say(carol, portalB, "carol after the kick")).rejects.toMatchObject({ status: 403 });

      // alice bans carol's ghost: the bot bans carol from the portal.
      await alice.ban(portalA, carolOnA, "for good");
      const banned = await carol.waitForEvent(
        portalB,
        isMembership(carol.userId, "ban"),
        WAIT_MS,
        "carol banned",
      );
      expect(banned.sender).toBe(h.b.botUserId);
      await expect(carol.join(portalB)).rejects.toMatchObject({ status: 403 });

      // The room goes on without her: bob still reads alice, and nothing more of carol's reached alice.
      await say(alice, portalA, "carol has left us");
      await bob.waitForEvent(portalB, isMessage(aliceOnB, "carol has left us"), WAIT_MS, "alice's message");
      await alice.sync(0);
      const fromCarol = alice
        .timeline(portalA)
        .filter((e) => e.sender === carolOnA && e.type === "m.room.message");
      expect(fromCarol.map((e) => e.content.body)).toEqual(["carol here"]);
      expect(alice.timeline(portalA).some(isMembership(carolOnA, "ban"))).toBe(true);
    },
  );

  step(
    "a burst both ways survives SIGKILL and restart of b's appservice, then a's: every message once, in order",
    async () => {
      const fromAlice: string[] = [];
      const fromBob: string[] = [];
      const trouble = /could not be read|Not sent|cannot be shown|Not done/;
      const troubleBefore = [
        (await alice.history(portalA)).filter(isBotNotice(h.a.botUserId, trouble)).length,
        (await bob.history(portalB)).filter(isBotNotice(h.b.botUserId, trouble)).length,
      ];
      // Each appservice is killed mid-burst; three rounds of messages are sent while it is down
      // (its homeserver queues them, the other provider's queue retries), then it starts again.
      const killAt = [Math.floor(BURST / 3), Math.floor((2 * BURST) / 3)];
      const DOWN_ROUNDS = 3;
      let since = 0;
      for (let i = 0; i < BURST; i++) {
        for (const [n, side] of [h.b, h.a].entries()) {
          if (i === killAt[n]) {
            since = statSync(side.synapse.logFile).size;
            await side.appservice.kill("SIGKILL");
          }
          if (i === killAt[n]! + DOWN_ROUNDS) {
            await side.appservice.start();
            await homeserverRecovered(side.synapse.logFile, since);
          }
        }
        const a = `burst alice ${i}`;
        const b = `burst bob ${i}`;
        fromAlice.push(a);
        fromBob.push(b);
        await say(alice, portalA, a, `burst-a-${i}`);
        await say(bob, portalB, b, `burst-b-${i}`);
      }
      const bodiesFrom = (events: MatrixEvent[], sender: string) =>
        events
          .filter((e) => e.type === "m.room.message" && e.sender === sender)
          .map((e) => String(e.content.body))
          .filter((body) => body.startsWith("burst "));
      const complete = (sender: string, expected: string[]) => (t: MatrixEvent[]) =>
        bodiesFrom(t, sender).length >= expected.length;
      // On a timeout, what is missing and the processes' warnings come first: the timelines are long.
      const waitForBurst = async (
        client: MatrixClient,
        roomId: string,
        sender: string,
        expected: string[],
      ) => {
        try {
          await client.waitForTimeline(
            roomId,
            complete(sender, expected),
            120_000,
            `the whole burst of ${sender}`,
          );
        } catch (err) {
          const seen = new Set(bodiesFrom(client.timeline(roomId), sender));
          const warnings = [h.a.appservice, h.b.appservice].flatMap((p) =>
            p
              .stderrLines()
              .filter((line) => /"level":"(warn|error)"/.test(line) && !line.includes("delivery failed")),
          );
          (err as Error).message =
            `missing: ${JSON.stringify(expected.filter((body) => !seen.has(body)))}\n` +
            `warnings and errors of the appservices (delivery retries left out):\n${warnings.join("\n")}\n` +
            (err as Error).message;
          throw err;
        }
      };
      await waitForBurst(bob, portalB, aliceOnB, fromAlice);
      await waitForBurst(alice, portalA, bobOnA, fromBob);
      // A duplicate would come from a replay just after a restart: give it time to show.
      await new Promise((resolve) => setTimeout(resolve, 3_000));
      const onA = await alice.history(portalA);
      const onB = await bob.history(portalB);
      const context = `\non a.example:\n${describeTimeline(onA)}\non b.example:\n${describeTimeline(onB)}`;
      try {
        expect(bodiesFrom(onA, alice.userId)).toEqual(fromAlice);
        expect(bodiesFrom(onA, bobOnA)).toEqual(fromBob);
        expect(bodiesFrom(onB, bob.userId)).toEqual(fromBob);
        expect(bodiesFrom(onB, aliceOnB)).toEqual(fromAlice);
        // Nothing was refused or unreadable on the way.
        expect([
          onA.filter(isBotNotice(h.a.botUserId, trouble)).length,
          onB.filter(isBotNotice(h.b.botUserId, trouble)).length,
        ]).toEqual(troubleBefore);
      } catch (err) {
        (err as Error).message += context;
        throw err;
      }
    },
    240_000,
  );

  step("bob leaves his portal: his ghost leaves alice's", async () => {
    await bob.leave(portalB);
    await alice.waitForEvent(portalA, isMembership(bobOnA, "leave"), WAIT_MS, "bob's ghost leaving");
  });

  step("MIMI federation carries no message body in the clear, and m.room.encrypted events", async () => {
    // Both providers were reached, and their answers are in the capture too.
    expect(new Set(h.federation.map((c) => c.to))).toEqual(new Set(["a.example", "b.example"]));
    expect(h.federation.filter((c) => c.direction === "response").length).toBeGreaterThan(10);
    const bodies = h.federation.map((c) => c.body);
    expect(bodies.some((body) => body.includes('"m.room.encrypted"'))).toBe(true);
    const leaked = sentBodies.filter((text) => bodies.some((body) => body.includes(text)));
    expect(leaked).toEqual([]);
  });
});

/**
 * Synapse has delivered what it queued while the appservice was down. Sending more before that
 * would meet Synapse's own race (synapse/appservice/scheduler.py): a transaction it creates while
 * its recoverer, having sent the last queued one, is still marking the appservice up is left
 * unsent until the appservice is next down. The recoverer logs its end just before that mark,
 * hence the short wait after the line.
 */
async function homeserverRecovered(logFile: string, since: number): Promise<void> {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const log = readFileSync(logFile, "utf8").slice(since);
    if (/Successfully recovered application service|is not in recovery/.test(log)) break;
    if (Date.now() > deadline)
      throw new Error(
        `Synapse did not log the appservice's recovery within ${WAIT_MS / 1000} s:\n${log.slice(-4000)}`,
      );
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  await new Promise((resolve) => setTimeout(resolve, 500));
}

/** A string as a literal part of a regular expression. */
function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}
