import { eventually, startProviders, stopProviders, type ProviderProcess } from "../support/providers";

const ALICE = "@alice:a.example";
const TRIALS = 40;

/**
 * A server that has just joined must never miss the hub's next event: in
 * every trial a user joins while the hub's user posts, three providers as
 * separate processes, and the joined server must end with the hub's head
 * without any later event to reveal a gap.
 */
describe("a server that just joined misses no event", () => {
  let providers: ProviderProcess[];
  beforeAll(async () => {
    // These tests count the room layer's events; the hosted MLS clients (which add commits) have tests of their own.
    providers = await startProviders(["a.example", "b.example", "c.example"], {}, { hostedClients: false });
  }, 60_000);
  afterAll(async () => {
    await stopProviders(providers);
  });

  it(`in ${TRIALS} trials the message posted during the join always arrives`, async () => {
    const [a, b, c] = providers as [ProviderProcess, ProviderProcess, ProviderProcess];
    const misses: string[] = [];
    for (let trial = 0; trial < TRIALS; trial++) {
      const roomId = await a.createRoom(ALICE);
      await a.send(roomId, ALICE, "m.room.join_rules", { rule: "public" }, "");
      const joiner = trial % 2 === 0 ? b : c;
      const user = `@user${trial}:${joiner.serverName}`;
      await Promise.all([
        joiner.join(roomId, user),
        a.send(roomId, ALICE, "org.example.message", { body: `posted during join ${trial}` }),
      ]);
      const hubHead = (await a.historyIds(roomId)).at(-1);
      try {
        await eventually(async () => expect((await joiner.historyIds(roomId)).at(-1)).toBe(hubHead), 5_000);
      } catch {
        misses.push(roomId);
      }
    }
    expect(misses).toEqual([]);
  }, 300_000);
});
