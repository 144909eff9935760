import { join } from "node:path";
import { MimiError } from "../../src/errors";
import type { JsonObject, LimitedEvent } from "../../src/events/types";
import type { Logger } from "../../src/logging";
import {
  PendingInvites,
  type PendingInvite,
  type PendingInvitesOptions,
} from "../../src/federation/pendingInvites";
import type { KvStore } from "../../src/store/kv";
import { removeDir, tempDir } from "../support/services";
import { ManualTimer, eventually } from "./queue/helpers";
import { openTestStore } from "../support/store";

const SEP = "\u0000";
const DAY = 24 * 60 * 60 * 1000;
const T0 = 1_700_000_000_000;
const ALICE = "@alice:a.example";
const BOB = "@bob:a.example";

let dir: string;
let store: KvStore;
let clock: { t: number };
let logged: { message: string; fields: Record<string, unknown> | undefined }[];

const log: Logger = {
  debug: () => undefined,
  info: (message, fields) => logged.push({ message, fields }),
  warn: (message, fields) => logged.push({ message, fields }),
  error: (message, fields) => logged.push({ message, fields }),
  child: () => log,
};

beforeEach(async () => {
  dir = tempDir("invites");
  store = await openTestStore(join(dir, "db"), { durability: "os" });
  clock = { t: T0 };
  logged = [];
});

afterEach(async () => {
  await store.close().catch(() => undefined);
  removeDir(dir);
});

async function reopen(): Promise<KvStore> {
  await store.close();
  store = await openTestStore(join(dir, "db"), { durability: "os" });
  return store;
}

async function keys(prefix: string): Promise<string[]> {
  const found: string[] = [];
  for await (const [key] of store.range({ gte: prefix, lt: prefix + "\uffff" })) found.push(key);
  return found;
}

function invites(options: PendingInvitesOptions = {}, kv = store): PendingInvites {
  return new PendingInvites(kv, { now: () => clock.t, log, ...options });
}

function invite(
  userId: string,
  room: number,
  receivedTs = clock.t,
  strippedState: JsonObject[] = [],
): PendingInvite {
  const roomId = `!r${room}:b.example`;
  return {
    roomId,
    userId,
    hubServer: "b.example",
    inviter: "@carol:b.example",
    roomVersion: "io.mimi-appservice.room.v1",
    strippedState,
    event: { room_id: roomId } as unknown as LimitedEvent,
    receivedTs,
  };
}

const rooms = (list: PendingInvite[]) => list.map((i) => i.roomId).sort();

