import type { JsonObject, JsonValue } from "../../events/types";
import { isValidEventId, isValidUserId } from "../../identifiers";
import type { Participation } from "../types";

/** The create event's `policy_id` naming this room version (design §3). */
export const ROOM_VERSION_ID = "io.mimi-appservice.room.v1";
/** LM-04 §MLS Considerations. */
export const DEFAULT_ENCRYPTION_ALGORITHM = "m.mls.v1.dhkemx25519-aes128gcm-sha256-ed25519";
const ENCRYPTION_ALGORITHM_PREFIX = "m.mls.v1.";

export const EventType = {
  Create: "m.room.create",
  User: "m.room.user",
  JoinRules: "m.room.join_rules",
  Roles: "m.room.roles",
  Name: "m.room.name",
  Topic: "m.room.topic",
  Avatar: "m.room.avatar",
  MlsCommit: "m.mls.commit",
  Encrypted: "m.room.encrypted",
  /** The hub's MLS proposals as external sender (an extension: LM-04 sends no proposals; protocol.md §12). */
  MlsProposal: "io.mimi-appservice.mls.proposal",
} as const;
export type KnownEventType = (typeof EventType)[keyof typeof EventType];

export const STATE_EVENT_TYPES: ReadonlySet<string> = new Set<string>([
  EventType.Create,
  EventType.User,
  EventType.JoinRules,
  EventType.Roles,
  EventType.Name,
  EventType.Topic,
  EventType.Avatar,
]);
export const NON_STATE_EVENT_TYPES: ReadonlySet<string> = new Set<string>([
  EventType.MlsCommit,
  EventType.Encrypted,
  EventType.MlsProposal,
]);

export const PARTICIPATIONS: readonly Participation[] = ["invite", "join", "leave", "ban", "knock"];
export type { Participation };

/** LM-04 §Stripped State, less `m.room.canonical_alias`, which this version does not define. */
export const STRIPPED_STATE_TYPES: readonly string[] = [
  EventType.Create,
  EventType.Name,
  EventType.Avatar,
  EventType.Topic,
  EventType.JoinRules,
];

export const JOIN_RULES = ["invite", "knock", "public"] as const;
export type JoinRule = (typeof JOIN_RULES)[number];
/** Policy draft §Join Rules: no join rules event means `invite`. */
export const DEFAULT_JOIN_RULE: JoinRule = "invite";

export const PERMISSION_NAMES = ["add", "kick", "ban", "redact", "roles", "sendMessages"] as const;
export type PermissionName = (typeof PERMISSION_NAMES)[number];
export type BooleanPermissionName = Exclude<PermissionName, "roles">;

export const ROLE_ID = /^[A-Za-z0-9._~-]{1,64}$/;
export const MAX_ROLES = 256;
const ROLE_FIELDS: ReadonlySet<string> = new Set(["order", "permissions", "assignees"]);

/** One role of an `m.room.roles` event (policy draft §Permissions). */
export interface RoleDefinition {
  readonly id: string;
  readonly order: number;
  readonly permissions: Readonly<
    Partial<Record<BooleanPermissionName, boolean> & { roles: readonly string[] }>
  >;
  readonly assignees: readonly string[];
}

export function isParticipation(value: unknown): value is Participation {
  return typeof value === "string" && (PARTICIPATIONS as readonly string[]).includes(value);
}

/** Content of this version's create event. */
export function createContent(encryptionAlgorithm: string = DEFAULT_ENCRYPTION_ALGORITHM): JsonObject {
  return { policy_id: ROOM_VERSION_ID, encryption_algorithm: encryptionAlgorithm };
}

export function isJoinRule(value: unknown): value is JoinRule {
  return typeof value === "string" && (JOIN_RULES as readonly string[]).includes(value);
}

const UNPADDED_BASE64 = /^[A-Za-z0-9+/]+$/;

/** Non-empty unpadded standard base64 (signaling draft §Conventions, RFC 4648 §4). */
function isUnpaddedBase64(text: string): boolean {
  return UNPADDED_BASE64.test(text) && text.length % 4 !== 1;
}

function isObject(value: JsonValue | undefined): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function field(content: JsonObject, name: string): JsonValue | undefined {
  return Object.hasOwn(content, name) ? content[name] : undefined;
}

function requireString(content: JsonObject, name: string): string | undefined {
  return typeof field(content, name) === "string" ? undefined : `${name} must be a string`;
}

