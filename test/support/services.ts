import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { VerifyKeyLookup } from "../../src/events/signatures";
import type { ServerSigningKey } from "../../src/events/signingKey";
import { RoomService } from "../../src/room/roomService";
import type { KvStore } from "../../src/store/kv";
import { RoomStore } from "../../src/store/roomStore";
import { openTestStore } from "./store";

export function tempDir(label: string): string {
  return mkdtempSync(join(tmpdir(), `mimi-${label}-`));
}

export interface OpenedService {
  service: RoomService;
  store: KvStore;
  dir: string;
  close(): Promise<void>;
}

/** A RoomService on a real database (the engine under test) named by the folder `dir`. */
export async function openService(
  dir: string,
  key: ServerSigningKey,
  keys: VerifyKeyLookup,
): Promise<OpenedService> {
  const store = await openTestStore(join(dir, "db"), { durability: "os" });
  const service = await RoomService.open({ signingKey: key, store: new RoomStore(store), keys });
  return { service, store, dir, close: () => store.close() };
}

export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}
