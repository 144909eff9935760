/**
 * The hub's MLS observer: how long validating one commit takes in groups of 10, 100 and 1,000
 * members. Each group is built cheaply: its creator adds every other member in one commit (the
 * members never join; only the creator keeps a ts-mls state), then commits again and again while
 * the observer validates each commit with the GroupInfo the creator publishes for it.
 * BENCH_MLS_SIZES (default 10,100,1000) and BENCH_MLS_COMMITS (default 9) set the sizes.
 */
import type { CiphersuiteImpl, ClientState, Extension, Proposal } from "ts-mls";
import {
  createCommit,
  createGroup,
  createGroupInfoWithExternalPub,
  defaultCapabilities,
  defaultLifetime,
  encodeMlsMessage,
  generateKeyPackage,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
} from "ts-mls";
import { encodeRatchetTree } from "ts-mls/ratchetTree.js";
import { treeHashRoot } from "ts-mls/treeHash.js";
import { GroupObserver, SUPPORTED_CIPHERSUITE } from "../src/mls/observer";
import { fmt, median, percentile } from "./util";

export interface ObserverCommitFigures {
  members: number;
  /** What the measured commits are. */
  kind: string;
  commits: number;
  medianMs: number;
  p99Ms: number;
}

export interface ObserverSizeFigures {
  members: number;
  /** The observer started from the creator's GroupInfo and tree (all checks a joiner makes). */
  fromGroupInfoMs: number;
  /** Validating the one commit that added every other member. */
  bulkAddMs: number;
  /** `GroupObserver.decode` of the encoded state (the tree hashes are rebuilt). */
  decodeMs: number;
  encodedBytes: number;
  /** ts-mls's `treeHashRoot` on a copy of the tree (new node objects, so none of its cache applies). */
  stockTreeHashMs: number;
  rows: ObserverCommitFigures[];
}

const encoder = new TextEncoder();

function identity(name: string): { credentialType: "basic"; identity: Uint8Array } {
  return { credentialType: "basic", identity: encoder.encode(name) };
}

async function groupInfoOf(
  state: ClientState,
  cs: CiphersuiteImpl,
  extensions: Extension[] = [],
): Promise<Uint8Array> {
  const groupInfo = await createGroupInfoWithExternalPub(state, extensions, cs);
  return encodeMlsMessage({ version: "mls10", wireformat: "mls_group_info", groupInfo });
}

function timed<T>(run: () => T): [T, number] {
  const start = performance.now();
  const result = run();
  return [result, performance.now() - start];
}

async function sizeFigures(
  members: number,
  commits: number,
  cs: CiphersuiteImpl,
): Promise<ObserverSizeFigures> {
  const creator = await generateKeyPackage(
    identity("@creator:hub.example"),
    defaultCapabilities(),
    defaultLifetime,
    [],
    cs,
  );
  let state = await createGroup(
    encoder.encode(`!bench${members}:hub.example`),
    creator.publicPackage,
    creator.privatePackage,
    [],
    cs,
  );
  const adds: Proposal[] = [];
  for (let i = 1; i < members; i++) {
    const { publicPackage } = await generateKeyPackage(
      identity(`@user${i}:b.example`),
      defaultCapabilities(),
      defaultLifetime,
      [],
      cs,
    );
    adds.push({ proposalType: "add", add: { keyPackage: publicPackage } });
  }
  let observer = GroupObserver.fromGroupInfo(
    await groupInfoOf(state, cs),
    encodeRatchetTree(state.ratchetTree),
  );

  const commitOnce = async (proposals: Proposal[], withTree: boolean): Promise<number> => {
    const result = await createCommit(
      { state, cipherSuite: cs },
      { extraProposals: proposals, wireAsPublicMessage: true },
    );
    state = result.newState;
    const extensions: Extension[] = withTree
      ? [{ extensionType: "ratchet_tree", extensionData: encodeRatchetTree(state.ratchetTree) }]
      : [];
    const commit = encodeMlsMessage(result.commit);
    const groupInfo = await groupInfoOf(state, cs, extensions);
    const [validated, ms] = timed(() => observer.validateCommit(commit, groupInfo));
    observer = validated.observer;
    return ms;
  };

  const bulkAddMs = await commitOnce(adds, false);
  const [, fromGroupInfoMs] = timed(() =>
    GroupObserver.fromGroupInfo(observer.groupInfo(), observer.ratchetTree()),
  );
  const encoded = observer.encode();
  const [, decodeMs] = timed(() => GroupObserver.decode(encoded));
  const fresh = structuredClone(state.ratchetTree);
  const stockStart = performance.now();
  await treeHashRoot(fresh, cs.hash);
  const stockTreeHashMs = performance.now() - stockStart;

  const rows: ObserverCommitFigures[] = [];
  const measure = async (kind: string, next: () => Promise<number>): Promise<void> => {
    const samples: number[] = [];
    for (let i = 0; i < commits; i++) samples.push(await next());
    const sorted = [...samples].sort((a, b) => a - b);
    rows.push({ members, kind, commits, medianMs: median(samples), p99Ms: percentile(sorted, 99) });
  };
  await measure("empty commit (UpdatePath)", () => commitOnce([], false));
  await measure("empty commit, ratchet tree in the GroupInfo", () => commitOnce([], true));
  let removable = members - 1;
  await measure("Remove + Add + UpdatePath", async () => {
    const { publicPackage } = await generateKeyPackage(
      identity(`@late${removable}:c.example`),
      defaultCapabilities(),
      defaultLifetime,
      [],
      cs,
    );
    return commitOnce(
      [
        { proposalType: "remove", remove: { removed: removable-- } },
        { proposalType: "add", add: { keyPackage: publicPackage } },
      ],
      false,
    );
  });
  return {
    members,
    fromGroupInfoMs,
    bulkAddMs,
    decodeMs,
    encodedBytes: encoded.length,
    stockTreeHashMs,
    rows,
  };
}

/** The figures for each group size. */
export async function observerFigures(): Promise<ObserverSizeFigures[]> {
  const cs = await getCiphersuiteImpl(getCiphersuiteFromName(SUPPORTED_CIPHERSUITE));
  const sizes = (process.env.BENCH_MLS_SIZES ?? "10,100,1000").split(",").map(Number);
  const commits = Number(process.env.BENCH_MLS_COMMITS ?? 9);
  const figures: ObserverSizeFigures[] = [];
  for (const members of sizes) figures.push(await sizeFigures(members, commits, cs));
  return figures;
}

export function formatObserverFigures(figures: ObserverSizeFigures[]): string[] {
  const lines = ["", "== Hub MLS observer: validating one PublicMessage commit (no member secrets) =="];
  for (const size of figures) {
    lines.push(
      `${fmt(size.members)} members: start from GroupInfo ${fmt(size.fromGroupInfoMs, 1)} ms, ` +
        `bulk Add commit ${fmt(size.bulkAddMs, 1)} ms, decode ${fmt(size.decodeMs, 1)} ms (${fmt(size.encodedBytes)} bytes), ` +
        `full tree hash from scratch ${fmt(size.stockTreeHashMs, 1)} ms`,
    );
    for (const row of size.rows) {
      lines.push(
        `  ${row.kind.padEnd(45)} median ${fmt(row.medianMs, 2).padStart(6)} ms  p99 ${fmt(row.p99Ms, 2).padStart(6)} ms  (${row.commits} commits)`,
      );
    }
  }
  return lines;
}

export async function mlsSection(): Promise<void> {
  for (const line of formatObserverFigures(await observerFigures())) console.log(line);
}