function requireBase64(content: JsonObject, name: string): string | undefined {
  const value = field(content, name);
  return typeof value === "string" && isUnpaddedBase64(value)
    ? undefined
    : `${name} must be a non-empty unpadded base64 string`;
}

function requireEventId(content: JsonObject, name: string): string | undefined {
  const value = field(content, name);
  return typeof value === "string" && isValidEventId(value) ? undefined : `${name} must be an event ID`;
}

function validateCreate(content: JsonObject): string | undefined {
  const policyId = field(content, "policy_id");
  if (policyId !== ROOM_VERSION_ID) {
    return `policy_id must be "${ROOM_VERSION_ID}", got ${JSON.stringify(policyId ?? null)}`;
  }
  const algorithm = field(content, "encryption_algorithm");
  if (
    typeof algorithm !== "string" ||
    !algorithm.startsWith(ENCRYPTION_ALGORITHM_PREFIX) ||
    algorithm.length === ENCRYPTION_ALGORITHM_PREFIX.length
  ) {
    return `encryption_algorithm must be an MLS algorithm starting with "${ENCRYPTION_ALGORITHM_PREFIX}"`;
  }
  return undefined;
}

function validateUser(content: JsonObject): string | undefined {
  if (!isParticipation(field(content, "participation"))) {
    return `participation must be one of ${PARTICIPATIONS.join(", ")}`;
  }
  if (Object.hasOwn(content, "reason")) return requireString(content, "reason");
  return undefined;
}

function validateJoinRules(content: JsonObject): string | undefined {
  return isJoinRule(field(content, "rule")) ? undefined : `rule must be one of ${JOIN_RULES.join(", ")}`;
}

function parsePermissions(
  roleId: string,
  value: JsonValue | undefined,
): RoleDefinition["permissions"] | string {
  if (!isObject(value)) return `role ${roleId}: permissions must be an object`;
  const permissions: Partial<Record<BooleanPermissionName, boolean> & { roles: readonly string[] }> = {};
  for (const [name, granted] of Object.entries(value)) {
    if (name === "roles") {
      if (!Array.isArray(granted)) return `role ${roleId}: permission roles must be an array of role IDs`;
      const affected = new Set<string>();
      for (const id of granted) {
        if (typeof id !== "string" || !ROLE_ID.test(id)) {
          return `role ${roleId}: permission roles names an invalid role ID ${JSON.stringify(id)}`;
        }
        if (affected.has(id)) return `role ${roleId}: permission roles names ${id} twice`;
        affected.add(id);
      }
      permissions.roles = [...affected];
    } else if ((PERMISSION_NAMES as readonly string[]).includes(name)) {
      if (typeof granted !== "boolean") return `role ${roleId}: permission ${name} must be a boolean`;
      permissions[name as BooleanPermissionName] = granted;
    } else {
      return `role ${roleId}: unknown permission ${JSON.stringify(name)}`;
    }
  }
  return permissions;
}

function parseAssignees(roleId: string, value: JsonValue | undefined): string[] | string {
  if (!Array.isArray(value)) return `role ${roleId}: assignees must be an array of user IDs`;
  const assignees = new Set<string>();
  for (const userId of value) {
    if (typeof userId !== "string" || !isValidUserId(userId)) {
      return `role ${roleId}: assignee ${JSON.stringify(userId)} is not a valid user ID`;
    }
    if (assignees.has(userId)) return `role ${roleId}: assignee ${userId} is listed twice`;
    assignees.add(userId);
  }
  return [...assignees];
}

/** Parses `m.room.roles` content, or says why it is invalid. */
export function parseRolesContent(content: JsonObject): RoleDefinition[] | string {
  const roles = field(content, "roles");
  if (!isObject(roles)) return "roles must be an object mapping role IDs to roles";
  const entries = Object.entries(roles);
  if (entries.length > MAX_ROLES) return `at most ${MAX_ROLES} roles are allowed, got ${entries.length}`;
  const roleByOrder = new Map<number, string>();
  const parsed: RoleDefinition[] = [];
  for (const [id, role] of entries) {
    if (!ROLE_ID.test(id)) return `invalid role ID ${JSON.stringify(id)}`;
    if (!isObject(role)) return `role ${id} must be an object`;
    const unknown = Object.keys(role).find((name) => !ROLE_FIELDS.has(name));
    if (unknown !== undefined) return `role ${id} has an unknown field ${JSON.stringify(unknown)}`;
    const order = field(role, "order");
    if (typeof order !== "number" || !Number.isSafeInteger(order) || order < 1) {
      return `role ${id}: order must be an integer of at least 1`;
    }
    // Design decision 4: equal orders would leave §Calculating Permissions without a winner.
    const sameOrder = roleByOrder.get(order);
    if (sameOrder !== undefined) return `roles ${sameOrder} and ${id} share order ${order}`;
    roleByOrder.set(order, id);
    const permissions = parsePermissions(id, field(role, "permissions"));
    if (typeof permissions === "string") return permissions;
    const assignees = parseAssignees(id, field(role, "assignees"));
    if (typeof assignees === "string") return assignees;
    parsed.push({ id, order, permissions, assignees });
  }
  return parsed;
}

