/**
 * What a message's content becomes on the other side (docs/protocol.md §13): Matrix
 * `m.room.message` content is carried inside MLS as it is, but only the parts that map (text,
 * notices, emotes, their HTML, replies, edits, threads), and every event ID it refers to is the
 * other side's ID of the same message: Matrix event IDs in a portal, MIMI event IDs (of the
 * `m.room.encrypted` events) in the MIMI room. Pure: the caller looks the IDs up first.
 */
import type { JsonObject } from "../events/types";

/** Message types of m.room.message that map as they are (the body and its formatting). */
export const TEXT_MSGTYPES: ReadonlySet<string> = new Set(["m.text", "m.notice", "m.emote"]);
const HTML_FORMAT = "org.matrix.custom.html";

export type Mapped = { ok: JsonObject } | { refused: string };

const isObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null && !Array.isArray(value);

/** The event IDs a message's content refers to (the edited message, the replied-to one, the thread root). */
export function referencedEventIds(content: Record<string, unknown>): string[] {
  const relates = content["m.relates_to"];
  if (!isObject(relates)) return [];
  const ids: string[] = [];
  if (typeof relates.event_id === "string") ids.push(relates.event_id);
  const reply = relates["m.in_reply_to"];
  if (isObject(reply) && typeof reply.event_id === "string") ids.push(reply.event_id);
  return ids;
}

/** A text body, with its HTML form when it has one; undefined when it is not a text message. */
function textBody(content: Record<string, unknown>): JsonObject | undefined {
  if (typeof content.msgtype !== "string" || !TEXT_MSGTYPES.has(content.msgtype)) return undefined;
  const body: JsonObject = {
    msgtype: content.msgtype,
    body: typeof content.body === "string" ? content.body : "",
  };
  if (content.format === HTML_FORMAT && typeof content.formatted_body === "string") {
    body.format = HTML_FORMAT;
    body.formatted_body = content.formatted_body;
  }
  return body;
}

/**
 * Maps a message's content across, with `ids` from this side's event IDs to the other side's.
 * An edit of a message the other side does not have is refused; a reply to one, or a thread
 * whose root it lacks, goes as a plain message (its body keeps any quoted fallback).
 */
export function mapMessageContent(
  content: Record<string, unknown>,
  ids: ReadonlyMap<string, string>,
): Mapped {
  const mapped = textBody(content);
  if (mapped === undefined) {
    return {
      refused: `messages of type ${JSON.stringify(content.msgtype ?? null)} are not bridged (only text, notices and emotes)`,
    };
  }
  const relates = content["m.relates_to"];
  if (!isObject(relates)) return { ok: mapped };
  const target = typeof relates.event_id === "string" ? ids.get(relates.event_id) : undefined;
  if (relates.rel_type === "m.replace") {
    const replacement = isObject(content["m.new_content"]) ? textBody(content["m.new_content"]) : undefined;
    if (replacement === undefined) return { refused: "an edit without a text m.new_content is not bridged" };
    if (target === undefined) return { refused: "the edited message is not in the other room" };
    mapped["m.new_content"] = replacement;
    mapped["m.relates_to"] = { rel_type: "m.replace", event_id: target };
    return { ok: mapped };
  }
  const reply = relates["m.in_reply_to"];
  const replyTo = isObject(reply) && typeof reply.event_id === "string" ? ids.get(reply.event_id) : undefined;
  const relation: JsonObject = {};
  if (relates.rel_type === "m.thread" && target !== undefined) {
    relation.rel_type = "m.thread";
    relation.event_id = target;
    if (relates.is_falling_back === true) relation.is_falling_back = true;
  }
  if (replyTo !== undefined) relation["m.in_reply_to"] = { event_id: replyTo };
  if (Object.keys(relation).length > 0) mapped["m.relates_to"] = relation;
  return { ok: mapped };
}
