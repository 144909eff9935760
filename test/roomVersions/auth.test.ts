import type { JsonObject } from "../../src/events/types";
import { EventType, type JoinRule, type Participation, authorize } from "../../src/roomVersions/mimi1";
import {
  ALICE,
  BOB,
  CAROL,
  CREATE_CONTENT,
  DAVE,
  type RoleInput,
  StateBuilder,
  createdRoom,
  emptyRoom,
  event,
  fakeEventId,
  newRoom,
  rejectedRule,
  rejectionReason,
  rolesContent,
  userEvent,
} from "./stateBuilder";

const ALLOWED = { allowed: true };
const COMMIT: JsonObject = { message: "AAEC", public_group_state: "AwQF" };
const ENCRYPTED: JsonObject = {
  algorithm: "m.mls.v1.dhkemx25519-aes128gcm-sha256-ed25519",
  ciphertext: "BgcI",
  commit_event_id: fakeEventId(1),
};

/** Admin (order 3) over moderators (order 2) over muted users (order 1). */
const ROLES: Record<string, RoleInput> = {
  admin: {
    order: 3,
    permissions: { add: true, kick: true, ban: true, redact: true, roles: ["admin", "mod", "muted"] },
    assignees: [ALICE],
  },
  mod: {
    order: 2,
    permissions: { add: true, kick: true, ban: true, roles: ["muted"] },
    assignees: [BOB, DAVE],
  },
  muted: { order: 1, permissions: { sendMessages: false }, assignees: [CAROL] },
};

/** Alice (creator) created and joined; Bob and Carol joined; no roles yet. */
function roomWithMembers(): StateBuilder {
  return newRoom().joined(BOB, CAROL);
}

/** Like roomWithMembers, plus Dave joined and ROLES in force. */
function roomWithRoles(): StateBuilder {
  return roomWithMembers().joined(DAVE).roles(ROLES);
}

describe("Signaling draft §Room Structure and LM-04 rule 3 (m.room.create)", () => {
  it("allows the create event as the first event of a room on the creator's server", () => {
    expect(authorize(emptyRoom(), event(EventType.Create, ALICE, CREATE_CONTENT, ""))).toEqual(ALLOWED);
  });

  it("The first event MUST be a create event", () => {
    const decision = authorize(emptyRoom(), userEvent(ALICE, ALICE, "join"));
    expect(rejectedRule(decision)).toBe("structure.first_event_create");
  });

  it("a create event that is not the room's first event is rejected", () => {
    const decision = authorize(createdRoom(), event(EventType.Create, ALICE, CREATE_CONTENT, ""));
    expect(rejectedRule(decision)).toBe("create.first_event");
  });

  it("If the domain of the room_id is not the same domain as the sender, reject the event", () => {
    const decision = authorize(emptyRoom(), event(EventType.Create, BOB, CREATE_CONTENT, ""));
    expect(rejectedRule(decision)).toBe("create.sender_server");
    expect(rejectionReason(decision)).toContain(BOB);
  });

  it("a create event naming another room version is rejected by its schema", () => {
    const content = { ...CREATE_CONTENT, policy_id: "org.matrix.i-d.ralston-mimi-linearized-matrix.02" };
    const decision = authorize(emptyRoom(), event(EventType.Create, ALICE, content, ""));
    expect(rejectedRule(decision)).toBe("schema.m.room.create");
  });

  it("The second event MUST be the user participation event for the creator (exempt from join rules)", () => {
    expect(authorize(createdRoom(), userEvent(ALICE, ALICE, "join"))).toEqual(ALLOWED);
  });

  it.each<[string, ReturnType<typeof event>]>([
    ["another user's join", userEvent(BOB, BOB, "join")],
    ["the creator's invite of another user", userEvent(ALICE, BOB, "invite")],
    ["the creator's leave", userEvent(ALICE, ALICE, "leave")],
    ["a name event from the creator", event(EventType.Name, ALICE, { name: "x" }, "")],
    ["the first roles event", event(EventType.Roles, ALICE, rolesContent(ROLES), "")],
    ["an MLS commit", event(EventType.MlsCommit, ALICE, COMMIT)],
  ])("The second event MUST be the creator's participation: %s is rejected", (_name, second) => {
    expect(rejectedRule(authorize(createdRoom(), second))).toBe("structure.second_event_creator_join");
  });

  it("the creator's join is exempt from the join rules only as the second event", () => {
    const room = roomWithMembers().user(ALICE, "leave");
    expect(rejectedRule(authorize(room, userEvent(ALICE, ALICE, "join")))).toBe(
      "participation.join.join_rules",
    );
  });

  it("a state without its m.room.create event is rejected", () => {
    const room = emptyRoom().user(ALICE, "join");
    expect(rejectedRule(authorize(room, event("m.room.message", ALICE)))).toBe("structure.create_missing");
  });

  it("an event whose sender is not a user ID is rejected", () => {
    const decision = authorize(roomWithMembers(), event("m.room.message", "alice"));
    expect(rejectedRule(decision)).toBe("schema.sender");
  });

  it("an event whose room ID is not a room ID is rejected", () => {
    const decision = authorize(roomWithMembers(), event("m.room.message", ALICE, {}, undefined, "room"));
    expect(rejectedRule(decision)).toBe("schema.room_id");
  });
});

