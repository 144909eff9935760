export { IdentifierError, type IdentifierKind } from "./errors";
export { parseServerName, isValidServerName, type ServerName } from "./serverName";
export { parseRoomId, isValidRoomId, makeRoomId, randomRoomLocalpart, type RoomId } from "./roomId";
export { parseUserId, isValidUserId, makeUserId, type UserId } from "./userId";
export { parseEventId, isValidEventId } from "./eventId";
export { parseKeyId, isValidKeyId, type KeyId } from "./keyId";
export { serverNameOf } from "./serverNameOf";
