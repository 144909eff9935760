import { once } from "node:events";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type RequestListener } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { KvStore } from "../../src/store/kv";
import { openTestStore } from "../support/store";

/** Shared by the federation tests: real HTTP servers on 127.0.0.1, temp stores, a manual clock. */

export interface Listening {
  base: string;
  port: number;
  close(): Promise<void>;
}

export async function listen(handler: RequestListener): Promise<Listening> {
  const server = createServer(handler);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  return {
    base: `http://127.0.0.1:${port}`,
    port,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** A port nothing listens on: bound once, then released. */
export async function closedPort(): Promise<number> {
  const listening = await listen(() => undefined);
  await listening.close();
  return listening.port;
}

export class ManualClock {
  constructor(public t = 1_700_000_000_000) {}
  readonly now = (): number => this.t;
  advance(ms: number): void {
    this.t += ms;
  }
}

export class TempStores {
  private readonly dirs: string[] = [];
  private readonly open: KvStore[] = [];

  dir(): string {
    const dir = mkdtempSync(join(tmpdir(), "mimi-federation-"));
    this.dirs.push(dir);
    return dir;
  }

  async openAt(dir: string): Promise<KvStore> {
    const store = await openTestStore(dir, { durability: "os" });
    this.open.push(store);
    return store;
  }

  async close(store: KvStore): Promise<void> {
    this.open.splice(this.open.indexOf(store), 1);
    await store.close();
  }

  async cleanup(): Promise<void> {
    for (const store of this.open.splice(0)) await store.close();
    for (const dir of this.dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  }
}