describe("Policy draft §Invite Conditions", () => {
  it("allows a joined sender holding the add permission to invite", () => {
    expect(authorize(newRoom(), userEvent(ALICE, BOB, "invite"))).toEqual(ALLOWED);
  });

  it("the target MUST NOT already be in the banned state", () => {
    const room = newRoom().user(BOB, "ban", ALICE);
    const decision = authorize(room, userEvent(ALICE, BOB, "invite"));
    expect(rejectedRule(decision)).toBe("participation.invite.target_banned");
    expect(rejectionReason(decision)).toContain(BOB);
  });

  it("the target MUST NOT already be in the joined state", () => {
    const decision = authorize(roomWithMembers(), userEvent(ALICE, BOB, "invite"));
    expect(rejectedRule(decision)).toBe("participation.invite.target_joined");
  });

  it.each<[string, Participation | undefined]>([
    ["absent", undefined],
    ["invited", "invite"],
    ["left", "leave"],
    ["knocking", "knock"],
    ["banned", "ban"],
  ])("the sender MUST already be in the joined state (sender %s)", (_name, participation) => {
    const room = roomWithMembers();
    if (participation !== undefined) room.user(DAVE, participation, ALICE);
    const decision = authorize(room, userEvent(DAVE, "@erin:e.example", "invite"));
    expect(rejectedRule(decision)).toBe("participation.invite.sender_not_joined");
  });

  it("the sender MUST have permission to invite (add, decision 1)", () => {
    const decision = authorize(roomWithMembers(), userEvent(BOB, DAVE, "invite"));
    expect(rejectedRule(decision)).toBe("participation.invite.permission");
  });

  it("a role granting add lets its assignee invite", () => {
    expect(authorize(roomWithRoles(), userEvent(BOB, "@erin:e.example", "invite"))).toEqual(ALLOWED);
  });

  it.each<[string, Participation]>([
    ["knocking (welcoming a knock)", "knock"],
    ["left", "leave"],
    ["already invited", "invite"],
  ])("a target who is %s may be invited", (_name, participation) => {
    const room = newRoom().user(BOB, participation);
    expect(authorize(room, userEvent(ALICE, BOB, "invite"))).toEqual(ALLOWED);
  });
});

describe("Policy draft §Join Conditions and §Join Rules", () => {
  it("The target and sender of a join MUST be the same", () => {
    const decision = authorize(newRoom().joinRules("public"), userEvent(ALICE, BOB, "join"));
    expect(rejectedRule(decision)).toBe("participation.join.sender_not_target");
  });

  it.each(["invite", "knock", "public"] as const)("a banned user cannot join (join rule %s)", (rule) => {
    const room = newRoom().joinRules(rule).user(BOB, "ban", ALICE);
    expect(rejectedRule(authorize(room, userEvent(BOB, BOB, "join")))).toBe("participation.join.banned");
  });

  it.each<[JoinRule, Participation | undefined]>([
    ["invite", undefined],
    ["invite", "leave"],
    ["invite", "knock"],
    ["knock", undefined],
    ["knock", "leave"],
    ["knock", "knock"],
  ])(
    "If the join rule is invite or knock, the user MUST already be in the joined or invite state (rule %s, user %s)",
    (rule, participation) => {
      const room = newRoom().joinRules(rule);
      if (participation !== undefined) room.user(BOB, participation);
      expect(rejectedRule(authorize(room, userEvent(BOB, BOB, "join")))).toBe(
        "participation.join.join_rules",
      );
    },
  );

  it("no join rules event means invite", () => {
    expect(rejectedRule(authorize(newRoom(), userEvent(BOB, BOB, "join")))).toBe(
      "participation.join.join_rules",
    );
  });

  it.each<[JoinRule, Participation]>([
    ["invite", "invite"],
    ["invite", "join"],
    ["knock", "invite"],
    ["knock", "join"],
  ])("join rule %s: a user in the %s state may join", (rule, participation) => {
    const room = newRoom().joinRules(rule).user(BOB, participation, ALICE);
    expect(authorize(room, userEvent(BOB, BOB, "join"))).toEqual(ALLOWED);
  });

  it.each<[string, Participation | undefined]>([
    ["absent", undefined],
    ["left", "leave"],
    ["knocking", "knock"],
  ])("If the join rule is public, a user who is %s and not banned may join", (_name, participation) => {
    const room = newRoom().joinRules("public");
    if (participation !== undefined) room.user(BOB, participation);
    expect(authorize(room, userEvent(BOB, BOB, "join"))).toEqual(ALLOWED);
  });
});

