import express from "express";
import {
  cacheLifetime,
  ServerResolver,
  WELL_KNOWN_DEFAULT_CACHE_MS,
  WELL_KNOWN_ERROR_CACHE_MS,
  WELL_KNOWN_MAX_CACHE_MS,
} from "../../src/federation/discovery";
import { IdentifierError } from "../../src/identifiers";
import { listen, ManualClock, type Listening } from "./clientHarness";

interface WellKnownAnswer {
  status?: number;
  body?: string;
  cacheControl?: string;
  redirectTo?: string;
  hang?: boolean;
}

describe("ServerResolver (LM-04 §Resolving Server Names)", () => {
  let clock: ManualClock;
  let server: Listening;
  let answers: Map<string, WellKnownAnswer>;
  let requests: string[];

  beforeEach(async () => {
    clock = new ManualClock();
    answers = new Map();
    requests = [];
    const app = express();
    // The host a lookup is for travels in the path, since every host resolves to this one listener.
    app.get(["/:host/.well-known/matrix/server", "/:host/moved"], (req, res) => {
      const host = req.params.host as string;
      requests.push(`${host}${req.path.slice(host.length + 1)}`);
      const answer = req.path.endsWith("/moved") ? answers.get(`${host}/moved`) : answers.get(host);
      if (answer === undefined) {
        res.status(404).json({ errcode: "M_NOT_FOUND", error: "none" });
      } else if (answer.hang === true) {
        return;
      } else if (answer.redirectTo !== undefined) {
        res.redirect(302, answer.redirectTo);
      } else {
        if (answer.cacheControl !== undefined) res.set("Cache-Control", answer.cacheControl);
        res
          .status(answer.status ?? 200)
          .type("text/plain")
          .send(answer.body ?? "");
      }
    });
    server = await listen(app);
  });

  afterEach(async () => {
    await server.close();
  });

  function resolver(staticMap: Record<string, string> = {}, timeoutMs?: number): ServerResolver {
    return new ServerResolver({
      staticMap,
      now: clock.now,
      wellKnownBase: (hostname) => `${server.base}/${hostname}/`,
      ...(timeoutMs === undefined ? {} : { timeoutMs }),
    });
  }

  async function resolved(r: ServerResolver, serverName: string): Promise<string> {
    return (await r.resolve(serverName)).href;
  }

  it("uses the static map first, without looking anything up", async () => {
    answers.set("b.example", { body: '{"m.server":"elsewhere.example"}' });
    const r = resolver({
      "b.example": "http://127.0.0.1:8502",
      "c.example:8443": "https://c.internal:9000/",
    });
    expect(await resolved(r, "b.example")).toBe("http://127.0.0.1:8502/");
    expect(await resolved(r, "c.example:8443")).toBe("https://c.internal:9000/");
    expect(requests).toEqual([]);
  });

  it("returns a fresh URL each time, so callers cannot change the map", async () => {
    const r = resolver({ "b.example": "http://127.0.0.1:8502" });
    (await r.resolve("b.example")).port = "1";
    expect(await resolved(r, "b.example")).toBe("http://127.0.0.1:8502/");
  });

  it("uses an explicit port directly, without .well-known", async () => {
    expect(await resolved(resolver(), "b.example:8500")).toBe("https://b.example:8500/");
    expect(requests).toEqual([]);
  });

  it("follows .well-known delegation (JSON whatever the Content-Type)", async () => {
    answers.set("b.example", { body: '{"m.server":"fed.b.example:8443"}' });
    answers.set("c.example", { body: '{"m.server":"fed.c.example"}' });
    const r = resolver();
    expect(await resolved(r, "b.example")).toBe("https://fed.b.example:8443/");
    expect(await resolved(r, "c.example")).toBe("https://fed.c.example:8448/");
    expect(requests).toEqual(["b.example/.well-known/matrix/server", "c.example/.well-known/matrix/server"]);
  });

  it("follows redirects of .well-known", async () => {
    answers.set("b.example", { redirectTo: `${server.base}/b.example/moved` });
    answers.set("b.example/moved", { body: '{"m.server":"moved.example:1234"}' });
    expect(await resolved(resolver(), "b.example")).toBe("https://moved.example:1234/");
    expect(requests).toEqual(["b.example/.well-known/matrix/server", "b.example/moved"]);
  });

  it.each<[string, WellKnownAnswer | undefined]>([
    ["a 404", undefined],
    ["a 500", { status: 500, body: '{"m.server":"fed.b.example"}' }],
    ["a body that is not JSON", { body: "<html>" }],
    ["JSON without m.server", { body: '{"server":"fed.b.example"}' }],
    ["an m.server that is not a string", { body: '{"m.server":42}' }],
    ["an invalid m.server", { body: '{"m.server":"fed_b.example:99999"}' }],
    ["an IP literal m.server", { body: '{"m.server":"10.0.0.1:8448"}' }],
    ["a JSON array", { body: '["fed.b.example"]' }],
  ])("falls back to port 8448 on the server name after %s", async (_name, answer) => {
    if (answer !== undefined) answers.set("b.example", answer);
    expect(await resolved(resolver(), "b.example")).toBe("https://b.example:8448/");
    expect(requests).toHaveLength(1);
  });

  it("falls back when .well-known does not answer in time", async () => {
    answers.set("b.example", { hang: true });
    expect(await resolved(resolver({}, 50), "b.example")).toBe("https://b.example:8448/");
  });

  it("caches a delegation for its max-age", async () => {
    answers.set("b.example", { body: '{"m.server":"one.example"}', cacheControl: "public, max-age=60" });
    const r = resolver();
    expect(await resolved(r, "b.example")).toBe("https://one.example:8448/");
    answers.set("b.example", { body: '{"m.server":"two.example"}' });
    clock.advance(59_999);
    expect(await resolved(r, "b.example")).toBe("https://one.example:8448/");
    expect(requests).toHaveLength(1);
    clock.advance(1);
    expect(await resolved(r, "b.example")).toBe("https://two.example:8448/");
    expect(requests).toHaveLength(2);
  });

  it("caches a delegation for 24 hours without Cache-Control", async () => {
    answers.set("b.example", { body: '{"m.server":"one.example"}' });
    const r = resolver();
    await r.resolve("b.example");
    clock.advance(WELL_KNOWN_DEFAULT_CACHE_MS - 1);
    await r.resolve("b.example");
    expect(requests).toHaveLength(1);
    clock.advance(1);
    await r.resolve("b.example");
    expect(requests).toHaveLength(2);
  });

  it("does not cache a delegation marked no-store", async () => {
    answers.set("b.example", { body: '{"m.server":"one.example"}', cacheControl: "no-store" });
    const r = resolver();
    await r.resolve("b.example");
    await r.resolve("b.example");
    expect(requests).toHaveLength(2);
  });

  it("caches a failed lookup for 1 hour", async () => {
    const r = resolver();
    expect(await resolved(r, "b.example")).toBe("https://b.example:8448/");
    answers.set("b.example", { body: '{"m.server":"fed.b.example"}' });
    clock.advance(WELL_KNOWN_ERROR_CACHE_MS - 1);
    expect(await resolved(r, "b.example")).toBe("https://b.example:8448/");
    expect(requests).toHaveLength(1);
    clock.advance(1);
    expect(await resolved(r, "b.example")).toBe("https://fed.b.example:8448/");
    expect(requests).toHaveLength(2);
  });

  it("makes one .well-known request for concurrent lookups", async () => {
    answers.set("b.example", { body: '{"m.server":"fed.b.example"}' });
    const r = resolver();
    const urls = await Promise.all([r.resolve("b.example"), r.resolve("b.example"), r.resolve("b.example")]);
    expect(urls.map((u) => u.href)).toEqual(Array(3).fill("https://fed.b.example:8448/"));
    expect(requests).toHaveLength(1);
  });

  it.each(["", "127.0.0.1", "[::1]:8448", "bad_name.example", "b.example:0", "b.example:", "-b.example"])(
    "refuses the invalid server name %p",
    async (name) => {
      const err = await resolver({ "b.example": "http://127.0.0.1:1" })
        .resolve(name)
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(IdentifierError);
      expect(err).toMatchObject({
        errcode: "M_INVALID_PARAM",
        message: expect.stringMatching(/^Invalid server name/),
      });
      expect(requests).toEqual([]);
    },
  );

  it.each<[Record<string, string>, RegExp]>([
    [{ b_example: "http://127.0.0.1:1" }, /Invalid server name "b_example"/],
    [{ "b.example": "localhost:8502" }, /must use http or https/],
    [{ "b.example": "127.0.0.1:8502" }, /is not a URL/],
    [{ "b.example": "not a url" }, /is not a URL/],
    [{ "b.example": "ftp://127.0.0.1" }, /must use http or https/],
    [{ "b.example": "http://127.0.0.1:8502/prefix" }, /without path or query/],
    [{ "b.example": "http://user:pw@127.0.0.1:8502" }, /without path or query/],
    [{ "b.example": "http://127.0.0.1:8502/?q" }, /without path or query/],
  ])("refuses the static map %p", (staticMap, message) => {
    expect(() => new ServerResolver({ staticMap })).toThrow(message);
  });
});

describe("cacheLifetime", () => {
  it.each<[string | null, number]>([
    [null, WELL_KNOWN_DEFAULT_CACHE_MS],
    ["public", WELL_KNOWN_DEFAULT_CACHE_MS],
    ["max-age=60", 60_000],
    ["public, MAX-AGE=120", 120_000],
    ['max-age="30"', 30_000],
    ["max-age=0", 0],
    ["max-age=-5", WELL_KNOWN_DEFAULT_CACHE_MS],
    ["max-age=1000000000", WELL_KNOWN_MAX_CACHE_MS],
    ["no-cache", 0],
    ["max-age=60, no-store", 0],
  ])("%p -> %p ms", (header, expected) => {
    expect(cacheLifetime(header)).toBe(expected);
  });
});
