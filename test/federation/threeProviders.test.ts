import { eventually, startProviders, stopProviders, type ProviderProcess } from "../support/providers";

const ALICE = "@alice:a.example";
const BOB = "@bob:b.example";
const CAROL = "@carol:c.example";
const ROLES = {
  roles: {
    admin: {
      order: 100,
      permissions: { add: true, kick: true, ban: true, redact: true, roles: ["admin", "member"] },
      assignees: [ALICE],
    },
    member: { order: 10, permissions: { add: true }, assignees: [BOB, CAROL] },
  },
};

describe("three providers on 127.0.0.1", () => {
  let a: ProviderProcess, b: ProviderProcess, c: ProviderProcess;
  beforeAll(async () => {
    [a, b, c] = await startProviders(["a.example", "b.example", "c.example"]);
  }, 60_000);
  afterAll(async () => {
    await stopProviders([a, b, c]);
  });

  async function sameHistories(roomId: string, length: number): Promise<string[]> {
    return eventually(async () => {
      const [ha, hb, hc] = await Promise.all([
        a.historyIds(roomId),
        b.historyIds(roomId),
        c.historyIds(roomId),
      ]);
      expect(ha).toHaveLength(length);
      expect(hb).toEqual(ha);
      expect(hc).toEqual(ha);
      return ha;
    });
  }

  it("create, invite, join and events from all three end in identical linear histories", async () => {
    const { room_id: roomId } = await a.admin<{ room_id: string }>("POST", "/rooms", { creator: ALICE });
    const path = `/rooms/${encodeURIComponent(roomId)}`;
    await a.admin("POST", `${path}/invite`, { sender: ALICE, target: BOB });
    await b.admin("POST", `${path}/join`, { user: BOB });
    await a.admin("POST", `${path}/send`, {
      sender: ALICE,
      type: "m.room.roles",
      state_key: "",
      content: ROLES,
    });
    await b.admin("POST", `${path}/invite`, { sender: BOB, target: CAROL });
    await c.admin("POST", `${path}/join`, { user: CAROL });
    await a.admin("POST", `${path}/send`, {
      sender: ALICE,
      type: "org.example.message",
      content: { body: "from a" },
    });
    await b.admin("POST", `${path}/send`, {
      sender: BOB,
      type: "org.example.message",
      content: { body: "from b" },
    });
    await c.admin("POST", `${path}/send`, {
      sender: CAROL,
      type: "org.example.message",
      content: { body: "from c" },
    });
    await sameHistories(roomId, 10);
  }, 60_000);
});
