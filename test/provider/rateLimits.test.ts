import { RateLimitError } from "../../src/federation/rateLimit";
import { loadOrCreateSigningKey } from "../../src/events/signingKeyFile";
import { signRequest } from "../../src/federation/auth";
import { join } from "node:path";
import type { MimiProvider } from "../../src/provider/provider";
import { startInProcess, type InProcessSet } from "../support/inProcess";
import { removeDir } from "../support/services";

const ALICE = "@alice:a.example";

/** Rate limits per local user on local sends, and per origin on LM-04's rate-limited endpoints (not /send). */
describe("rate limits", () => {
  let set: InProcessSet;
  const a = (): MimiProvider => set.providers[0]!;
  beforeAll(async () => {
    set = await startInProcess(
      ["a.example", "b.example"],
      {},
      "{ local_sends_per_second: 1, local_send_burst: 5, federation_requests_per_second: 1, federation_request_burst: 3 }",
      // The test counts the room's events; the hosted MLS clients would add commits of their own.
      false,
    );
  });
  afterAll(async () => {
    await Promise.all(set.providers.map((p) => p.stop()));
    set.dirs.forEach(removeDir);
  });

  it("refuses a local user's sends past the burst with M_LIMIT_EXCEEDED and retry_after_ms, and no event is made", async () => {
    const { roomId } = await a().rooms.createRoom({ creator: ALICE, txnId: "room" });
    const results = [];
    for (let i = 0; i < 6; i++) {
      results.push(
        await a()
          .rooms.send({
            roomId,
            sender: ALICE,
            type: "org.example.message",
            content: { body: `${i}` },
            txnId: `m${i}`,
          })
          .then(
            () => "ok",
            (err: unknown) => err,
          ),
      );
    }
    expect(results.slice(0, 4)).toEqual(["ok", "ok", "ok", "ok"]);
    const refused = results[4] as RateLimitError;
    expect(refused).toBeInstanceOf(RateLimitError);
    expect(refused.errcode).toBe("M_LIMIT_EXCEEDED");
    expect(refused.retryAfterMs).toBeGreaterThan(0);
    expect(refused.toJSON()).toMatchObject({
      errcode: "M_LIMIT_EXCEEDED",
      retry_after_ms: refused.retryAfterMs,
    });
    expect(a().rooms.roomInfo(roomId)!.headSeq).toBe(6);
  });

  it("limits an origin's rate-limited requests with 429 and retry_after_ms, but never PUT /send", async () => {
    const statuses: number[] = [];
    for (let i = 0; i < 5; i++) {
      const path = `/_matrix/federation/v2/event/${encodeURIComponent("$" + "A".repeat(43))}`;
      statuses.push((await signedGet(set, path)).status);
    }
    expect(statuses.slice(0, 3)).toEqual([404, 404, 404]);
    expect(statuses[3]).toBe(429);
    const body = (
      await signedGet(set, `/_matrix/federation/v2/event/${encodeURIComponent("$" + "A".repeat(43))}`)
    ).body;
    expect(body).toMatchObject({ errcode: "M_LIMIT_EXCEEDED" });
    expect(typeof body.retry_after_ms).toBe("number");
    for (let i = 0; i < 5; i++) {
      const answer = await signedPut(set, `/_matrix/federation/v2/send/t${i}`, { pdus: [] });
      expect(answer.status).toBe(200);
    }
  });
});

async function signingKeyOfB(set: InProcessSet) {
  return loadOrCreateSigningKey(join(set.dirs[1]!, "data/signing.key"), "b.example");
}

async function signedGet(set: InProcessSet, path: string) {
  const key = await signingKeyOfB(set);
  const response = await fetch(`http://127.0.0.1:${set.ports[0]}${path}`, {
    headers: {
      Authorization: signRequest(
        { method: "GET", uri: path, origin: "b.example", destination: "a.example" },
        key,
      ),
    },
  });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

async function signedPut(set: InProcessSet, path: string, content: unknown) {
  const key = await signingKeyOfB(set);
  const response = await fetch(`http://127.0.0.1:${set.ports[0]}${path}`, {
    method: "PUT",
    headers: {
      "Content-Type": "application/json",
      Authorization: signRequest(
        { method: "PUT", uri: path, origin: "b.example", destination: "a.example", content },
        key,
      ),
    },
    body: JSON.stringify(content),
  });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}