describe("Policy draft §Knock Conditions", () => {
  it("The target and sender of a knock MUST be the same", () => {
    const decision = authorize(newRoom().joinRules("knock"), userEvent(BOB, CAROL, "knock"));
    expect(rejectedRule(decision)).toBe("participation.knock.sender_not_target");
  });

  it.each<[string, StateBuilder]>([
    ["invite (explicit)", newRoom().joinRules("invite")],
    ["invite (default)", newRoom()],
    ["public", newRoom().joinRules("public")],
  ])("the join rule MUST be knock (join rule %s)", (_name, room) => {
    expect(rejectedRule(authorize(room, userEvent(BOB, BOB, "knock")))).toBe(
      "participation.knock.join_rules",
    );
  });

  it("the user MUST NOT already be in the banned state", () => {
    const room = newRoom().joinRules("knock").user(BOB, "ban", ALICE);
    expect(rejectedRule(authorize(room, userEvent(BOB, BOB, "knock")))).toBe("participation.knock.banned");
  });

  it("the user MUST NOT already be in the joined state", () => {
    const room = newRoom().joinRules("knock").joined(BOB);
    expect(rejectedRule(authorize(room, userEvent(BOB, BOB, "knock")))).toBe("participation.knock.joined");
  });

  it.each<[string, Participation | undefined]>([
    ["absent", undefined],
    ["left", "leave"],
    ["invited", "invite"],
    ["already knocking", "knock"],
  ])("a user who is %s may knock when the join rule is knock", (_name, participation) => {
    const room = newRoom().joinRules("knock");
    if (participation !== undefined) room.user(BOB, participation, ALICE);
    expect(authorize(room, userEvent(BOB, BOB, "knock"))).toEqual(ALLOWED);
  });
});

describe("Policy draft §Ban Conditions (decision 5)", () => {
  it("allows a joined sender with the ban permission and higher ban power to ban a joined user", () => {
    expect(authorize(roomWithRoles(), userEvent(BOB, CAROL, "ban"))).toEqual(ALLOWED);
  });

  it.each<[string, Participation | undefined]>([
    ["absent from the room", undefined],
    ["left", "leave"],
    ["invited", "invite"],
    ["knocking", "knock"],
    ["already banned", "ban"],
  ])("the target of a ban may be %s", (_name, participation) => {
    const room = newRoom();
    if (participation !== undefined) room.user(BOB, participation, ALICE);
    expect(authorize(room, userEvent(ALICE, BOB, "ban"))).toEqual(ALLOWED);
  });

  it("a user cannot ban themselves", () => {
    expect(rejectedRule(authorize(roomWithRoles(), userEvent(BOB, BOB, "ban")))).toBe(
      "participation.ban.self",
    );
  });

  it("The sender for a ban MUST already be in the joined state", () => {
    const room = roomWithRoles().user(BOB, "leave");
    expect(rejectedRule(authorize(room, userEvent(BOB, CAROL, "ban")))).toBe(
      "participation.ban.sender_not_joined",
    );
  });

  it("The sender for a ban MUST have permission to ban users", () => {
    const decision = authorize(roomWithMembers(), userEvent(BOB, CAROL, "ban"));
    expect(rejectedRule(decision)).toBe("participation.ban.permission");
  });

  it("equal effective ban power cannot ban", () => {
    const decision = authorize(roomWithRoles(), userEvent(BOB, DAVE, "ban"));
    expect(rejectedRule(decision)).toBe("participation.ban.power");
    expect(rejectionReason(decision)).toContain(DAVE);
  });

  it("lower effective ban power cannot ban", () => {
    expect(rejectedRule(authorize(roomWithRoles(), userEvent(BOB, ALICE, "ban")))).toBe(
      "participation.ban.power",
    );
  });

  it("a role defining ban as false still raises the target's ban power", () => {
    const room = roomWithMembers().roles({
      banner: { order: 2, permissions: { ban: true }, assignees: [BOB] },
      shield: { order: 3, permissions: { ban: false }, assignees: [CAROL] },
    });
    expect(rejectedRule(authorize(room, userEvent(BOB, CAROL, "ban")))).toBe("participation.ban.power");
  });
});

describe("Policy draft §Leave Conditions, §Voluntary", () => {
  it.each<Participation>(["invite", "join", "knock"])(
    "The user MUST be in the invited, joined, or knocking state (%s: allowed)",
    (participation) => {
      const room = newRoom().user(BOB, participation, ALICE);
      expect(authorize(room, userEvent(BOB, BOB, "leave"))).toEqual(ALLOWED);
    },
  );

  it.each<[string, Participation | undefined]>([
    ["absent", undefined],
    ["left", "leave"],
    ["banned", "ban"],
  ])("The user MUST be in the invited, joined, or knocking state (%s: rejected)", (_name, participation) => {
    const room = newRoom();
    if (participation !== undefined) room.user(BOB, participation, ALICE);
    const decision = authorize(room, userEvent(BOB, BOB, "leave"));
    expect(rejectedRule(decision)).toBe("participation.leave.not_participating");
  });
});

