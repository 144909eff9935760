import type { JsonObject, JsonValue } from "../../events/types";
import { isValidRoomId, isValidUserId, serverNameOf } from "../../identifiers";
import type { AuthDecision, EventForAuth, RoomStateView } from "../types";
import {
  DEFAULT_JOIN_RULE,
  EventType,
  type JoinRule,
  type Participation,
  type RoleDefinition,
  checkEventSchema,
  isJoinRule,
  parseRolesContent,
} from "./eventTypes";
import { participationOf } from "./membership";
import { creatorOf, currentRoles, effectivePower, mayAffectRole, resolvePermissions } from "./roles";

const ALLOW: AuthDecision = { allowed: true };

function reject(rule: string, reason: string): AuthDecision {
  return { allowed: false, rule, reason };
}

export function currentJoinRule(state: RoomStateView): JoinRule {
  const rule = state.get(EventType.JoinRules, "")?.content["rule"];
  return isJoinRule(rule) ? rule : DEFAULT_JOIN_RULE;
}

const PARTICIPATION_WORDS: Readonly<Record<Participation, string>> = {
  invite: "invited",
  join: "joined",
  leave: "left",
  ban: "banned",
  knock: "knocking",
};

function describeParticipation(participation: Participation | undefined): string {
  return participation === undefined ? "not in the room" : PARTICIPATION_WORDS[participation];
}

/**
 * Decides whether `event` may be appended to a room whose state before it is
 * `state`. Mirrors LM-04 §Auth Rules Algorithm, with the policy draft's roles
 * and user participation in place of power levels and membership, read as in
 * design §3 (decisions 1-8). Signatures and hashes are checked elsewhere.
 */
export function authorize(state: RoomStateView, event: EventForAuth): AuthDecision {
  if (!isValidUserId(event.sender)) {
    return reject("schema.sender", `the sender ${JSON.stringify(event.sender)} is not a valid user ID`);
  }
  if (!isValidRoomId(event.roomId)) {
    return reject("schema.room_id", `the room ID ${JSON.stringify(event.roomId)} is not valid`);
  }
  const violation = checkEventSchema(event);
  if (violation !== undefined) return reject(violation.rule, violation.reason);

  if (event.type === EventType.Create) return authorizeCreate(state, event);
  // Signaling draft §Room Structure: "The first event MUST be a create event".
  if (state.eventCount === 0) {
    return reject(
      "structure.first_event_create",
      `${event.sender} cannot send ${event.type} before the room's m.room.create event`,
    );
  }
  const creator = creatorOf(state);
  if (creator === undefined) {
    return reject("structure.create_missing", `the state of ${event.roomId} has no m.room.create event`);
  }
  // Signaling draft §Room Structure: "The second event MUST be the user
  // participation event for the creator"; it skips the join rules (decision 3).
  if (state.headType === EventType.Create) {
    const isCreatorJoin =
      event.type === EventType.User &&
      event.sender === creator &&
      event.stateKey === creator &&
      event.content["participation"] === "join";
    return isCreatorJoin
      ? ALLOW
      : reject(
          "structure.second_event_creator_join",
          `the event after m.room.create must be the join of the creator ${creator}, not ${event.type} from ${event.sender}`,
        );
  }

  if (event.type === EventType.User) return authorizeParticipation(state, event);
  return authorizeSend(state, event, creator);
}

/** LM-04 §Auth Rules Algorithm rule 3, with the signaling draft's "first event" rule. */
function authorizeCreate(state: RoomStateView, event: EventForAuth): AuthDecision {
  if (state.eventCount !== 0) {
    return reject(
      "create.first_event",
      `${event.sender} cannot send m.room.create: ${event.roomId} already has ${state.eventCount} event(s)`,
    );
  }
  const senderServer = serverNameOf(event.sender);
  const roomServer = serverNameOf(event.roomId);
  if (senderServer !== roomServer) {
    return reject(
      "create.sender_server",
      `the creator ${event.sender} is on ${senderServer} but the room ID ${event.roomId} is on ${roomServer}`,
    );
  }
  return ALLOW;
}

