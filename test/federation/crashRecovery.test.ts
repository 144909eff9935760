import {
  eventually,
  startProviders,
  stopProviders,
  stream,
  type ProviderProcess,
} from "../support/providers";

const ALICE = "@alice:a.example";
const BOB = "@bob:b.example";
const CAROL = "@carol:c.example";

type Event = { event_id: string; content: { body?: string } };

describe("crash recovery across three providers", () => {
  let a: ProviderProcess, b: ProviderProcess, c: ProviderProcess;
  let roomId: string;

  beforeEach(async () => {
    // These tests count the room layer's events; the hosted MLS clients (which add commits) have tests of their own.
    [a, b, c] = await startProviders(["a.example", "b.example", "c.example"], {}, { hostedClients: false });
    roomId = await a.createRoom(ALICE);
    await a.send(roomId, ALICE, "m.room.join_rules", { rule: "public" }, "");
    await b.join(roomId, BOB);
    await c.join(roomId, CAROL);
  }, 60_000);
  afterEach(async () => {
    await stopProviders([a, b, c]);
  });

  async function history(p: ProviderProcess): Promise<Event[]> {
    return p.history(roomId);
  }

  it("a follower killed with SIGKILL during a stream of 5,000 events catches up with nothing lost or duplicated", async () => {
    const TOTAL = 5000;
    let accepted = 0;
    let killed = false;
    let restarted: Promise<void> | undefined;
    await stream(
      TOTAL,
      16,
      // A retry after a failure reuses the message's txnId, so it cannot be sequenced twice.
      (i) => a.send(roomId, ALICE, "org.example.message", { body: `m${i}` }, undefined, `m${i}`),
      () => {
        accepted++;
        if (!killed && accepted === 1500) {
          killed = true;
          restarted = (async () => {
            await b.kill("SIGKILL");
            await new Promise((r) => setTimeout(r, 500));
            await b.start();
          })();
        }
      },
    );
    await restarted;
    const expected = (await history(a)).map((e) => e.event_id);
    expect(expected.length).toBe(TOTAL + 5);
    await eventually(async () => {
      const got = (await history(b)).map((e) => e.event_id);
      expect(got.length).toBe(expected.length);
      expect(got).toEqual(expected);
    }, 120_000);
    const ids = (await history(b)).map((e) => e.event_id);
    expect(new Set(ids).size).toBe(ids.length);
    expect((await history(c)).map((e) => e.event_id)).toEqual(expected);
  }, 240_000);

  it("the hub killed with SIGKILL mid-stream: every event a follower got an OK for is in the history exactly once, everywhere", async () => {
    const PER_FOLLOWER = 400;
    const oks = new Map<string, string>();
    let total = 0;
    let killed = false;
    let restarted: Promise<void> | undefined;
    const onAccepted = (label: string) => (i: number, eventId: string) => {
      oks.set(`${label}${i}`, eventId);
      total++;
      if (!killed && total === 250) {
        killed = true;
        restarted = (async () => {
          await a.kill("SIGKILL");
          await new Promise((r) => setTimeout(r, 700));
          await a.start();
        })();
      }
    };
    const sendFrom = (p: ProviderProcess, sender: string, label: string) => (i: number) =>
      p.send(roomId, sender, "org.example.message", { body: `${label}${i}` }, undefined, `${label}${i}`);
    await Promise.all([
      stream(PER_FOLLOWER, 8, sendFrom(b, BOB, "b"), onAccepted("b")),
      stream(PER_FOLLOWER, 8, sendFrom(c, CAROL, "c"), onAccepted("c")),
    ]);
    await restarted;
    expect(killed).toBe(true);
    const hubHistory = await history(a);
    await eventually(async () => {
      const [hb, hc] = await Promise.all([history(b), history(c)]);
      expect(hb.map((e) => e.event_id)).toEqual(hubHistory.map((e) => e.event_id));
      expect(hc.map((e) => e.event_id)).toEqual(hubHistory.map((e) => e.event_id));
    }, 120_000);
    const ids = hubHistory.map((e) => e.event_id);
    expect(new Set(ids).size).toBe(ids.length);
    // Each message the followers sent is in the history once: retries were not sequenced twice.
    const bodies = hubHistory.map((e) => e.content.body).filter((body) => body !== undefined);
    expect(bodies.length).toBe(2 * PER_FOLLOWER);
    expect(new Set(bodies).size).toBe(bodies.length);
    for (const [label, eventId] of oks) {
      expect(ids.filter((id) => id === eventId)).toHaveLength(1);
      expect(hubHistory.find((e) => e.event_id === eventId)?.content.body).toBe(label);
    }
  }, 240_000);
});