describe("Policy draft §Leave Conditions, §Kicks (decision 6)", () => {
  it.each<[string, Participation]>([
    ["joined", "join"],
    ["invited (rescinding the invite)", "invite"],
    ["knocking (declining the knock)", "knock"],
  ])("a sender with kick and higher kick power may kick a target who is %s", (_name, participation) => {
    const room = roomWithRoles().user("@erin:e.example", participation, ALICE);
    expect(authorize(room, userEvent(BOB, "@erin:e.example", "leave"))).toEqual(ALLOWED);
  });

  it("the creator may kick anyone before the first roles event", () => {
    expect(authorize(roomWithMembers(), userEvent(ALICE, BOB, "leave"))).toEqual(ALLOWED);
  });

  it.each<[string, Participation | undefined]>([
    ["absent", undefined],
    ["already left", "leave"],
  ])("The target user for a kick MUST already be in the joined state (target %s)", (_name, participation) => {
    const room = roomWithRoles();
    if (participation !== undefined) room.user("@erin:e.example", participation);
    const decision = authorize(room, userEvent(BOB, "@erin:e.example", "leave"));
    expect(rejectedRule(decision)).toBe("participation.kick.target_state");
  });

  it("The sender for a kick MUST already be in the joined state", () => {
    const room = roomWithRoles().user(BOB, "leave");
    expect(rejectedRule(authorize(room, userEvent(BOB, CAROL, "leave")))).toBe(
      "participation.kick.sender_not_joined",
    );
  });

  it("The sender for a kick MUST have permission to kick users", () => {
    expect(rejectedRule(authorize(roomWithMembers(), userEvent(BOB, CAROL, "leave")))).toBe(
      "participation.kick.permission",
    );
  });

  it("The sender MUST have a higher (and NOT equal to) effective kick power: equal power cannot kick", () => {
    const decision = authorize(roomWithRoles(), userEvent(BOB, DAVE, "leave"));
    expect(rejectedRule(decision)).toBe("participation.kick.power");
    expect(rejectionReason(decision)).toMatch(/@bob:b\.example.*2.*@dave:hub\.example.*2/);
  });

  it("The sender MUST have a higher effective kick power: lower power cannot kick", () => {
    expect(rejectedRule(authorize(roomWithRoles(), userEvent(BOB, ALICE, "leave")))).toBe(
      "participation.kick.power",
    );
  });

  it("If the target user is banned, the sender requires permission to ban users instead", () => {
    const room = roomWithMembers()
      .roles({ kicker: { order: 5, permissions: { kick: true }, assignees: [BOB] } })
      .user(DAVE, "ban", ALICE);
    expect(rejectedRule(authorize(room, userEvent(BOB, DAVE, "leave")))).toBe(
      "participation.unban.permission",
    );
  });

  it("the unban extends to the effective power level check: equal ban power cannot unban", () => {
    const room = roomWithMembers()
      .roles({
        mod: { order: 2, permissions: { ban: true, kick: true }, assignees: [BOB, DAVE] },
        kicker: { order: 9, permissions: { kick: true }, assignees: [BOB] },
      })
      .user(DAVE, "ban", ALICE);
    expect(rejectedRule(authorize(room, userEvent(BOB, DAVE, "leave")))).toBe("participation.unban.power");
  });

  it("ban permission and higher ban power unban without the kick permission", () => {
    const room = roomWithMembers()
      .roles({ banner: { order: 2, permissions: { ban: true, kick: false }, assignees: [BOB] } })
      .user(DAVE, "ban", ALICE);
    expect(authorize(room, userEvent(BOB, DAVE, "leave"))).toEqual(ALLOWED);
  });
});

describe("Decision 2: the creator's superuser rights end with the first m.room.roles event", () => {
  it("before any roles event the creator holds every permission", () => {
    const room = roomWithMembers();
    expect(authorize(room, userEvent(ALICE, BOB, "ban"))).toEqual(ALLOWED);
    expect(authorize(room, event(EventType.JoinRules, ALICE, { rule: "public" }, ""))).toEqual(ALLOWED);
  });

  it("after the first roles event the creator has only what roles give", () => {
    const room = roomWithMembers().roles({
      mod: { order: 1, permissions: { kick: true }, assignees: [BOB] },
    });
    expect(rejectedRule(authorize(room, userEvent(ALICE, CAROL, "leave")))).toBe(
      "participation.kick.permission",
    );
    expect(rejectedRule(authorize(room, userEvent(ALICE, DAVE, "invite")))).toBe(
      "participation.invite.permission",
    );
  });
});

