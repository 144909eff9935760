import type { RoomStateView } from "../types";
import {
  type BooleanPermissionName,
  EventType,
  type PermissionName,
  type RoleDefinition,
  parseRolesContent,
} from "./eventTypes";

/** The role IDs a `roles` permission lets its holder affect: a list, or every role. */
export type RoleScope = "every" | readonly string[];

/** A user's resolved permission set (policy draft §Calculating Permissions). */
export type ResolvedPermissions = Readonly<Record<BooleanPermissionName, boolean> & { roles: RoleScope }>;

/** Policy draft §List of Permissions: the default of each permission. */
export const DEFAULT_PERMISSIONS: ResolvedPermissions = {
  add: false,
  kick: false,
  ban: false,
  redact: false,
  roles: [],
  sendMessages: true,
};

/** The creator's rights before the first `m.room.roles` event (design decision 2). */
export const SUPERUSER_PERMISSIONS: ResolvedPermissions = {
  add: true,
  kick: true,
  ban: true,
  redact: true,
  roles: "every",
  sendMessages: true,
};

/** The sender of the room's `m.room.create` event. */
export function creatorOf(state: RoomStateView): string | undefined {
  return state.get(EventType.Create, "")?.sender;
}

/**
 * The roles of the current `m.room.roles` event, or undefined when there is
 * none. A stored event that no longer parses counts as defining no roles, so
 * a broken state fails closed rather than reviving the creator's superuser rights.
 */
export function currentRoles(state: RoomStateView): readonly RoleDefinition[] | undefined {
  const entry = state.get(EventType.Roles, "");
  if (entry === undefined) return undefined;
  const parsed = parseRolesContent(entry.content);
  return typeof parsed === "string" ? [] : parsed;
}

function isSuperuser(state: RoomStateView, userId: string): boolean {
  return creatorOf(state) === userId;
}

function assignedRoles(roles: readonly RoleDefinition[], userId: string): RoleDefinition[] {
  return roles.filter((role) => role.assignees.includes(userId)).sort((a, b) => a.order - b.order);
}

/**
 * Policy draft §Calculating Permissions: per permission, the value of the
 * highest-`order` assigned role that defines it, else the default.
 */
export function resolvePermissions(state: RoomStateView, userId: string): ResolvedPermissions {
  const roles = currentRoles(state);
  if (roles === undefined) return isSuperuser(state, userId) ? SUPERUSER_PERMISSIONS : DEFAULT_PERMISSIONS;
  const resolved: Record<BooleanPermissionName, boolean> & { roles: RoleScope } = { ...DEFAULT_PERMISSIONS };
  for (const role of assignedRoles(roles, userId)) Object.assign(resolved, role.permissions);
  return resolved;
}

/**
 * Policy draft §Effective Power Level: the highest `order` among the user's
 * roles that define `permission`, whatever its value; 0 when none does
 * (design decision 4), +Infinity for the creator before the first roles event.
 */
export function effectivePower(state: RoomStateView, userId: string, permission: PermissionName): number {
  const roles = currentRoles(state);
  if (roles === undefined) return isSuperuser(state, userId) ? Number.POSITIVE_INFINITY : 0;
  let power = 0;
  for (const role of assignedRoles(roles, userId)) {
    if (Object.hasOwn(role.permissions, permission)) power = role.order;
  }
  return power;
}

export function mayAffectRole(permissions: ResolvedPermissions, roleId: string): boolean {
  return permissions.roles === "every" || permissions.roles.includes(roleId);
}
