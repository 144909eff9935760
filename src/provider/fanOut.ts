import type { OutboundDelivery, OutboundQueue } from "../federation/queue";
import type { AppendHook } from "../room/roomService";

/**
 * Hub fan-out (LM-04 §Sending Events): every event the hub sequences is
 * queued for each other participating server in the same batch as the append,
 * and the destinations' workers are woken once the batch is durable.
 */
export function fanOutHook(serverName: string, queue: OutboundQueue, delivery: OutboundDelivery): AppendHook {
  return (notice, stateAfter, version) => {
    if (notice.role !== "hub") return undefined;
    const targets = version.fanOutServers(stateAfter, notice.event);
    targets.delete(serverName);
    if (targets.size === 0) return undefined;
    const destinations = [...targets];
    const item = { kind: "pdu" as const, id: notice.eventId, body: notice.event };
    return {
      ops: destinations.flatMap((destination) => queue.enqueueOps(destination, [item])),
      afterCommit: () => destinations.forEach((destination) => delivery.wake(destination)),
    };
  };
}