describe("m.room.roles (decisions 2 and 7)", () => {
  it("The sender MUST be joined", () => {
    const room = roomWithRoles().user(ALICE, "leave");
    expect(rejectedRule(authorize(room, event(EventType.Roles, ALICE, rolesContent(ROLES), "")))).toBe(
      "send.not_joined",
    );
  });

  it("the creator may send the first roles event", () => {
    expect(authorize(roomWithMembers(), event(EventType.Roles, ALICE, rolesContent(ROLES), ""))).toEqual(
      ALLOWED,
    );
  });

  it("nobody but the creator may send the first roles event", () => {
    const decision = authorize(roomWithMembers(), event(EventType.Roles, BOB, rolesContent(ROLES), ""));
    expect(rejectedRule(decision)).toBe("roles.creator_only");
  });

  /** ROLES plus Dave's "editor" role, whose roles permission is `scope`. */
  function rolesWithEditor(scope: string[]): Record<string, RoleInput> {
    return { ...ROLES, editor: { order: 10, permissions: { roles: scope }, assignees: [DAVE] } };
  }
  const ROLE_IDS = ["admin", "mod", "muted", "editor", "helper"];

  const changes: [string, string, (roles: Record<string, RoleInput>) => Record<string, RoleInput>][] = [
    [
      "adding a role",
      "helper",
      (roles) => ({ ...roles, helper: { order: 7, permissions: {}, assignees: [] } }),
    ],
    ["removing a role", "muted", ({ muted: _removed, ...rest }) => rest],
    ["changing a role's order", "muted", (roles) => ({ ...roles, muted: { ...ROLES.muted, order: 5 } })],
    [
      "changing a role's permissions",
      "mod",
      (roles) => ({
        ...roles,
        mod: { ...ROLES.mod, permissions: { ...ROLES.mod.permissions, redact: true } },
      }),
    ],
    [
      "changing a role's assignees",
      "mod",
      (roles) => ({ ...roles, mod: { ...ROLES.mod, assignees: [BOB, DAVE, CAROL] } }),
    ],
  ];

  it.each(changes)(
    "the roles permission must name every role the change touches: %s (%s) outside it is rejected",
    (_name, touched, change) => {
      const current = rolesWithEditor(ROLE_IDS.filter((id) => id !== touched));
      const room = roomWithMembers().joined(DAVE).roles(current);
      const decision = authorize(room, event(EventType.Roles, DAVE, rolesContent(change(current)), ""));
      expect(rejectedRule(decision)).toBe("roles.change_permission");
      expect(rejectionReason(decision)).toContain(`role(s) ${touched}:`);
    },
  );

  it.each(changes)("a roles permission naming the touched role allows %s (%s)", (_name, touched, change) => {
    const current = rolesWithEditor([touched]);
    const room = roomWithMembers().joined(DAVE).roles(current);
    expect(authorize(room, event(EventType.Roles, DAVE, rolesContent(change(current)), ""))).toEqual(ALLOWED);
  });

  it("after the first roles event the creator needs a roles permission like anyone else", () => {
    const roles: Record<string, RoleInput> = {
      mod: { order: 5, permissions: { roles: ["helper"] }, assignees: [BOB] },
      helper: { order: 1, permissions: {}, assignees: [] },
    };
    const room = roomWithMembers().roles(roles);
    const changed = { ...roles, helper: { ...roles.helper, assignees: [ALICE] } };
    expect(rejectedRule(authorize(room, event(EventType.Roles, ALICE, rolesContent(changed), "")))).toBe(
      "roles.change_permission",
    );
    expect(authorize(room, event(EventType.Roles, BOB, rolesContent(changed), ""))).toEqual(ALLOWED);
  });

  it("a roles event that changes nothing touches no role", () => {
    const room = roomWithRoles();
    expect(authorize(room, event(EventType.Roles, CAROL, rolesContent(ROLES), ""))).toEqual(ALLOWED);
  });

  it("key order inside a role is not a change", () => {
    const room = roomWithRoles();
    const reordered = JSON.parse(
      `{"roles":{"admin":${JSON.stringify(ROLES.admin)},"muted":{"assignees":["${CAROL}"],"permissions":{"sendMessages":false},"order":1},"mod":${JSON.stringify(ROLES.mod)}}}`,
    ) as JsonObject;
    expect(authorize(room, event(EventType.Roles, BOB, reordered, ""))).toEqual(ALLOWED);
    expect(authorize(room, event(EventType.Roles, CAROL, reordered, ""))).toEqual(ALLOWED);
  });

  it("two roles sharing an order are refused (decision 4)", () => {
    const roles = { ...ROLES, twin: { order: 2, permissions: {}, assignees: [] } };
    const decision = authorize(roomWithMembers(), event(EventType.Roles, ALICE, rolesContent(roles), ""));
    expect(rejectedRule(decision)).toBe("schema.m.room.roles");
    expect(rejectionReason(decision)).toMatch(/mod and twin share order 2/);
  });
});

