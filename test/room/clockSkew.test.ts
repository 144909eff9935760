import { createLimitedEvent } from "../../src/events/pdu";
import { MAX_CLOCK_SKEW_MS } from "../../src/room/roomService";
import { MIMI_V1 } from "../../src/roomVersions";
import { lookupOf, testKey } from "../support/keys";
import { openService, removeDir, tempDir } from "../support/services";

const hubKey = testKey("hub.example");
const followerKey = testKey("follower.example");
const ALICE = "@alice:hub.example";
const BOB = "@bob:follower.example";

describe("the hub bounds origin_server_ts", () => {
  it.each([
    ["just inside the bound", MAX_CLOCK_SKEW_MS - 1000, true],
    ["past the bound", MAX_CLOCK_SKEW_MS + 1000, false],
    ["a year ahead", 365 * 24 * 3_600_000, false],
  ])("an LPDU dated %s", async (_name, ahead, accepted) => {
    const dir = tempDir("skew");
    const hub = await openService(dir, hubKey, lookupOf(hubKey, followerKey));
    const roomId = await hub.service.createRoom(ALICE);
    await hub.service.sendAsHub(roomId, ALICE, "m.room.join_rules", { rule: "public" }, "");
    const join = createLimitedEvent(
      {
        room_id: roomId,
        type: "m.room.user",
        state_key: BOB,
        sender: BOB,
        origin_server_ts: Date.now() + ahead,
        hub_server: "hub.example",
        content: { participation: "join" },
      },
      followerKey,
      MIMI_V1,
    );
    const result = hub.service.submitLimitedEvent(join, "follower.example");
    if (accepted) await expect(result).resolves.toMatchObject({ seq: 4 });
    else await expect(result).rejects.toMatchObject({ errcode: "M_INVALID_PARAM" });
    await hub.close();
    removeDir(dir);
  });
});
