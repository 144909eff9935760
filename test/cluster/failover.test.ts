import { ClusterSet, type ClusterProcess } from "../support/cluster";
import { eventually, stream, type ProviderProcess } from "../support/providers";

const ALICE = "@alice:a.example";
const BOB = "@bob:b.example";
const CAROL = "@carol:c.example";
const DAVE = "@dave:a.example";
const LEASE_MS = 2000;

type Event = { event_id: string; sender: string; origin_server_ts?: number; content: { body?: string } };

const send = (p: ProviderProcess, roomId: string, sender: string, label: string) => (i: number) =>
  p.send(roomId, sender, "org.example.message", { body: `${label}${i}` }, undefined, `${label}${i}`);

describe("two processes of one provider on one PostgreSQL schema, three providers in all", () => {
  let cluster: ClusterSet;
  let roomId: string;

  beforeEach(async () => {
    cluster = await ClusterSet.start({
      serverName: "a.example",
      others: ["b.example", "c.example"],
      leaseMs: LEASE_MS,
      processes: 2,
    });
    const [b, c] = cluster.others as [ProviderProcess, ProviderProcess];
    roomId = await cluster.hub.createRoom(ALICE);
    await cluster.hub.send(roomId, ALICE, "m.room.join_rules", { rule: "public" }, "");
    await cluster.hub.join(roomId, DAVE);
    await b.join(roomId, BOB);
    await c.join(roomId, CAROL);
  }, 120_000);

  afterEach(async () => {
    await cluster?.stop();
  });

  it("a 2,000-message flood while the active process is killed with SIGKILL and another started: nothing lost or doubled, one history everywhere", async () => {
    const [b, c] = cluster.others as [ProviderProcess, ProviderProcess];
    const [first] = cluster.processes as [ClusterProcess];
    const PER_SENDER = 2000 / 4;
    const oks = new Map<string, string>();
    let killedAt = 0;
    let replaced: Promise<void> | undefined;
    const onAccepted = (label: string) => (i: number, eventId: string) => {
      oks.set(`${label}${i}`, eventId);
      if (process.env.MIMI_TEST_LOGS && oks.size % 100 === 0) process.stderr.write(`accepted ${oks.size}\n`);
      if (killedAt === 0 && oks.size === 600) {
        killedAt = Date.now();
        replaced = (async () => {
          await first.kill("SIGKILL");
          // Whichever of the two takes the lease first is the new owner.
          await cluster.addProcess("either");
        })();
      }
    };
    await Promise.all([
      // Hub-local senders through the admin balancer, followers through their own providers.
      stream(PER_SENDER, 8, send(cluster.hub, roomId, ALICE, "a"), onAccepted("a")),
      stream(PER_SENDER, 8, send(cluster.hub, roomId, DAVE, "d"), onAccepted("d")),
      stream(PER_SENDER, 8, send(b, roomId, BOB, "b"), onAccepted("b")),
      stream(PER_SENDER, 8, send(c, roomId, CAROL, "c"), onAccepted("c")),
    ]);
    await replaced;
    expect(killedAt).toBeGreaterThan(0);

    const hubHistory = (await cluster.hub.history(roomId)) as Event[];
    const ids = hubHistory.map((e) => e.event_id);
    await eventually(async () => {
      const [hb, hc] = await Promise.all([b.history(roomId), c.history(roomId)]);
      expect(hb.map((e) => e.event_id)).toEqual(ids);
      expect(hc.map((e) => e.event_id)).toEqual(ids);
    }, 120_000);
    expect(new Set(ids).size).toBe(ids.length);
    const bodies = hubHistory.map((e) => e.content.body).filter((body) => body !== undefined);
    expect(bodies.length).toBe(2000);
    expect(new Set(bodies).size).toBe(2000);
    for (const [label, eventId] of oks) {
      expect(ids.filter((id) => id === eventId)).toHaveLength(1);
      expect(hubHistory.find((e) => e.event_id === eventId)?.content.body).toBe(label);
    }
    // The first event the new owner sequenced is the first after the kill.
    const afterKill = hubHistory.find((e) => (e.origin_server_ts ?? 0) > killedAt);
    expect(afterKill).toBeDefined();
    const failoverMs = afterKill!.origin_server_ts! - killedAt;
    process.stderr.write(`failover: kill to the first event sequenced by the new owner ${failoverMs} ms\n`);
    expect(failoverMs).toBeLessThan(2 * LEASE_MS + 5000);
  }, 300_000);

  it("a process paused with SIGSTOP past its lease cannot commit when it resumes: it exits, and the new owner's history stands", async () => {
    const [b, c] = cluster.others as [ProviderProcess, ProviderProcess];
    const [first, second] = cluster.processes as [ClusterProcess, ClusterProcess];
    expect(first.active).toBe(true);
    expect(second.active).toBe(false);
    await first.send(roomId, ALICE, "org.example.message", { body: "before the pause" });

    const exited = new Promise<number | null>((resolve) =>
      first.child!.once("exit", (code) => resolve(code)),
    );
    first.child!.kill("SIGSTOP");
    const pausedAt = Date.now();
    await second.waitUntilActive();
    expect(Date.now() - pausedAt).toBeGreaterThanOrEqual(LEASE_MS / 2);
    await second.send(roomId, ALICE, "org.example.message", { body: "by the new owner" });

    // Asked while paused, served (or not) once it resumes: the request waits in its socket.
    const stale = first
      .send(roomId, ALICE, "org.example.message", { body: "by the paused process" }, undefined, "stale")
      .then(
        () => "accepted",
        (err: Error) => err.message,
      );
    await new Promise((r) => setTimeout(r, 200));
    first.child!.kill("SIGCONT");
    expect(await exited).toBe(4);
    expect(first.stderr).toMatch(/lost the provider's lease; exiting/);
    expect(await stale).not.toBe("accepted");

    await second.send(roomId, ALICE, "org.example.message", { body: "after the resume" });
    const bodies = (await second.history(roomId)).map((e) => e.content.body).filter((x) => x !== undefined);
    expect(bodies).toEqual(["before the pause", "by the new owner", "after the resume"]);
    const ids = (await second.history(roomId)).map((e) => e.event_id);
    await eventually(async () => {
      expect((await b.history(roomId)).map((e) => e.event_id)).toEqual(ids);
      expect((await c.history(roomId)).map((e) => e.event_id)).toEqual(ids);
    }, 60_000);
  }, 120_000);
});