describe("m.room.roles: ranks (reading 7)", () => {
  /**
   * Alice (creator) holds owner, the top role. Bob holds mod, whose roles
   * permission names mod, helper and new; Carol holds helper; Dave holds
   * enforcer, above mod, which defines no roles permission.
   */
  const RANKED: Record<string, RoleInput> = {
    owner: {
      order: 100,
      permissions: { add: true, kick: true, ban: true, roles: ["mod", "helper", "enforcer"] },
      assignees: [ALICE],
    },
    enforcer: { order: 50, permissions: { kick: true }, assignees: [DAVE] },
    mod: {
      order: 10,
      permissions: { add: true, roles: ["mod", "helper", "new", "enforcer"] },
      assignees: [BOB],
    },
    helper: { order: 2, permissions: { add: true }, assignees: [CAROL] },
  };

  function rankedRoom(): StateBuilder {
    return roomWithMembers().joined(DAVE).roles(RANKED);
  }

  function rolesChange(sender: string, roles: Record<string, RoleInput>) {
    return event(EventType.Roles, sender, rolesContent(roles), "");
  }

  it("roles.change_rank: the two-event takeover is refused at its first event", () => {
    const room = rankedRoom();
    const takeover = rolesChange(BOB, {
      ...RANKED,
      mod: {
        order: 1000,
        permissions: { add: true, kick: true, ban: true, roles: ["owner", "enforcer", "mod", "helper"] },
        assignees: [BOB],
      },
    });
    expect(rejectedRule(authorize(room, takeover))).toBe("roles.change_rank");
    expect(() => room.send(takeover)).toThrow();
    expect(rejectedRule(authorize(room, userEvent(BOB, ALICE, "ban")))).toBe("participation.ban.permission");
    expect(room.get(EventType.User, ALICE)?.content).toEqual({ participation: "join" });
  });

  const refused: [string, string, Record<string, RoleInput>][] = [
    [
      "roles.change_rank",
      "changing one's own role (the only role of equal rank)",
      { ...RANKED, mod: { ...RANKED.mod, permissions: { ...RANKED.mod.permissions, kick: true } } },
    ],
    [
      "roles.change_rank",
      "assigning one's own role to another user",
      { ...RANKED, mod: { ...RANKED.mod, assignees: [BOB, CAROL] } },
    ],
    ["roles.change_rank", "leaving one's own role", { ...RANKED, mod: { ...RANKED.mod, assignees: [] } }],
    ["roles.change_rank", "lowering one's own role", { ...RANKED, mod: { ...RANKED.mod, order: 3 } }],
    ["roles.change_rank", "removing one's own role", (({ mod: _removed, ...rest }) => rest)(RANKED)],
    [
      "roles.change_rank",
      "changing a named role ranked above one's own",
      { ...RANKED, enforcer: { ...RANKED.enforcer, assignees: [DAVE, BOB] } },
    ],
    [
      "roles.change_rank",
      "lowering a named role ranked above one's own to below it",
      { ...RANKED, enforcer: { ...RANKED.enforcer, order: 5 } },
    ],
    [
      "roles.raise_rank",
      "raising a lower role above one's own",
      { ...RANKED, helper: { ...RANKED.helper, order: 11 } },
    ],
    [
      "roles.raise_rank",
      "adding a role above one's own",
      { ...RANKED, new: { order: 60, permissions: { ban: true }, assignees: [BOB] } },
    ],
    [
      "schema.m.room.roles",
      "raising a lower role to one's own rank (two roles cannot share an order)",
      { ...RANKED, helper: { ...RANKED.helper, order: 10 } },
    ],
  ];

  it.each(refused)("%s: %s is refused", (rule, _what, roles) => {
    expect(rejectedRule(authorize(rankedRoom(), rolesChange(BOB, roles)))).toBe(rule);
  });

  it("roles.change_rank names the role and the sender's rank", () => {
    const decision = authorize(rankedRoom(), rolesChange(BOB, refused[0][2]));
    expect(rejectionReason(decision)).toContain("mod (order 10)");
  });

  const allowed: [string, Record<string, RoleInput>][] = [
    ["assigning a lower role", { ...RANKED, helper: { ...RANKED.helper, assignees: [CAROL, DAVE] } }],
    ["unassigning a lower role", { ...RANKED, helper: { ...RANKED.helper, assignees: [] } }],
    [
      "changing a lower role's permissions",
      { ...RANKED, helper: { ...RANKED.helper, permissions: { add: false, kick: true } } },
    ],
    ["raising a lower role to just below one's own", { ...RANKED, helper: { ...RANKED.helper, order: 9 } }],
    ["adding a role below one's own", { ...RANKED, new: { order: 3, permissions: {}, assignees: [CAROL] } }],
    ["removing a lower role", (({ helper: _removed, ...rest }) => rest)(RANKED)],
  ];

  it.each(allowed)("a change below one's roles rank is allowed: %s", (_what, roles) => {
    expect(authorize(rankedRoom(), rolesChange(BOB, roles))).toEqual(ALLOWED);
  });

  it("the rank is the order of the role giving the roles permission, not the user's highest role", () => {
    const bobAlsoEnforcer = { ...RANKED, enforcer: { ...RANKED.enforcer, assignees: [DAVE, BOB] } };
    const room = roomWithMembers().joined(DAVE).roles(bobAlsoEnforcer);
    const moveHelper = (order: number) =>
      rolesChange(BOB, { ...bobAlsoEnforcer, helper: { ...RANKED.helper, order } });
    expect(rejectedRule(authorize(room, moveHelper(20)))).toBe("roles.raise_rank");
    expect(authorize(room, moveHelper(9))).toEqual(ALLOWED);
  });

  it("the holder of the top role may change every role below it, not its own", () => {
    const room = rankedRoom();
    const demoteBob = { ...RANKED, mod: { ...RANKED.mod, assignees: [] } };
    expect(authorize(room, rolesChange(ALICE, demoteBob))).toEqual(ALLOWED);
    const grow = { ...RANKED, owner: { ...RANKED.owner, assignees: [ALICE, BOB] } };
    expect(rejectedRule(authorize(room, rolesChange(ALICE, grow)))).toBe("roles.change_permission");
    const ownerNamingItself = {
      ...RANKED,
      owner: { ...RANKED.owner, permissions: { ...RANKED.owner.permissions, roles: ["owner", "mod"] } },
    };
    const selfNamed = roomWithMembers().joined(DAVE).roles(ownerNamingItself);
    const growSelfNamed = {
      ...ownerNamingItself,
      owner: { ...ownerNamingItself.owner, assignees: [ALICE, BOB] },
    };
    expect(rejectedRule(authorize(selfNamed, rolesChange(ALICE, growSelfNamed)))).toBe("roles.change_rank");
  });

  it("the creator's first roles event is not ranked (reading 2)", () => {
    expect(authorize(roomWithMembers(), rolesChange(ALICE, RANKED))).toEqual(ALLOWED);
  });
});