/** Policy draft §User Participation. */
function authorizeParticipation(state: RoomStateView, event: EventForAuth): AuthDecision {
  // Both were checked by checkEventSchema.
  const target = event.stateKey as string;
  const participation = event.content["participation"] as Participation;
  const sender = event.sender;
  switch (participation) {
    case "invite":
      return authorizeInvite(state, sender, target);
    case "join":
      return authorizeJoin(state, sender, target);
    case "knock":
      return authorizeKnock(state, sender, target);
    case "ban":
      return authorizeBan(state, sender, target);
    case "leave":
      return sender === target
        ? authorizeVoluntaryLeave(state, sender)
        : authorizeKick(state, sender, target);
  }
}

/** §Invite Conditions; the permission is `add` (decision 1). */
function authorizeInvite(state: RoomStateView, sender: string, target: string): AuthDecision {
  const senderParticipation = participationOf(state, sender);
  if (senderParticipation !== "join") {
    return reject(
      "participation.invite.sender_not_joined",
      `${sender} cannot invite ${target}: ${sender} is ${describeParticipation(senderParticipation)}, not joined`,
    );
  }
  const targetParticipation = participationOf(state, target);
  if (targetParticipation === "ban") {
    return reject(
      "participation.invite.target_banned",
      `${sender} cannot invite ${target}: ${target} is banned`,
    );
  }
  if (targetParticipation === "join") {
    return reject(
      "participation.invite.target_joined",
      `${sender} cannot invite ${target}: ${target} is already joined`,
    );
  }
  if (!resolvePermissions(state, sender).add) {
    return reject(
      "participation.invite.permission",
      `${sender} cannot invite ${target}: ${sender} lacks the add permission`,
    );
  }
  return ALLOW;
}

/** §Join Conditions and §Join Rules. */
function authorizeJoin(state: RoomStateView, sender: string, target: string): AuthDecision {
  if (sender !== target) {
    return reject("participation.join.sender_not_target", `${sender} cannot join on behalf of ${target}`);
  }
  const current = participationOf(state, sender);
  if (current === "ban")
    return reject("participation.join.banned", `${sender} cannot join: ${sender} is banned`);
  const rule = currentJoinRule(state);
  if (rule === "public" || current === "invite" || current === "join") return ALLOW;
  return reject(
    "participation.join.join_rules",
    `${sender} cannot join: the join rule is ${rule} and ${sender} is ${describeParticipation(current)}, not invited`,
  );
}

/** §Knock Conditions. */
function authorizeKnock(state: RoomStateView, sender: string, target: string): AuthDecision {
  if (sender !== target) {
    return reject("participation.knock.sender_not_target", `${sender} cannot knock on behalf of ${target}`);
  }
  const rule = currentJoinRule(state);
  if (rule !== "knock") {
    return reject(
      "participation.knock.join_rules",
      `${sender} cannot knock: the join rule is ${rule}, not knock`,
    );
  }
  const current = participationOf(state, sender);
  if (current === "ban")
    return reject("participation.knock.banned", `${sender} cannot knock: ${sender} is banned`);
  if (current === "join") {
    return reject("participation.knock.joined", `${sender} cannot knock: ${sender} is already joined`);
  }
  return ALLOW;
}

/** §Ban Conditions with decision 5: strictly higher effective ban power; the target may be absent. */
function authorizeBan(state: RoomStateView, sender: string, target: string): AuthDecision {
  if (sender === target) return reject("participation.ban.self", `${sender} cannot ban themselves`);
  const senderParticipation = participationOf(state, sender);
  if (senderParticipation !== "join") {
    return reject(
      "participation.ban.sender_not_joined",
      `${sender} cannot ban ${target}: ${sender} is ${describeParticipation(senderParticipation)}, not joined`,
    );
  }
  if (!resolvePermissions(state, sender).ban) {
    return reject(
      "participation.ban.permission",
      `${sender} cannot ban ${target}: ${sender} lacks the ban permission`,
    );
  }
  return checkPower(state, sender, target, "ban", "participation.ban.power", "ban");
}

