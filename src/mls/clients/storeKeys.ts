/**
 * Key layout of the hosted clients (`␀` is U+0000; user and room IDs never contain it):
 *
 * | Key                                       | Value                                                          |
 * | ----------------------------------------- | -------------------------------------------------------------- |
 * | `mhc␀<user>`                              | the client's signature key pair (JSON, base64)                 |
 * | `mhg␀<user>␀<room>`                       | the client's group state but its trees, secrets included       |
 * | `mht␀<user>␀<room>`                       | the client's ratchet trees: current epoch, and past ones       |
 * | `mhp␀<user>␀<room>`                       | the client's own commit waiting for the hub, and its new state |
 * | `mhe␀<user>␀<room>␀<epoch, 16 hex>`       | the event ID of the m.mls.commit that began that epoch         |
 */
const SEP = "\u0000";

export const clientIdentityPrefix = () => `mhc${SEP}`;
export const clientIdentityKey = (userId: string) => `${clientIdentityPrefix()}${userId}`;
export const groupStateKey = (userId: string, roomId: string) => `mhg${SEP}${userId}${SEP}${roomId}`;
export const groupTreesKey = (userId: string, roomId: string) => `mht${SEP}${userId}${SEP}${roomId}`;
export const pendingCommitKey = (userId: string, roomId: string) => `mhp${SEP}${userId}${SEP}${roomId}`;
export const epochCommitPrefix = (userId: string, roomId: string) =>
  `mhe${SEP}${userId}${SEP}${roomId}${SEP}`;
export const epochCommitKey = (userId: string, roomId: string, epoch: bigint) =>
  epochCommitPrefix(userId, roomId) + epoch.toString(16).padStart(16, "0");
