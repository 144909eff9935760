/**
 * Key layout of the KeyPackage pool and the bearer tokens (`␀` is U+0000; `<ref>` is a
 * KeyPackageRef (RFC 9420 §5.2) and `<token>` the SHA-256 of a bearer token, both in hex):
 *
 * | Key                          | Value                                                                  |
 * | ---------------------------- | ---------------------------------------------------------------------- |
 * | `mka␀<user>␀<ref>`           | a one-time KeyPackage not yet claimed (base64 of its encoding)         |
 * | `mkl␀<user>`                 | the ref of the user's current last-resort KeyPackage                   |
 * | `mkk␀<user>␀<ref>`           | a KeyPackage's private keys, kept for the Welcome (JSON)               |
 * | `mkr␀<ref>`                  | the user whose KeyPackage it is: a Welcome names only the ref          |
 * | `mkt␀<token>`                | a bearer token's record: target, requester, expiry, revoked (JSON)     |
 * | `mktu␀<target>␀<token>`      | empty: the target user's tokens, for listing and revoking them all     |
 *
 * The token itself is never stored: only its hash.
 */
const SEP = "\u0000";

export const availablePrefix = (userId: string) => `mka${SEP}${userId}${SEP}`;
export const availableKey = (userId: string, ref: string) => availablePrefix(userId) + ref;
export const lastResortKey = (userId: string) => `mkl${SEP}${userId}`;
export const privatePrefix = (userId: string) => `mkk${SEP}${userId}${SEP}`;
export const privateKey = (userId: string, ref: string) => privatePrefix(userId) + ref;
export const refOwnerKey = (ref: string) => `mkr${SEP}${ref}`;
export const tokenKey = (tokenHash: string) => `mkt${SEP}${tokenHash}`;
export const targetTokensPrefix = (target: string) => `mktu${SEP}${target}${SEP}`;
export const targetTokenKey = (target: string, tokenHash: string) => targetTokensPrefix(target) + tokenHash;
export const TOKEN_PREFIX = `mkt${SEP}`;