describe("m.room.join_rules (reading 9: needs add)", () => {
  it("a joined sender with add may change the join rule", () => {
    expect(authorize(roomWithRoles(), event(EventType.JoinRules, BOB, { rule: "knock" }, ""))).toEqual(
      ALLOWED,
    );
  });

  it("a sender without add may not change the join rule", () => {
    const decision = authorize(roomWithRoles(), event(EventType.JoinRules, CAROL, { rule: "public" }, ""));
    expect(rejectedRule(decision)).toBe("join_rules.permission");
  });

  it("the sender must be joined", () => {
    const room = roomWithRoles().user(BOB, "leave");
    expect(rejectedRule(authorize(room, event(EventType.JoinRules, BOB, { rule: "public" }, "")))).toBe(
      "send.not_joined",
    );
  });
});

describe("LM-04 rules 6-8: room state (name, topic, avatar, custom state)", () => {
  const stateEvents: [string, JsonObject, string][] = [
    [EventType.Name, { name: "" }, ""],
    [EventType.Topic, { topic: "plans" }, ""],
    [EventType.Avatar, { url: "mxc://hub.example/abc" }, ""],
    ["com.example.pinned", { ids: [] }, "main"],
  ];

  it.each(stateEvents)("a joined sender with sendMessages may send %s", (type, content, stateKey) => {
    expect(authorize(roomWithRoles(), event(type, BOB, content, stateKey))).toEqual(ALLOWED);
  });

  it.each(stateEvents)("a sender without sendMessages may not send %s", (type, content, stateKey) => {
    const decision = authorize(roomWithRoles(), event(type, CAROL, content, stateKey));
    expect(rejectedRule(decision)).toBe("send.sendMessages");
  });

  it.each(stateEvents)(
    "If the sender's current participation is not join, reject %s",
    (type, content, stateKey) => {
      const room = roomWithRoles().user(BOB, "invite", ALICE);
      expect(rejectedRule(authorize(room, event(type, BOB, content, stateKey)))).toBe("send.not_joined");
    },
  );

  it("a state key which starts with @ and does not match the sender is rejected", () => {
    const decision = authorize(roomWithRoles(), event("com.example.status", BOB, {}, DAVE));
    expect(rejectedRule(decision)).toBe("state.owned_state_key");
  });

  it("a state key which is the sender's own user ID is allowed", () => {
    expect(authorize(roomWithRoles(), event("com.example.status", BOB, {}, BOB))).toEqual(ALLOWED);
  });

  it("an m. state type this room version does not define is rejected", () => {
    const decision = authorize(roomWithRoles(), event("m.room.power_levels", ALICE, {}, ""));
    expect(rejectedRule(decision)).toBe("schema.reserved_type");
  });

  it("a room-wide state event needs the empty state key", () => {
    const decision = authorize(roomWithRoles(), event(EventType.Name, ALICE, { name: "x" }, "x"));
    expect(rejectedRule(decision)).toBe("schema.state_key");
  });
});

