import type { LimitedEvent } from "../events/types";
import type { KeyRing } from "../federation/keys";
import { serverNameOf } from "../identifiers";

/**
 * Fetches the keys needed to check an event's signatures: the origin's and,
 * for a fully-formed event, the hub's. A failed fetch leaves them unknown and
 * the signature check then refuses the event.
 */
export async function ensureEventKeys(
  keyRing: KeyRing,
  event: { sender: string; hub_server?: string; signatures: LimitedEvent["signatures"] },
): Promise<void> {
  const servers = new Set([serverNameOf(event.sender)]);
  if (event.hub_server !== undefined) servers.add(event.hub_server);
  await Promise.all(
    [...servers].map((server) => {
      const keyIds = Object.keys(event.signatures[server] ?? {});
      return keyIds.length === 0 ? Promise.resolve() : keyRing.ensureKeys(server, keyIds);
    }),
  );
}