function validateRoles(content: JsonObject): string | undefined {
  const parsed = parseRolesContent(content);
  return typeof parsed === "string" ? parsed : undefined;
}

function validateMlsCommit(content: JsonObject): string | undefined {
  return (
    requireBase64(content, "message") ??
    requireBase64(content, "public_group_state") ??
    (Object.hasOwn(content, "prev_commit_event_id")
      ? requireEventId(content, "prev_commit_event_id")
      : undefined)
  );
}

function validateEncrypted(content: JsonObject): string | undefined {
  const algorithm = field(content, "algorithm");
  if (typeof algorithm !== "string" || algorithm === "") return "algorithm must be a non-empty string";
  return requireBase64(content, "ciphertext") ?? requireEventId(content, "commit_event_id");
}

const CONTENT_VALIDATORS: Readonly<Record<KnownEventType, (content: JsonObject) => string | undefined>> = {
  [EventType.Create]: validateCreate,
  [EventType.User]: validateUser,
  [EventType.JoinRules]: validateJoinRules,
  [EventType.Roles]: validateRoles,
  [EventType.Name]: (content) => requireString(content, "name"),
  [EventType.Topic]: (content) => requireString(content, "topic"),
  [EventType.Avatar]: (content) => requireString(content, "url"),
  [EventType.MlsCommit]: validateMlsCommit,
  [EventType.Encrypted]: validateEncrypted,
  [EventType.MlsProposal]: (content) => requireBase64(content, "message"),
};

export function isKnownEventType(type: string): type is KnownEventType {
  return Object.hasOwn(CONTENT_VALIDATORS, type);
}

/**
 * Validates `content` against the schema of `type`. Returns why it is invalid,
 * or undefined. Custom types accept any JSON object.
 */
export function validateContent(type: string, content: JsonObject): string | undefined {
  if (!isObject(content)) return "content must be a JSON object";
  return isKnownEventType(type) ? CONTENT_VALIDATORS[type](content) : undefined;
}

/** A schema violation with the stable rule name `authorize` reports. */
export interface SchemaViolation {
  rule: string;
  reason: string;
}

/**
 * Checks the state key's presence and shape, then the content, for one event.
 * Rules: "schema.state_key", "schema.reserved_type", "schema.content" and
 * "schema.<known type>".
 */
export function checkEventSchema(event: {
  type: string;
  stateKey?: string;
  content: JsonObject;
}): SchemaViolation | undefined {
  const { type, stateKey, content } = event;
  if (STATE_EVENT_TYPES.has(type)) {
    if (stateKey === undefined) {
      return { rule: "schema.state_key", reason: `${type} is a state event and needs a state key` };
    }
    if (type === EventType.User) {
      if (!isValidUserId(stateKey)) {
        return {
          rule: "schema.state_key",
          reason: `the state key of ${type} must be a user ID, got ${JSON.stringify(stateKey)}`,
        };
      }
    } else if (stateKey !== "") {
      return {
        rule: "schema.state_key",
        reason: `${type} takes the empty state key, got ${JSON.stringify(stateKey)}`,
      };
    }
  } else if (NON_STATE_EVENT_TYPES.has(type)) {
    if (stateKey !== undefined) {
      return { rule: "schema.state_key", reason: `${type} is not a state event and takes no state key` };
    }
  } else if (stateKey !== undefined && type.startsWith("m.")) {
    return {
      rule: "schema.reserved_type",
      reason: `${type} is not a state event of this room version, and the m. namespace is reserved`,
    };
  }
  const problem = validateContent(type, content);
  if (problem === undefined) return undefined;
  return isKnownEventType(type)
    ? { rule: `schema.${type}`, reason: `invalid ${type} content: ${problem}` }
    : { rule: "schema.content", reason: `invalid ${type} content: ${problem}` };
}
