/**
 * The bot's commands, in a local user's direct chat with it (their command room): parsing (pure)
 * and a handler whose effects go through injected dependencies, so both test without a
 * homeserver. The handler answers the text of the bot's notice; a failure worth waiting out
 * (`isTransient`) is thrown instead, and the bridge tries the command again later (every call
 * carries a transaction ID derived from the command's event, so a repeat makes nothing twice).
 */
import type { RoomsApi } from "../provider/roomsApiTypes";
import { allows, type PermissionLevel } from "./permissions";

export type BotCommand =
  | { kind: "help" }
  | { kind: "create"; name: string | undefined }
  | { kind: "invite"; room: string; user: string }
  | { kind: "rooms"; all: boolean }
  /** A known command with arguments it does not take. */
  | { kind: "usage"; command: string }
  | { kind: "unknown"; command: string };

interface CommandDoc {
  name: string;
  usage: string;
  what: string;
  level: PermissionLevel;
}

const COMMANDS: readonly CommandDoc[] = [
  { name: "help", usage: "help", what: "this list", level: "none" },
  {
    name: "create",
    usage: "create [name]",
    what: "create a MIMI room hosted here; the bot invites you to its room",
    level: "user",
  },
  {
    name: "invite",
    usage: "invite <MIMI room ID or its Matrix room ID> <MIMI user ID>",
    what: "invite a user of any MIMI provider, e.g. @bob:b.example, to a MIMI room you are in",
    level: "user",
  },
  {
    name: "rooms",
    usage: "rooms",
    what: "your MIMI rooms, with their hub and their Matrix room",
    level: "user",
  },
  {
    name: "rooms",
    usage: "rooms all",
    what: "every MIMI room this provider is in, with its member count (admins)",
    level: "admin",
  },
];

/** A command room's message body as a command (a leading `!` is optional); undefined when blank. */
export function parseCommand(body: string): BotCommand | undefined {
  const text = body.trim().replace(/^!/, "").trim();
  if (text === "") return undefined;
  const [word = "", ...args] = text.split(/\s+/);
  const command = word.toLowerCase();
  switch (command) {
    case "help":
      return { kind: "help" };
    case "create": {
      const name = text.slice(word.length).trim();
      return { kind: "create", name: name === "" ? undefined : name };
    }
    case "invite": {
      const [room, user] = args;
      if (args.length !== 2 || !room!.startsWith("!") || !/^@[^:]+:.+$/.test(user!)) {
        return { kind: "usage", command };
      }
      return { kind: "invite", room: room!, user: user! };
    }
    case "rooms":
      if (args.length === 0) return { kind: "rooms", all: false };
      if (args.length === 1 && args[0]!.toLowerCase() === "all") return { kind: "rooms", all: true };
      return { kind: "usage", command };
    default:
      return { kind: "unknown", command: word };
  }
}

/** The command list, as far as `level` may use it. */
export function helpText(level: PermissionLevel): string {
  const lines = COMMANDS.filter((c) => allows(level, c.level)).map((c) => `- ${c.usage}: ${c.what}`);
  return ["Commands (a leading ! is optional):", ...lines].join("\n");
}

/** The bot's answer to a user whose level is `none`. */
export const notAllowed = (matrixUserId: string) =>
  `${matrixUserId} is not allowed to use this MIMI bridge: nothing was done in MIMI. Ask the bridge's admin.`;

export const greeting = (level: PermissionLevel) =>
  `Hello! This is your command room for the MIMI bridge: send a command here.\n${helpText(level)}\n` +
  "You can also start a MIMI room by inviting the bot to any room, and invite users of other providers by inviting their ghosts.";

/** Who sent the command, and how to tell its effects apart. */
export interface CommandContext {
  /** The sender's Matrix user ID and MIMI user ID. */
  matrixUser: string;
  mimiUser: string;
  level: PermissionLevel;
  /** A transaction ID derived from the command's event, one per `purpose`. */
  txnId(purpose: string): string;
}

export interface BotCommandDeps {
  rooms: Pick<RoomsApi, "createRoom" | "send" | "invite" | "listRooms" | "roomInfo">;
  /** The portal (Matrix room ID) of a MIMI room for a local user: made, recorded and followed when missing. */
  openPortal(mimiRoomId: string, mimiUser: string, name: string | undefined): Promise<string>;
  /** The MIMI room a Matrix room is the portal of. */
  portalOf(matrixRoomId: string): Promise<string | undefined>;
  /** The portal (Matrix room ID) of a MIMI room. */
  portalFor(mimiRoomId: string): Promise<string | undefined>;
  /**
   * After a MIMI invite of `mimiUser`: when they are a local user and the MIMI room has a portal,
   * the bot invites their Matrix account to it (their join there joins the MIMI room). Answers the
   * portal, or undefined when there is nothing to do.
   */
  invitePortal(mimiRoomId: string, mimiUser: string): Promise<string | undefined>;
  /** The MIMI user a ghost stands for; undefined for other Matrix users. */
  mimiUserOfGhost(matrixUserId: string): string | undefined;
  isTransient(err: unknown): boolean;
}