/** §Leave Conditions, §Voluntary. */
function authorizeVoluntaryLeave(state: RoomStateView, sender: string): AuthDecision {
  const current = participationOf(state, sender);
  if (current === "invite" || current === "join" || current === "knock") return ALLOW;
  return reject(
    "participation.leave.not_participating",
    `${sender} cannot leave: ${sender} is ${describeParticipation(current)}, not invited, joined or knocking`,
  );
}

/**
 * §Leave Conditions, §Kicks. A kick may also rescind an invite or decline a
 * knock (decision 6); kicking a banned user unbans them and takes the ban
 * permission and ban power instead.
 */
function authorizeKick(state: RoomStateView, sender: string, target: string): AuthDecision {
  const senderParticipation = participationOf(state, sender);
  if (senderParticipation !== "join") {
    return reject(
      "participation.kick.sender_not_joined",
      `${sender} cannot remove ${target}: ${sender} is ${describeParticipation(senderParticipation)}, not joined`,
    );
  }
  const targetParticipation = participationOf(state, target);
  const permissions = resolvePermissions(state, sender);
  if (targetParticipation === "ban") {
    if (!permissions.ban) {
      return reject(
        "participation.unban.permission",
        `${sender} cannot unban ${target}: ${sender} lacks the ban permission`,
      );
    }
    return checkPower(state, sender, target, "ban", "participation.unban.power", "unban");
  }
  if (targetParticipation !== "join" && targetParticipation !== "invite" && targetParticipation !== "knock") {
    return reject(
      "participation.kick.target_state",
      `${sender} cannot kick ${target}: ${target} is ${describeParticipation(targetParticipation)}, not joined, invited or knocking`,
    );
  }
  if (!permissions.kick) {
    return reject(
      "participation.kick.permission",
      `${sender} cannot kick ${target}: ${sender} lacks the kick permission`,
    );
  }
  return checkPower(state, sender, target, "kick", "participation.kick.power", "kick");
}

function checkPower(
  state: RoomStateView,
  sender: string,
  target: string,
  permission: "kick" | "ban",
  rule: string,
  action: string,
): AuthDecision {
  const senderPower = effectivePower(state, sender, permission);
  const targetPower = effectivePower(state, target, permission);
  if (senderPower > targetPower) return ALLOW;
  return reject(
    rule,
    `${sender} cannot ${action} ${target}: ${sender}'s effective ${permission} power ${senderPower} is not higher than ${target}'s ${targetPower}`,
  );
}

/** LM-04 §Auth Rules Algorithm rules 6-10, with roles in place of power levels. */
function authorizeSend(state: RoomStateView, event: EventForAuth, creator: string): AuthDecision {
  const sender = event.sender;
  if (event.type === EventType.MlsProposal) {
    // Our extension (protocol.md §12): the hub sends its external-sender proposals on behalf of
    // its own user, who takes no part in the room; the room's MLS group checks the rest.
    return serverNameOf(sender) === serverNameOf(creator)
      ? ALLOW
      : reject(
          "mls_proposal.hub",
          `${sender} cannot send ${event.type}: only the room's hub (${serverNameOf(creator)}) sends it`,
        );
  }
  const senderParticipation = participationOf(state, sender);
  if (senderParticipation !== "join") {
    return reject(
      "send.not_joined",
      `${sender} cannot send ${event.type}: ${sender} is ${describeParticipation(senderParticipation)}, not joined`,
    );
  }
  switch (event.type) {
    case EventType.Roles:
      return authorizeRoles(state, event, creator);
    case EventType.JoinRules:
      // Reading 9: the join rule decides who may enter without being added, so
      // changing it takes the `add` permission (the policy draft names none).
      return resolvePermissions(state, sender).add
        ? ALLOW
        : reject(
            "join_rules.permission",
            `${sender} cannot change the join rule: ${sender} lacks the add permission`,
          );
    case EventType.MlsCommit:
      // Joined is enough: key updates and removals must stay possible without sendMessages.
      return ALLOW;
  }
  if (!resolvePermissions(state, sender).sendMessages) {
    return reject(
      "send.sendMessages",
      `${sender} cannot send ${event.type}: ${sender} lacks the sendMessages permission`,
    );
  }
  if (event.stateKey?.startsWith("@") && event.stateKey !== sender) {
    return reject(
      "state.owned_state_key",
      `${sender} cannot send ${event.type} with state key ${event.stateKey}: a state key starting with @ belongs to that user`,
    );
  }
  return ALLOW;
}

