import { MimiError, type ErrorCode } from "../errors";

/** A room-level refusal: unknown room, wrong hub, not linear, or a stopped room. */
export class RoomError extends MimiError {
  constructor(errcode: ErrorCode, message: string) {
    super(errcode, message);
  }
}

/** The room's policy refused the event; `rule` names the auth rule (see docs/protocol.md). */
export class AuthRejection extends MimiError {
  constructor(
    readonly rule: string,
    reason: string,
  ) {
    super("M_FORBIDDEN", `event refused by rule ${rule}: ${reason}`);
  }
}

/**
 * A follower got an event whose parent it does not have: `missingEventId` is
 * the event to fetch (the new event's `prev_events[0]`), `headEventId` the last
 * event it has.
 */
export class GapError extends MimiError {
  constructor(
    readonly roomId: string,
    readonly missingEventId: string,
    readonly headEventId: string | undefined,
    readonly headSeq: number,
  ) {
    super(
      "M_MISSING_EVENT",
      `room ${roomId}: missing event ${missingEventId}, the parent of the event received; ` +
        `our head is ${headEventId ?? "(none)"} at position ${headSeq}`,
    );
  }

  /** LM-04 §Errors: `M_MISSING_EVENT` names the event in `event_id`. */
  override toJSON(): { errcode: "M_MISSING_EVENT"; error: string; event_id: string } {
    return { errcode: "M_MISSING_EVENT", error: this.message, event_id: this.missingEventId };
  }
}
