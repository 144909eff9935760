import { EventType, selectAuthEvents } from "../../src/roomVersions/mimi1";
import {
  ALICE,
  BOB,
  CAROL,
  CREATE_CONTENT,
  type StateBuilder,
  createdRoom,
  emptyRoom,
  event,
  newRoom,
  userEvent,
} from "./stateBuilder";

function idOf(room: StateBuilder, type: string, stateKey = ""): string {
  const entry = room.get(type, stateKey);
  if (entry === undefined) throw new Error(`no ${type} ${stateKey} in the test room`);
  return entry.eventId;
}

/** Create, Alice joined, roles, Bob joined, Carol invited, join rules knock. */
function fullRoom(): StateBuilder {
  return newRoom()
    .roles({ admin: { order: 1, permissions: { add: true }, assignees: [ALICE] } })
    .joined(BOB)
    .user(CAROL, "invite", ALICE)
    .joinRules("knock");
}

describe("LM-04 §Auth Events Selection (with roles and participation)", () => {
  it("an m.room.create event has no auth events", () => {
    expect(selectAuthEvents(emptyRoom(), event(EventType.Create, ALICE, CREATE_CONTENT, ""))).toEqual([]);
  });

  it("the creator's join selects only the create event", () => {
    const room = createdRoom();
    expect(selectAuthEvents(room, userEvent(ALICE, ALICE, "join"))).toEqual([idOf(room, EventType.Create)]);
  });

  it("other events select the create event, the current roles and the sender's participation, in order", () => {
    const room = fullRoom();
    expect(selectAuthEvents(room, event("m.room.message", BOB, { body: "hi" }))).toEqual([
      idOf(room, EventType.Create),
      idOf(room, EventType.Roles),
      idOf(room, EventType.User, BOB),
    ]);
  });

  it("an m.room.user event adds the target's participation after the sender's", () => {
    const room = fullRoom();
    expect(selectAuthEvents(room, userEvent(BOB, CAROL, "leave"))).toEqual([
      idOf(room, EventType.Create),
      idOf(room, EventType.Roles),
      idOf(room, EventType.User, BOB),
      idOf(room, EventType.User, CAROL),
    ]);
  });

  it.each(["join", "knock"] as const)(
    "a %s adds the current join rules, without repeating the sender",
    (participation) => {
      const room = fullRoom();
      expect(selectAuthEvents(room, userEvent(CAROL, CAROL, participation))).toEqual([
        idOf(room, EventType.Create),
        idOf(room, EventType.Roles),
        idOf(room, EventType.User, CAROL),
        idOf(room, EventType.JoinRules),
      ]);
    },
  );

  it.each(["invite", "leave", "ban"] as const)("a %s does not select the join rules", (participation) => {
    const room = fullRoom();
    expect(selectAuthEvents(room, userEvent(ALICE, CAROL, participation))).not.toContain(
      idOf(room, EventType.JoinRules),
    );
  });

  it("absent events are skipped: no roles, no sender participation, no target participation, no join rules", () => {
    const room = newRoom();
    expect(selectAuthEvents(room, userEvent(BOB, BOB, "join"))).toEqual([idOf(room, EventType.Create)]);
    expect(selectAuthEvents(room, userEvent(ALICE, BOB, "invite"))).toEqual([
      idOf(room, EventType.Create),
      idOf(room, EventType.User, ALICE),
    ]);
  });
});
