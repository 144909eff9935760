/**
 * Key layout of the group agent (`␀` is U+0000; room and user IDs never contain it):
 *
 * | Key                                  | Value                                                              |
 * | ------------------------------------ | ------------------------------------------------------------------ |
 * | `mgc␀<room>`                         | the sequence number of the last event the agent processed          |
 * | `mgl␀<room>␀<user>`                  | the LPDU hash of the user's commit waiting for the hub             |
 * | `mgo␀<room>␀<LPDU hash>`             | a message a local user sent, until its event comes back (JSON)     |
 * | `mgm␀<room>␀<user>␀<seq, 16 hex>`    | a message as the user's client received it (JSON, `ReceivedMessage`) |
 * | `mgx␀<room>␀<user>`                  | the Welcome of the user's commit waiting for the hub (base64)      |
 */
const SEP = "\u0000";

export const cursorKey = (roomId: string) => `mgc${SEP}${roomId}`;
export const pendingLpduKey = (roomId: string, userId: string) => `mgl${SEP}${roomId}${SEP}${userId}`;
export const outboxKey = (roomId: string, lpduHash: string) => `mgo${SEP}${roomId}${SEP}${lpduHash}`;
export const inboxRoomPrefix = (roomId: string) => `mgm${SEP}${roomId}${SEP}`;
export const inboxPrefix = (roomId: string, userId: string) => `${inboxRoomPrefix(roomId)}${userId}${SEP}`;
export const inboxKey = (roomId: string, userId: string, seq: number) =>
  inboxPrefix(roomId, userId) + seq.toString(16).padStart(16, "0");
export const outgoingWelcomeKey = (roomId: string, userId: string) => `mgx${SEP}${roomId}${SEP}${userId}`;
