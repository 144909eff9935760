import {
  decodeGroupState,
  decodeNode,
  decodeRatchetTree,
  encodeGroupState,
  encodeNode,
  encodeRatchetTree,
  type ClientState,
  type RatchetTree,
} from "../tsMls";
import { MlsError } from "../errors";
import { decodeWhole, fromBase64, toBase64 } from "./wire";

/**
 * A hosted client's group state is stored in two parts: its secrets and everything else but the
 * ratchet trees, which change with every message it sends or reads, and the ratchet trees (the
 * current epoch's and those of the past epochs it still reads messages of), which change only
 * with commits. At 1,000 members one tree is about 190 KB and ts-mls keeps four past ones; a
 * past tree is stored as the nodes in which it differs from the current one (a commit changes
 * one path), so the trees of five epochs cost little more than one.
 */
export interface EncodedState {
  /** base64 of ts-mls's group state encoding, with every ratchet tree emptied. */
  secrets: string;
  /** JSON of `StoredTrees`. */
  trees: string;
}

interface StoredTrees {
  /** base64 of the current ratchet tree (RFC 9420 §12.4.3.3 encoding). */
  current: string;
  /** Per past epoch: its tree's width and the nodes (base64, null for blank) unlike the current tree's. */
  past: { epoch: string; width: number; nodes: [number, string | null][] }[];
}

export function encodeSecrets(state: ClientState): string {
  // ts-mls's encoding needs a tree with a non-blank last node: one leaf stands in for each tree.
  const leaf = state.ratchetTree.find((node, index) => index % 2 === 0 && node !== undefined);
  const placeholder = leaf === undefined ? [] : [leaf];
  const historicalReceiverData = new Map(
    [...state.historicalReceiverData].map(([epoch, data]) => [epoch, { ...data, ratchetTree: placeholder }]),
  );
  return toBase64(encodeGroupState({ ...state, ratchetTree: placeholder, historicalReceiverData }));
}

export function encodeTrees(state: ClientState): string {
  const current = state.ratchetTree;
  const past: StoredTrees["past"] = [];
  for (const [epoch, data] of state.historicalReceiverData) {
    const nodes: [number, string | null][] = [];
    const tree = data.ratchetTree;
    for (let index = 0; index < tree.length; index++) {
      const node = tree[index];
      if (node !== current[index])
        nodes.push([index, node === undefined ? null : toBase64(encodeNode(node))]);
    }
    past.push({ epoch: epoch.toString(), width: tree.length, nodes });
  }
  const stored: StoredTrees = { current: toBase64(encodeRatchetTree(current)), past };
  return JSON.stringify(stored);
}

export function encodeState(state: ClientState): EncodedState {
  return { secrets: encodeSecrets(state), trees: encodeTrees(state) };
}

export function decodeState(encoded: EncodedState, config: ClientState["clientConfig"]): ClientState {
  const state = decodeWhole(decodeGroupState, fromBase64(encoded.secrets), "a stored group state");
  const stored = JSON.parse(encoded.trees) as StoredTrees;
  const current = decodeWhole(decodeRatchetTree, fromBase64(stored.current), "a stored ratchet tree");
  const historicalReceiverData = new Map(state.historicalReceiverData);
  const past = new Map(stored.past.map((entry) => [BigInt(entry.epoch), entry]));
  for (const [key, data] of state.historicalReceiverData) {
    const entry = past.get(key);
    if (entry === undefined) {
      throw new MlsError(
        "IO.MIMI_APPSERVICE.MLS_MALFORMED",
        "decode",
        `no stored ratchet tree for epoch ${key}`,
      );
    }
    const { width, nodes } = entry;
    const tree: RatchetTree = Array.from({ length: width }, (_, index) => current[index]);
    for (const [index, node] of nodes) {
      tree[index] =
        node === null ? undefined : decodeWhole(decodeNode, fromBase64(node), "a stored tree node");
    }
    historicalReceiverData.set(key, { ...data, ratchetTree: tree });
  }
  return { ...state, ratchetTree: current, historicalReceiverData, clientConfig: config };
}

/** A state stored whole (before the split), as earlier releases wrote it. */
export function decodeWholeState(text: string, config: ClientState["clientConfig"]): ClientState {
  return { ...decodeWhole(decodeGroupState, fromBase64(text), "a stored group state"), clientConfig: config };
}

/** Whether `next` has the very ratchet trees of `previous`, so that only its secrets need writing. */
export function sameTrees(previous: ClientState, next: ClientState): boolean {
  if (previous.ratchetTree !== next.ratchetTree) return false;
  if (previous.historicalReceiverData.size !== next.historicalReceiverData.size) return false;
  for (const [epoch, data] of next.historicalReceiverData) {
    if (previous.historicalReceiverData.get(epoch)?.ratchetTree !== data.ratchetTree) return false;
  }
  return true;
}
