import { spawn } from "node:child_process";
import { join } from "node:path";
import { parseFullyFormedEvent } from "../../src/events/envelope";
import { verifyFullyFormedEvent } from "../../src/events/pdu";
import { RoomState } from "../../src/room/roomState";
import { MIMI_V1 } from "../../src/roomVersions";
import { RoomStore } from "../../src/store/roomStore";
import { lookupOf, testKey } from "../support/keys";
import { removeDir, tempDir } from "../support/services";
import { openTestStore, TEST_STORE_NAME } from "../support/store";

const ROOT = join(__dirname, "..", "..");
const keys = lookupOf(testKey("hub.example"));

/** Runs the append worker until it has acknowledged `killAfter` events, then SIGKILLs it. */
function runAndKill(dir: string, killAfter: number): Promise<Map<number, string>> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      ["--import", "tsx", join(ROOT, "test/fixtures/appendWorker.ts"), dir],
      {
        cwd: ROOT,
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    const acked = new Map<number, string>();
    let buffered = "";
    let stderr = "";
    let killed = false;
    child.stdout.on("data", (chunk: Buffer) => {
      buffered += chunk.toString();
      const lines = buffered.split("\n");
      buffered = lines.pop()!;
      for (const line of lines) {
        const [, seq, eventId] = line.split(" ");
        acked.set(Number(seq), eventId!);
      }
      if (!killed && acked.size >= killAfter) {
        killed = true;
        child.kill("SIGKILL");
      }
    });
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    child.on("exit", (_code, signal) => {
      if (signal === "SIGKILL") resolve(acked);
      else reject(new Error(`worker exited on its own: ${stderr}`));
    });
  });
}

/** Everything stored must be one consistent linear history. */
async function checkConsistent(dir: string, acked: Map<number, string>): Promise<number> {
  const store = await openTestStore(join(dir, "db"));
  try {
    const rooms = new RoomStore(store);
    const [record] = await rooms.loadRoomRecords();
    expect(record).toBeDefined();
    const events = await rooms.getEvents(record!.roomId, 1, 1_000_000);
    // Wholly stored or absent: the stored events are exactly 1..head, nothing beyond it.
    expect(events.map((e) => e.seq)).toEqual(Array.from({ length: record!.headSeq }, (_, i) => i + 1));
    expect(events[events.length - 1]!.eventId).toBe(record!.headEventId);
    // Nothing acknowledged is lost.
    for (const [seq, eventId] of acked) expect(events[seq - 1]?.eventId).toBe(eventId);
    // Each event is intact, indexed, and chained to the previous one; state matches a replay.
    const replay = new RoomState();
    let previous: string | undefined;
    for (const stored of events) {
      const event = parseFullyFormedEvent(JSON.parse(stored.json));
      expect(verifyFullyFormedEvent(event, keys, MIMI_V1)).toBe(stored.eventId);
      expect(event.prev_events).toEqual(previous === undefined ? [] : [previous]);
      expect(await rooms.locateEvent(stored.eventId)).toEqual({ roomId: record!.roomId, seq: stored.seq });
      replay.append(stored.eventId, event);
      previous = stored.eventId;
    }
    const stored = await rooms.loadState(record!.roomId);
    expect(stored.sort((a, b) => a.eventId.localeCompare(b.eventId))).toEqual(
      [...replay.allEntries()].sort((a, b) => a.eventId.localeCompare(b.eventId)),
    );
    return record!.headSeq;
  } finally {
    await store.close();
  }
}

describe(`crash safety on a real ${TEST_STORE_NAME}`, () => {
  it("a SIGKILL in the middle of a stream of appends leaves each event wholly stored or absent", async () => {
    const dir = tempDir("crash");
    try {
      let head = 0;
      const allAcked = new Map<number, string>();
      for (const killAfter of [300, 450, 200]) {
        const acked = await runAndKill(dir, killAfter);
        for (const [seq, id] of acked) allAcked.set(seq, id);
        const newHead = await checkConsistent(dir, allAcked);
        expect(newHead).toBeGreaterThan(head);
        head = newHead;
      }
    } finally {
      removeDir(dir);
    }
  }, 120_000);
});
