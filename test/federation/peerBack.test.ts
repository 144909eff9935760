import { eventually, startProviders, stopProviders, type ProviderProcess } from "../support/providers";

const ALICE = "@alice:a.example";
const BOB = "@bob:b.example";

describe("a provider hearing from a peer it backs off from", () => {
  let a: ProviderProcess, b: ProviderProcess;

  afterEach(async () => {
    await stopProviders([a, b]);
  });

  it("delivers what waited for the restarted hub once the hub reaches it, not after its backoff", async () => {
    // b's waits after a failure are up to two minutes: only the hub's own request can end them early.
    [a, b] = await startProviders(
      ["a.example", "b.example"],
      {},
      {
        hostedClients: false,
        federation: { "b.example": { retry_base_ms: 120_000, retry_max_ms: 120_000 } },
      },
    );
    const roomId = await a.createRoom(ALICE);
    await a.send(roomId, ALICE, "m.room.join_rules", { rule: "public" }, "");
    await b.join(roomId, BOB);
    await a.kill("SIGKILL");
    const sent = b.send(roomId, BOB, "org.example.message", { body: "sent while the hub was down" });
    sent.catch(() => undefined);
    await eventually(async () => {
      if (!/"msg":"delivery failed".*"destination":"a.example"/.test(b.stderr))
        throw new Error("b has not failed to reach a.example yet");
    });
    // Past the first failed attempt and the second a peer's request must wait after it.
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    await a.start();
    const restartedAt = Date.now();
    await a.send(roomId, ALICE, "org.example.message", { body: "the hub is back" });
    await eventually(async () => {
      const bodies = (await a.history(roomId)).map((e) => (e as { content: { body?: string } }).content.body);
      if (!bodies.includes("sent while the hub was down"))
        throw new Error(`not at the hub yet: ${bodies.join(", ")}`);
    }, 10_000);
    expect(Date.now() - restartedAt).toBeLessThan(10_000);
  }, 60_000);
});
