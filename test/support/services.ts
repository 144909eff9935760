import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { VerifyKeyLookup } from "../../src/events/signatures";
import type { ServerSigningKey } from "../../src/events/signingKey";
import { RoomService } from "../../src/room/roomService";
import { LevelStore } from "../../src/store/levelStore";
import { RoomStore } from "../../src/store/roomStore";

export function tempDir(label: string): string {
  return mkdtempSync(join(tmpdir(), `mimi-${label}-`));
}

export interface OpenedService {
  service: RoomService;
  store: LevelStore;
  dir: string;
  close(): Promise<void>;
}

/** A RoomService on a real on-disk LevelDB. */
export async function openService(
  dir: string,
  key: ServerSigningKey,
  keys: VerifyKeyLookup,
): Promise<OpenedService> {
  const store = await LevelStore.open(join(dir, "db"), { durability: "os" });
  const service = await RoomService.open({ signingKey: key, store: new RoomStore(store), keys });
  return { service, store, dir, close: () => store.close() };
}

export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}
