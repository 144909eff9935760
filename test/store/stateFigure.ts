/**
 * The state index figure: `stateAt` some events back from the head against
 * the full replay RoomService used before (every event from the create event,
 * parsed, on every request). Run `npx tsx test/store/stateFigure.ts`, or call
 * `stateAtFigure` (e.g. from bench/).
 *
 * Each room: a state of `stateSize` entries, then `rounds` times
 * `messagesBetween` messages followed by one state event (a new value for one
 * of the tuples), on durable LevelDB. Events are about the size of real ones.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { StateEntry } from "../../src/roomVersions/types";
import { LevelStore } from "../../src/store/levelStore";
import { RoomStore, StateMap } from "../../src/store/roomStore";
import { appendHistory, replayFromStore, type HistoryEvent } from "./history";

export interface StateAtFigureOptions {
  stateSizes?: number[];
  messagesBetween?: number;
  rounds?: number;
  /** How far back from the head the state is asked for. */
  back?: number;
  /** Timed runs of each (the median is reported). */
  repeats?: number;
}

export interface StateAtFigureRow {
  stateSize: number;
  historyLength: number;
  seq: number;
  stateAtMs: number;
  replayMs: number;
}

const ROOM = "!figure:example.org";

function figureHistory(stateSize: number, messagesBetween: number, rounds: number): HistoryEvent[] {
  const events: HistoryEvent[] = [];
  const push = (type: string, stateKey: string | undefined, content: StateEntry["content"]) => {
    const seq = events.length + 1;
    const eventId = `$${seq.toString(36).padStart(43, "0")}`;
    const json: Record<string, unknown> = {
      room_id: ROOM,
      type,
      sender: "@alice:example.org",
      content,
      auth_events: seq === 1 ? [] : [events[0]!.eventId],
      prev_events: seq === 1 ? [] : [events[seq - 2]!.eventId],
      hashes: { sha256: "h".repeat(43) },
      signatures: { "example.org": { "ed25519:1": "s".repeat(86) } },
    };
    if (stateKey !== undefined) json.state_key = stateKey;
    const stateEntry =
      stateKey === undefined ? undefined : { eventId, type, stateKey, sender: "@alice:example.org", content };
    events.push({ seq, eventId, json: JSON.stringify(json), stateEntry });
  };
  push("m.room.create", "", { room_version: "io.mimi-appservice.room.v1" });
  for (let i = 1; i < stateSize; i++) push("m.room.user", `@user${i}:example.org`, { membership: "join" });
  for (let round = 0; round < rounds; round++) {
    for (let i = 0; i < messagesBetween; i++)
      push("m.room.encrypted", undefined, { ciphertext: "c".repeat(200) });
    push("m.room.user", `@user${1 + (round % Math.max(1, stateSize - 1))}:example.org`, {
      membership: "leave",
    });
  }
  return events;
}

async function median(repeats: number, run: () => Promise<unknown>): Promise<number> {
  await run();
  const times: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const start = performance.now();
    await run();
    times.push(performance.now() - start);
  }
  times.sort((x, y) => x - y);
  return times[Math.floor(times.length / 2)]!;
}

export async function stateAtFigure(options: StateAtFigureOptions = {}): Promise<StateAtFigureRow[]> {
  const messagesBetween = options.messagesBetween ?? 10_000;
  const rounds = options.rounds ?? 3;
  const back = options.back ?? 10_000;
  const repeats = options.repeats ?? 5;
  const rows: StateAtFigureRow[] = [];
  for (const stateSize of options.stateSizes ?? [10, 100, 1_000, 10_000]) {
    const dir = mkdtempSync(join(tmpdir(), "mimi-state-figure-"));
    try {
      const events = figureHistory(stateSize, messagesBetween, rounds);
      const kv = await LevelStore.open(join(dir, "db"), { durability: "fsync" });
      await appendHistory(new RoomStore(kv), ROOM, events, { state: new StateMap(), perCommit: 2_000 });
      await kv.close();
      const reopened = await LevelStore.open(join(dir, "db"), { durability: "fsync" });
      const store = new RoomStore(reopened);
      const seq = Math.max(1, events.length + 1 - back);
      const stateAtMs = await median(repeats, () => store.stateAt(ROOM, seq));
      const replayMs = await median(Math.min(repeats, 3), () => replayFromStore(store, ROOM, seq));
      rows.push({ stateSize, historyLength: events.length, seq, stateAtMs, replayMs });
      await reopened.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
  return rows;
}

if (require.main === module) {
  void stateAtFigure().then((rows) => {
    console.log("state before the event 10,000 back from the head: stateAt vs. full replay");
    for (const row of rows) {
      console.log(
        `state ${String(row.stateSize).padStart(6)} entries, ${row.historyLength} events: ` +
          `stateAt ${row.stateAtMs.toFixed(2)} ms, replay ${row.replayMs.toFixed(1)} ms ` +
          `(${(row.replayMs / row.stateAtMs).toFixed(0)}x)`,
      );
    }
  });
}