describe("PendingInvites", () => {
  it("stores, replaces, lists and removes invites, also across a reopen", async () => {
    let p = invites();
    await p.put(invite(ALICE, 1));
    await p.put(invite(ALICE, 2));
    await p.put({ ...invite(ALICE, 2), inviter: "@dave:b.example" });
    await p.put(invite(BOB, 1));
    expect(rooms(await p.forUser(ALICE))).toEqual(["!r1:b.example", "!r2:b.example"]);
    expect((await p.get("!r2:b.example", ALICE))?.inviter).toBe("@dave:b.example");
    expect(await p.count()).toBe(3);

    p = invites({}, await reopen());
    expect(await p.count()).toBe(3);
    await p.remove("!r1:b.example", ALICE);
    expect(rooms(await p.forUser(ALICE))).toEqual(["!r2:b.example"]);
    expect(await p.get("!r1:b.example", ALICE)).toBeUndefined();
    expect(await p.count()).toBe(2);
    expect(await keys(`vi${SEP}`)).toHaveLength(2);
  });

  it("lists every user's invites oldest first, and tells listeners of each once it is stored", async () => {
    const p = invites();
    const heard: string[] = [];
    const unsubscribe = p.onStored((stored) => heard.push(`${stored.userId} ${stored.roomId}`));
    await p.put(invite(BOB, 2, T0 + 2));
    await p.put(invite(ALICE, 1, T0 + 1));
    expect(heard).toEqual([`${BOB} !r2:b.example`, `${ALICE} !r1:b.example`]);
    // Stored before the listener hears of it.
    expect((await p.all()).map((i) => `${i.userId} ${i.roomId}`)).toEqual([
      `${ALICE} !r1:b.example`,
      `${BOB} !r2:b.example`,
    ]);
    unsubscribe();
    await p.put(invite(ALICE, 3, T0 + 3));
    expect(heard).toHaveLength(2);
    clock.t = T0 + 40 * DAY;
    expect(await p.all()).toEqual([]);
  });

  it("keeps at most maxPerUser per user, dropping the user's oldest with a log line", async () => {
    const p = invites({ maxPerUser: 3 });
    for (let room = 1; room <= 5; room++) {
      await p.put(invite(ALICE, room));
      clock.t += 1000;
    }
    await p.put(invite(BOB, 9));
    expect(rooms(await p.forUser(ALICE))).toEqual(["!r3:b.example", "!r4:b.example", "!r5:b.example"]);
    expect(rooms(await p.forUser(BOB))).toEqual(["!r9:b.example"]);
    expect(logged).toEqual([
      {
        message: "dropped a pending invite",
        fields: { roomId: "!r1:b.example", userId: ALICE, receivedTs: T0, reason: "per-user limit" },
      },
      {
        message: "dropped a pending invite",
        fields: { roomId: "!r2:b.example", userId: ALICE, receivedTs: T0 + 1000, reason: "per-user limit" },
      },
    ]);
    // Replacing an invite the user already has drops nothing.
    await p.put(invite(ALICE, 4));
    expect(rooms(await p.forUser(ALICE))).toHaveLength(3);
    expect(logged).toHaveLength(2);
  });

  it("keeps at most maxTotal, dropping the oldest of all", async () => {
    const p = invites({ maxTotal: 3 });
    await p.put(invite(ALICE, 1));
    clock.t += 1000;
    await p.put(invite(BOB, 2));
    clock.t += 1000;
    await p.put(invite(ALICE, 3));
    clock.t += 1000;
    await p.put(invite(BOB, 4));
    expect(rooms(await p.forUser(ALICE))).toEqual(["!r3:b.example"]);
    expect(rooms(await p.forUser(BOB))).toEqual(["!r2:b.example", "!r4:b.example"]);
    expect(await p.count()).toBe(3);
    expect(logged.map((l) => l.fields?.reason)).toEqual(["total limit"]);
  });

  it("holds the limits under concurrent invites", async () => {
    const p = invites({ maxPerUser: 5, maxTotal: 8 });
    await Promise.all(
      Array.from({ length: 40 }, (_, i) => p.put(invite(i % 2 === 0 ? ALICE : BOB, i, T0 + i))),
    );
    expect(await p.forUser(ALICE)).toHaveLength(4);
    expect(await p.forUser(BOB)).toHaveLength(4);
    expect(await keys(`v${SEP}`)).toHaveLength(8);
    expect(await keys(`vi${SEP}`)).toHaveLength(8);
  });

  it("hides expired invites from forUser and get, and prune removes them", async () => {
    const p = invites({ maxAgeMs: 30 * DAY });
    await p.put(invite(ALICE, 1));
    clock.t += 10 * DAY;
    await p.put(invite(ALICE, 2));
    clock.t += 20 * DAY - 1;
    expect(rooms(await p.forUser(ALICE))).toEqual(["!r1:b.example", "!r2:b.example"]);
    clock.t += 1;
    expect(rooms(await p.forUser(ALICE))).toEqual(["!r2:b.example"]);
    expect(await p.get("!r1:b.example", ALICE)).toBeUndefined();
    expect(await keys(`v${SEP}`)).toHaveLength(2);

    expect(await p.prune()).toBe(1);
    expect(await keys(`v${SEP}`)).toEqual([`v${SEP}${ALICE}${SEP}!r2:b.example`]);
    expect(await p.count()).toBe(1);
  });

  it("drops a user's expired invites before counting them against the limit", async () => {
    const p = invites({ maxPerUser: 2, maxAgeMs: DAY });
    await p.put(invite(ALICE, 1));
    clock.t += DAY;
    await p.put(invite(ALICE, 2));
    await p.put(invite(ALICE, 3));
    expect(rooms(await p.forUser(ALICE))).toEqual(["!r2:b.example", "!r3:b.example"]);
    expect(logged.map((l) => l.fields?.reason)).toEqual(["expired"]);
  });

  it("prunes in the background from start() until stop()", async () => {
    const timer = new ManualTimer();
    const p = invites({ maxAgeMs: DAY, pruneIntervalMs: 60_000, timer });
    await p.put(invite(ALICE, 1));
    p.start();
    clock.t += DAY;
    timer.fireAll();
    await eventually(async () => (await keys(`v${SEP}`)).length === 0);
    await timer.requested(2);
    expect(timer.delays).toEqual([0, 60_000]);
    await p.stop();
    expect(timer.pendingCount).toBe(0);
  });

  describe("stripped state (LM-04 §Stripped State)", () => {
    const entry = (n: number, bytes = 10): JsonObject => ({
      type: `t${n}`,
      state_key: "",
      content: { pad: "x".repeat(bytes) },
    });

    it("keeps at most 20 entries", async () => {
      const p = invites();
      await p.put(
        invite(
          ALICE,
          1,
          T0,
          Array.from({ length: 30 }, (_, n) => entry(n)),
        ),
      );
      const stored = await p.get("!r1:b.example", ALICE);
      expect(stored!.strippedState.map((e) => e.type)).toEqual(Array.from({ length: 20 }, (_, n) => `t${n}`));
    });

    it("keeps the entries that fit in maxStrippedStateBytes, in order", async () => {
      const p = invites({ maxStrippedStateBytes: 1000 });
      const state = [entry(0, 300), entry(1, 300), entry(2, 300), entry(3, 10)];
      await p.put(invite(ALICE, 1, T0, state));
      const kept = (await p.get("!r1:b.example", ALICE))!.strippedState;
      expect(kept.map((e) => e.type)).toEqual(["t0", "t1"]);
      expect(Buffer.byteLength(JSON.stringify(kept))).toBeLessThanOrEqual(1000);
      expect(Buffer.byteLength(JSON.stringify(state.slice(0, 3)))).toBeGreaterThan(1000);
    });
  });

  it("indexes invites stored before the time index, once", async () => {
    const old = invite(ALICE, 1, T0 - 40 * DAY);
    const recent = invite(ALICE, 2, T0 - DAY);
    await store.commit([
      { type: "put", key: `v${SEP}${ALICE}${SEP}${old.roomId}`, value: JSON.stringify(old) },
      { type: "put", key: `v${SEP}${ALICE}${SEP}${recent.roomId}`, value: JSON.stringify(recent) },
    ]);
    const p = invites({ maxAgeMs: 30 * DAY });
    expect(rooms(await p.forUser(ALICE))).toEqual(["!r2:b.example"]);
    expect(await p.count()).toBe(2);
    expect(await store.get(`vm${SEP}legacy`)).toBe("done");
    expect(await p.prune()).toBe(1);

    const again = invites({ maxAgeMs: 30 * DAY }, await reopen());
    expect(await again.count()).toBe(1);
    expect(await keys(`vi${SEP}`)).toHaveLength(1);
  });

  it("refuses a bad receivedTs and bad options, storing nothing", async () => {
    const p = invites();
    await expect(p.put(invite(ALICE, 1, -1))).rejects.toMatchObject({ errcode: "M_INVALID_PARAM" });
    await expect(p.put(invite(ALICE, 1, 1.5))).rejects.toBeInstanceOf(MimiError);
    expect(await keys("v")).toEqual([]);
    for (const options of [
      { maxPerUser: 0 },
      { maxTotal: -1 },
      { maxAgeMs: 1.5 },
      { maxStrippedStateBytes: NaN },
    ]) {
      expect(() => invites(options)).toThrow(expect.objectContaining({ errcode: "M_INVALID_PARAM" }));
    }
  });
});
