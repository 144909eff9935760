/** Room version io.mimi-appservice.room.v1: event schemas, roles, auth rules and redaction. */
export { authorize, currentJoinRule } from "./auth";
export { selectAuthEvents } from "./authEventsSelection";
export {
  DEFAULT_ENCRYPTION_ALGORITHM,
  DEFAULT_JOIN_RULE,
  EventType,
  JOIN_RULES,
  MAX_ROLES,
  NON_STATE_EVENT_TYPES,
  PARTICIPATIONS,
  PERMISSION_NAMES,
  ROLE_ID,
  ROOM_VERSION_ID,
  STATE_EVENT_TYPES,
  STRIPPED_STATE_TYPES,
  checkEventSchema,
  createContent,
  isKnownEventType,
  parseRolesContent,
  validateContent,
} from "./eventTypes";
export type {
  BooleanPermissionName,
  JoinRule,
  KnownEventType,
  Participation,
  PermissionName,
  RoleDefinition,
  SchemaViolation,
} from "./eventTypes";
export { MEMBERSHIP, participationContent, participationIn, participationOf } from "./membership";
export { redactContent } from "./redaction";
export {
  DEFAULT_PERMISSIONS,
  SUPERUSER_PERMISSIONS,
  creatorOf,
  currentRoles,
  effectivePower,
  mayAffectRole,
  resolvePermissions,
} from "./roles";
export type { ResolvedPermissions, RoleScope } from "./roles";
