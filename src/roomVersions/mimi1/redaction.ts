import type { JsonObject } from "../../events/types";
import type { ContentRedactor } from "../types";
import { EventType } from "./eventTypes";

/**
 * The content fields each type keeps under redaction (LM-04 §Event Redactions,
 * with this version's types). Commits keep what rebuilds the MLS group; an
 * encrypted event keeps its routing but not the user's ciphertext.
 */
const KEPT_CONTENT_FIELDS: Readonly<Record<string, readonly string[] | "all">> = {
  [EventType.Create]: "all",
  [EventType.User]: ["participation"],
  [EventType.JoinRules]: ["rule"],
  [EventType.Roles]: ["roles"],
  [EventType.MlsCommit]: ["message", "public_group_state", "prev_commit_event_id"],
  [EventType.Encrypted]: ["algorithm", "commit_event_id"],
  [EventType.MlsProposal]: ["message"],
};

/** Returns a new object; `content` is never modified. */
export const redactContent: ContentRedactor = (type: string, content: JsonObject): JsonObject => {
  const kept = Object.hasOwn(KEPT_CONTENT_FIELDS, type) ? KEPT_CONTENT_FIELDS[type] : [];
  if (kept === "all") return structuredClone(content);
  const redacted: JsonObject = {};
  for (const name of kept) {
    if (Object.hasOwn(content, name)) redacted[name] = structuredClone(content[name]);
  }
  return redacted;
};
