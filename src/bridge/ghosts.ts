/**
 * Ghosts: a remote MIMI user `@l:s` is the homeserver user `@<prefix><escaped "l:s">:<domain>`.
 * The escaping is reversible and yields a valid Matrix localpart (a-z 0-9 . _ = - /): those
 * characters stay (but `=`), every other byte of the UTF-8 form becomes `=` and two hex digits,
 * so `@Bob:b.example` is `@_mimi_=42ob=3ab.example:<domain>`.
 */
const KEPT = /^[a-z0-9._\-/]$/;

export function escapeUserId(mimiUserId: string): string {
  let out = "";
  for (const char of mimiUserId.slice(1)) {
    if (KEPT.test(char)) out += char;
    else for (const byte of Buffer.from(char, "utf8")) out += `=${byte.toString(16).padStart(2, "0")}`;
  }
  return out;
}

/** The MIMI user ID a ghost's localpart (without the prefix) stands for, or undefined if it is no escape. */
export function unescapeUserId(escaped: string): string | undefined {
  const bytes: number[] = [];
  for (let i = 0; i < escaped.length; i++) {
    const char = escaped[i]!;
    if (char === "=") {
      const hex = escaped.slice(i + 1, i + 3);
      if (!/^[0-9a-f]{2}$/.test(hex)) return undefined;
      bytes.push(parseInt(hex, 16));
      i += 2;
    } else if (KEPT.test(char)) bytes.push(char.charCodeAt(0));
    else return undefined;
  }
  const decoded = Buffer.from(bytes).toString("utf8");
  // Only the one escaping maps back: a kept character written as an escape is not a ghost.
  if (Buffer.from(decoded, "utf8").length !== bytes.length || escapeUserId(`@${decoded}`) !== escaped)
    return undefined;
  return `@${decoded}`;
}

export function ghostUserId(mimiUserId: string, prefix: string, domain: string): string {
  return `@${prefix}${escapeUserId(mimiUserId)}:${domain}`;
}

/** The MIMI user a ghost of ours stands for; undefined for any other Matrix user. */
export function mimiUserOfGhost(matrixUserId: string, prefix: string, domain: string): string | undefined {
  const head = `@${prefix}`;
  const tail = `:${domain}`;
  if (!matrixUserId.startsWith(head) || !matrixUserId.endsWith(tail)) return undefined;
  return unescapeUserId(matrixUserId.slice(head.length, -tail.length));
}

/**
 * A MIMI room's portal alias: `#<prefix><escaped room ID>:<domain>`, the room ID escaped as a
 * user ID is (without its sigil), so `!r1:b.example` is `#_mimi_r1=3ab.example:<domain>`.
 */
export function portalAlias(mimiRoomId: string, prefix: string, domain: string): string {
  return `#${prefix}${escapeUserId(mimiRoomId)}:${domain}`;
}

/** The MIMI room ID a portal alias of ours names (not yet checked against the room ID grammar). */
export function mimiRoomOfAlias(alias: string, prefix: string, domain: string): string | undefined {
  const head = `#${prefix}`;
  const tail = `:${domain}`;
  if (!alias.startsWith(head) || !alias.endsWith(tail)) return undefined;
  const asUser = unescapeUserId(alias.slice(head.length, -tail.length));
  return asUser === undefined ? undefined : `!${asUser.slice(1)}`;
}
