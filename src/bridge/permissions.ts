/**
 * Who may use the bridge (`appservice.permissions` in the config): a map from `*`, a homeserver
 * domain or a Matrix user ID to a level. The most specific entry wins: the user ID, then the
 * domain of the user ID (the part after its first `:`), then `*`; a user no entry covers is `none`.
 */
import type { PermissionLevel } from "../config/config";

export type { PermissionLevel };

export const PERMISSION_LEVELS: readonly PermissionLevel[] = ["none", "user", "admin"];

/** The level of a Matrix user ID under a permission map. */
export function permissionLevel(
  permissions: Readonly<Record<string, PermissionLevel>>,
  matrixUserId: string,
): PermissionLevel {
  const own = permissions[matrixUserId];
  if (own !== undefined) return own;
  const colon = matrixUserId.indexOf(":");
  if (colon !== -1) {
    const domain = matrixUserId.slice(colon + 1).toLowerCase();
    for (const [key, level] of Object.entries(permissions)) {
      if (!key.startsWith("@") && key !== "*" && key.toLowerCase() === domain) return level;
    }
  }
  return permissions["*"] ?? "none";
}

/** `admin` covers `user`, which covers `none`. */
export function allows(level: PermissionLevel, needed: PermissionLevel): boolean {
  return PERMISSION_LEVELS.indexOf(level) >= PERMISSION_LEVELS.indexOf(needed);
}