describe("LM-04 §Room Event Types: m.mls.commit", () => {
  it("a joined sender may commit without sendMessages", () => {
    expect(authorize(roomWithRoles(), event(EventType.MlsCommit, CAROL, COMMIT))).toEqual(ALLOWED);
  });

  it.each<Participation>(["invite", "leave", "knock", "ban"])(
    "If the sender's current participation is not join (%s), reject the commit",
    (participation) => {
      const room = roomWithRoles().user(CAROL, participation, ALICE);
      expect(rejectedRule(authorize(room, event(EventType.MlsCommit, CAROL, COMMIT)))).toBe(
        "send.not_joined",
      );
    },
  );

  it("a commit with a state key is rejected", () => {
    const decision = authorize(roomWithRoles(), event(EventType.MlsCommit, BOB, COMMIT, ""));
    expect(rejectedRule(decision)).toBe("schema.state_key");
  });

  it("a commit with invalid content is rejected", () => {
    const decision = authorize(roomWithRoles(), event(EventType.MlsCommit, BOB, { message: "AAEC" }));
    expect(rejectedRule(decision)).toBe("schema.m.mls.commit");
  });
});

describe("io.mimi-appservice.mls.proposal: the hub's proposals as external sender (protocol.md §12)", () => {
  const PROPOSAL: JsonObject = { message: "AAEC" };
  it.each([
    ["the hub's own user, in no participation", "@mimi-hub:hub.example", true],
    ["another user of the hub's server", DAVE, true],
    ["a joined user of another server", BOB, false],
    ["another server's user of the same localpart", "@mimi-hub:b.example", false],
  ])("%s: %s", (_what, sender, allowed) => {
    const decision = authorize(roomWithRoles(), event(EventType.MlsProposal, sender, PROPOSAL));
    if (allowed) expect(decision).toEqual(ALLOWED);
    else expect(rejectedRule(decision)).toBe("mls_proposal.hub");
  });

  it("a proposal without its message, or with a state key, is rejected", () => {
    const hub = "@mimi-hub:hub.example";
    expect(rejectedRule(authorize(roomWithRoles(), event(EventType.MlsProposal, hub, {})))).toBe(
      "schema.io.mimi-appservice.mls.proposal",
    );
    expect(rejectedRule(authorize(roomWithRoles(), event(EventType.MlsProposal, hub, PROPOSAL, "")))).toBe(
      "schema.state_key",
    );
  });
});

describe("Decision 8: non-state events (m.room.encrypted and custom)", () => {
  const messages: [string, JsonObject][] = [
    [EventType.Encrypted, ENCRYPTED],
    ["m.room.message", { body: "hi" }],
    ["com.example.ping", {}],
  ];

  it.each(messages)("a joined sender with sendMessages may send %s", (type, content) => {
    expect(authorize(roomWithRoles(), event(type, BOB, content))).toEqual(ALLOWED);
  });

  it.each(messages)(
    "sendMessages defaults to true: a joined user without roles may send %s",
    (type, content) => {
      expect(authorize(roomWithMembers(), event(type, CAROL, content))).toEqual(ALLOWED);
    },
  );

  it.each(messages)("a sender whose sendMessages is false may not send %s", (type, content) => {
    expect(rejectedRule(authorize(roomWithRoles(), event(type, CAROL, content)))).toBe("send.sendMessages");
  });

  it.each(messages)("Only joined users send non-state events: %s from an invited user", (type, content) => {
    const room = roomWithRoles().user("@erin:e.example", "invite", ALICE);
    const decision = authorize(room, event(type, "@erin:e.example", content));
    expect(rejectedRule(decision)).toBe("send.not_joined");
    expect(rejectionReason(decision)).toContain("@erin:e.example");
  });

  it("an encrypted event with invalid content is rejected", () => {
    const decision = authorize(
      roomWithRoles(),
      event(EventType.Encrypted, BOB, { ...ENCRYPTED, ciphertext: "" }),
    );
    expect(rejectedRule(decision)).toBe("schema.m.room.encrypted");
  });
});

describe("a room's life through authorize", () => {
  it("follows create, join, roles, invite, join, commit and ban in order", () => {
    const room = emptyRoom()
      .send(event(EventType.Create, ALICE, CREATE_CONTENT, ""))
      .send(userEvent(ALICE, ALICE, "join"))
      .send(event(EventType.Roles, ALICE, rolesContent(ROLES), ""))
      .send(userEvent(ALICE, BOB, "invite"))
      .send(userEvent(BOB, BOB, "join"))
      .send(userEvent(BOB, CAROL, "invite"))
      .send(userEvent(CAROL, CAROL, "join"))
      .send(event(EventType.MlsCommit, CAROL, COMMIT))
      .send(userEvent(BOB, CAROL, "ban"));
    expect(room.eventCount).toBe(9);
    expect(rejectedRule(authorize(room, userEvent(CAROL, CAROL, "join")))).toBe("participation.join.banned");
    expect(room.get(EventType.User, CAROL)?.content).toEqual({ participation: "ban" });
  });
});
