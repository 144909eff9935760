/** JSON values as they appear inside events. */
export type JsonValue = null | boolean | number | string | JsonValue[] | JsonObject;
export interface JsonObject {
  [key: string]: JsonValue;
}

/** `signatures`: server name -> key ID -> unpadded base64 signature. */
export type Signatures = Record<string, Record<string, string>>;

/**
 * A limited event (Linearized PDU, LM-04 §Linearized PDU): what an origin
 * server sends to the hub. It has no `auth_events`, `prev_events` or top-level
 * hash; it names the hub it is meant for and carries `hashes.lpdu`.
 */
export interface LimitedEvent {
  room_id: string;
  type: string;
  state_key?: string;
  sender: string;
  origin_server_ts: number;
  hub_server: string;
  content: JsonObject;
  hashes: { lpdu: { sha256: string } };
  signatures: Signatures;
}

/** A fully-formed event (LM-04 §Events), as sequenced and signed by the hub. */
export interface FullyFormedEvent {
  room_id: string;
  type: string;
  state_key?: string;
  sender: string;
  origin_server_ts: number;
  hub_server: string;
  content: JsonObject;
  hashes: { sha256: string; lpdu: { sha256: string } };
  signatures: Signatures;
  auth_events: string[];
  prev_events: string[];
}

/** The LPDU fields an origin fills in before hashing and signing. */
export interface LimitedEventTemplate {
  room_id: string;
  type: string;
  state_key?: string;
  sender: string;
  origin_server_ts: number;
  hub_server: string;
  content: JsonObject;
}