/**
 * `m.room.roles` (policy draft §Role Changes is a TODO): the creator sends
 * the first one (reading 2); afterwards the sender's `roles` permission must
 * name every role the change touches, and each of those roles must rank
 * strictly below the sender's roles rank, before and after the change (reading 7).
 */
function authorizeRoles(state: RoomStateView, event: EventForAuth, creator: string): AuthDecision {
  const sender = event.sender;
  const rolesBefore = currentRoles(state);
  if (rolesBefore === undefined) {
    return sender === creator
      ? ALLOW
      : reject(
          "roles.creator_only",
          `${sender} cannot send the first m.room.roles event: until roles exist only the creator ${creator} may`,
        );
  }
  const before = rolesObject(state.get(EventType.Roles, "")?.content);
  const after = rolesObject(event.content);
  const touched = [...new Set([...Object.keys(before), ...Object.keys(after)])]
    .filter((id) => !jsonEqual(own(before, id), own(after, id)))
    .sort();
  if (touched.length === 0) return ALLOW;
  const permissions = resolvePermissions(state, sender);
  const unnamed = touched.filter((id) => !mayAffectRole(permissions, id));
  if (unnamed.length > 0) {
    return reject(
      "roles.change_permission",
      `${sender} cannot change role(s) ${unnamed.join(", ")}: ${sender}'s roles permission does not name them`,
    );
  }
  // Policy §Calculating Permissions: the `roles` permission in force is the one
  // of the highest-order role defining it, so that role's order is the rank.
  const rank = effectivePower(state, sender, "roles");
  const notBelow = atOrAbove(touched, rolesBefore, rank);
  if (notBelow.length > 0) {
    return reject(
      "roles.change_rank",
      `${sender} cannot change ${notBelow.join(", ")}: not below ${sender}'s roles rank ${rank}, the order of the role giving ${sender} the roles permission`,
    );
  }
  // checkEventSchema has already parsed this content.
  const rolesAfter = parseRolesContent(event.content) as RoleDefinition[];
  const raised = atOrAbove(touched, rolesAfter, rank);
  if (raised.length > 0) {
    return reject(
      "roles.raise_rank",
      `${sender} cannot set ${raised.join(", ")}: not below ${sender}'s roles rank ${rank}, the order of the role giving ${sender} the roles permission`,
    );
  }
  return ALLOW;
}

/** The roles among `ids` whose order in `roles` is at least `rank`, as "id (order n)". */
function atOrAbove(ids: readonly string[], roles: readonly RoleDefinition[], rank: number): string[] {
  const order = new Map(roles.map((role) => [role.id, role.order]));
  return ids.flatMap((id) => {
    const o = order.get(id);
    return o !== undefined && o >= rank ? [`${id} (order ${o})`] : [];
  });
}

function rolesObject(content: JsonObject | undefined): JsonObject {
  const roles = content === undefined ? undefined : own(content, "roles");
  return typeof roles === "object" && roles !== null && !Array.isArray(roles) ? roles : {};
}

function own(object: JsonObject, key: string): JsonValue | undefined {
  return Object.hasOwn(object, key) ? object[key] : undefined;
}

/** Structural JSON equality; object key order does not matter, array order does. */
function jsonEqual(a: JsonValue | undefined, b: JsonValue | undefined): boolean {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a) || Array.isArray(b)) {
    return (
      Array.isArray(a) &&
      Array.isArray(b) &&
      a.length === b.length &&
      a.every((item, i) => jsonEqual(item, b[i]))
    );
  }
  const keys = Object.keys(a);
  return (
    keys.length === Object.keys(b).length &&
    keys.every((key) => Object.hasOwn(b, key) && jsonEqual(a[key], b[key]))
  );
}
