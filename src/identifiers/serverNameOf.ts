import { IdentifierError } from "./errors";

/**
 * The server name of an already-validated room or user ID: everything after
 * the first ":" (localparts cannot contain one, LM-04 §Rooms, §Users).
 */
export function serverNameOf(userOrRoomId: string): string {
  const colon = userOrRoomId.indexOf(":");
  if (colon < 0) {
    throw new IdentifierError(
      userOrRoomId.startsWith("@") ? "user_id" : "room_id",
      userOrRoomId,
      userOrRoomId.startsWith("@") ? "user_id.missing_colon" : "room_id.missing_colon",
      'has no ":" separating the localpart from the server name',
    );
  }
  return userOrRoomId.slice(colon + 1);
}