export const matrixToLink = (matrixRoomId: string) =>
  `https://matrix.to/#/${encodeURIComponent(matrixRoomId)}`;

/** Runs a command for the sender; answers the bot's notice. */
export async function runCommand(
  command: BotCommand,
  ctx: CommandContext,
  deps: BotCommandDeps,
): Promise<string> {
  if (ctx.level === "none") return notAllowed(ctx.matrixUser);
  /** A refusal is answered with its message as it is; a failure worth waiting out is thrown. */
  const refused = (what: string) => (err: unknown) => {
    if (deps.isTransient(err)) throw err;
    return `${what}: ${(err as Error).message}`;
  };
  switch (command.kind) {
    case "help":
      return helpText(ctx.level);
    case "usage": {
      const usages = COMMANDS.filter((c) => c.name === command.command && allows(ctx.level, c.level));
      return `Usage: ${usages.map((c) => c.usage).join(" | ")}`;
    }
    case "unknown":
      return `Unknown command "${command.command}". Send help for the list of commands.`;
    case "create":
      return create(command.name, ctx, deps).catch(refused("create did not finish"));
    case "invite":
      return invite(command.room, command.user, ctx, deps).catch(
        refused(`${command.user} was not invited to ${command.room}`),
      );
    case "rooms":
      if (command.all && !allows(ctx.level, "admin")) return "rooms all is for the bridge's admins.";
      return command.all ? allRooms(deps) : ownRooms(ctx, deps);
  }
}

async function create(name: string | undefined, ctx: CommandContext, deps: BotCommandDeps): Promise<string> {
  const { roomId } = await deps.rooms.createRoom({ creator: ctx.mimiUser, txnId: ctx.txnId("create") });
  if (name !== undefined) {
    await deps.rooms.send({
      roomId,
      sender: ctx.mimiUser,
      type: "m.room.name",
      stateKey: "",
      content: { name },
      txnId: ctx.txnId("create-name"),
    });
  }
  const portal = await deps.openPortal(roomId, ctx.mimiUser, name);
  return (
    `Created the MIMI room ${name === undefined ? "" : `"${name}" `}${roomId}. ` +
    `Its Matrix room is ${portal} (${matrixToLink(portal)}): accept the bot's invite to it.`
  );
}

async function invite(
  room: string,
  user: string,
  ctx: CommandContext,
  deps: BotCommandDeps,
): Promise<string> {
  const mimiRoomId = (await deps.portalOf(room)) ?? room;
  const target = deps.mimiUserOfGhost(user) ?? user;
  await deps.rooms.invite({
    roomId: mimiRoomId,
    sender: ctx.mimiUser,
    target,
    txnId: ctx.txnId("invite"),
  });
  const invited = `Invited ${target} to the MIMI room ${mimiRoomId}.`;
  try {
    const portal = await deps.invitePortal(mimiRoomId, target);
    return portal === undefined ? invited : `${invited} The bot invited them to its Matrix room ${portal}.`;
  } catch (err) {
    if (deps.isTransient(err)) throw err;
    return `${invited} The bot could not invite them to its Matrix room: ${(err as Error).message}`;
  }
}

function nameOf(info: ReturnType<RoomsApi["roomInfo"]>): string | undefined {
  const name = info?.state.find((e) => e.type === "m.room.name" && e.stateKey === "")?.content.name;
  return typeof name === "string" && name !== "" ? name : undefined;
}

async function ownRooms(ctx: CommandContext, deps: BotCommandDeps): Promise<string> {
  const lines: string[] = [];
  for (const roomId of deps.rooms.listRooms()) {
    const info = deps.rooms.roomInfo(roomId);
    if (info?.participation[ctx.mimiUser] !== "join") continue;
    const name = nameOf(info);
    const portal = await deps.portalFor(roomId);
    lines.push(
      `- ${name === undefined ? "" : `"${name}" `}${roomId}, hub ${info.hubServer}, ` +
        (portal === undefined ? "no Matrix room" : `Matrix room ${portal}`),
    );
  }
  if (lines.length === 0) return "You are in no MIMI room. Send create [name] to make one.";
  return [`Your MIMI rooms (${lines.length}):`, ...lines].join("\n");
}

async function allRooms(deps: BotCommandDeps): Promise<string> {
  const lines: string[] = [];
  for (const roomId of deps.rooms.listRooms()) {
    const info = deps.rooms.roomInfo(roomId);
    if (info === undefined) continue;
    const members = Object.values(info.participation).filter((p) => p === "join").length;
    const name = nameOf(info);
    lines.push(
      `- ${name === undefined ? "" : `"${name}" `}${roomId}, hub ${info.hubServer} (${info.role}), ` +
        `${members} member${members === 1 ? "" : "s"}`,
    );
  }
  if (lines.length === 0) return "This provider is in no MIMI room.";
  return [`Every MIMI room of this provider (${lines.length}):`, ...lines].join("\n");
}
