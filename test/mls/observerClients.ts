/**
 * Real ts-mls clients for the observer's tests: they create a group, commit as PublicMessage,
 * join from Welcome or by external commit, and publish a GroupInfo for every epoch they begin.
 */
import type {
  CiphersuiteImpl,
  ClientState,
  CreateCommitResult,
  Credential,
  Extension,
  GroupInfo,
  KeyPackage,
  Lifetime,
  MLSMessage,
  PrivateKeyPackage,
  Proposal,
  PublicMessage,
} from "ts-mls";
import {
  bytesToBase64,
  createCommit,
  createGroup,
  createGroupInfoWithExternalPub,
  createProposal,
  decodeMlsMessage,
  defaultCapabilities,
  defaultLifetime,
  emptyPskIndex,
  encodeMlsMessage,
  generateKeyPackage,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
  joinGroup,
  joinGroupExternal,
  processPublicMessage,
} from "ts-mls";
import { signWithLabel } from "ts-mls/crypto/signature.js";
import { encodeGroupContext } from "ts-mls/groupContext.js";
import type { LeafNode } from "ts-mls";
import { encodeLeafNodeTBS } from "ts-mls/leafNode.js";
import { encodeRatchetTree } from "ts-mls/ratchetTree.js";
import { SUPPORTED_CIPHERSUITE } from "../../src/mls/observer";
import { decodeExactly } from "../../src/mls/observer/wire";

let suitePromise: Promise<CiphersuiteImpl> | undefined;
export function suite(): Promise<CiphersuiteImpl> {
  suitePromise ??= getCiphersuiteImpl(getCiphersuiteFromName(SUPPORTED_CIPHERSUITE));
  return suitePromise;
}

export const text = (s: string): Uint8Array => new TextEncoder().encode(s);

export interface ClientKeys {
  name: string;
  publicPackage: KeyPackage;
  privatePackage: PrivateKeyPackage;
}

/** A client known in the group by `name`, whose credential presents `@name:name.example`. */
export async function newClient(name: string, lifetime: Lifetime = defaultLifetime): Promise<ClientKeys> {
  const credential: Credential = { credentialType: "basic", identity: text(`@${name}:${name}.example`) };
  const { publicPackage, privatePackage } = await generateKeyPackage(
    credential,
    defaultCapabilities(),
    lifetime,
    [],
    await suite(),
  );
  return { name, publicPackage, privatePackage };
}

/** A client known in the group by `name`, whose credential presents the MIMI user ID `user`. */
export async function clientFor(name: string, user: string): Promise<ClientKeys> {
  const { publicPackage, privatePackage } = await generateKeyPackage(
    { credentialType: "basic", identity: text(user) },
    defaultCapabilities(),
    defaultLifetime,
    [],
    await suite(),
  );
  return { name, publicPackage, privatePackage };
}

/** The Add proposal of `client`'s KeyPackage. */
export const addOf = (client: ClientKeys): Proposal => ({
  proposalType: "add",
  add: { keyPackage: client.publicPackage },
});

export function encodeGroupInfoMessage(groupInfo: GroupInfo): Uint8Array {
  return encodeMlsMessage({ version: "mls10", wireformat: "mls_group_info", groupInfo });
}

export function publicMessageOf(message: MLSMessage): PublicMessage {
  if (message.wireformat !== "mls_public_message") throw new Error("expected a PublicMessage");
  return message.publicMessage;
}

/** A commit as the hub receives it: the commit and the committer's GroupInfo for the new epoch. */
export interface PublishedCommit {
  commit: Uint8Array;
  groupInfo: Uint8Array;
}

/** A group of real clients, each with its own ts-mls state, kept in step by processing every commit. */
export class ClientGroup {
  readonly members = new Map<string, ClientState>();

  private constructor(readonly groupId: Uint8Array) {}

  static async create(
    creator: ClientKeys,
    extensions: Extension[] = [],
    groupId = text("!room:hub.example"),
  ) {
    const group = new ClientGroup(groupId);
    const state = await createGroup(
      groupId,
      creator.publicPackage,
      creator.privatePackage,
      extensions,
      await suite(),
    );
    group.members.set(creator.name, state);
    return group;
  }

  state(name: string): ClientState {
    const state = this.members.get(name);
    if (state === undefined) throw new Error(`${name} is not a member`);
    return state;
  }

  /** The GroupInfo a member publishes for its current epoch, with external_pub. */
  async groupInfo(name: string): Promise<Uint8Array> {
    return encodeGroupInfoMessage(await createGroupInfoWithExternalPub(this.state(name), [], await suite()));
  }

  ratchetTree(name: string): Uint8Array {
    return encodeRatchetTree(this.state(name).ratchetTree);
  }

  /** Every member's GroupContext, encoded. */
  groupContexts(): Map<string, Uint8Array> {
    return new Map([...this.members].map(([name, state]) => [name, encodeGroupContext(state.groupContext)]));
  }

  /**
   * `committer` commits the given proposals by value (and every proposal it has received by
   * reference) as a PublicMessage; new members join from the Welcome; the others process it.
   */
  async commit(
    committer: string,
    proposals: Proposal[] = [],
    joining: ClientKeys[] = [],
    options: { ratchetTreeExtension?: boolean } = {},
  ): Promise<PublishedCommit> {
    const cs = await suite();
    const result = await createCommit(
      { state: this.state(committer), cipherSuite: cs },
      { extraProposals: proposals, wireAsPublicMessage: true, ratchetTreeExtension: true },
    );
    const published: PublishedCommit = {
      commit: encodeMlsMessage(result.commit),
      groupInfo: encodeGroupInfoMessage(
        await createGroupInfoWithExternalPub(
          result.newState,
          options.ratchetTreeExtension === true
            ? [
                {
                  extensionType: "ratchet_tree",
                  extensionData: encodeRatchetTree(result.newState.ratchetTree),
                },
              ]
            : [],
          cs,
        ),
      ),
    };
    await this.processByOthers(committer, result.commit);
    this.members.set(committer, result.newState);
    for (const joiner of joining) {
      if (result.welcome === undefined) throw new Error("no Welcome");
      this.members.set(
        joiner.name,
        await joinGroup(
          result.welcome,
          joiner.publicPackage,
          joiner.privatePackage,
          emptyPskIndex,
          cs,
          result.newState.ratchetTree,
        ),
      );
    }
    return published;
  }

  /** A commit `committer` makes but that nobody applies (ts-mls states are left as they were). */
  async draftCommit(
    committer: string,
    proposals: Proposal[] = [],
  ): Promise<PublishedCommit & { result: CreateCommitResult }> {
    const cs = await suite();
    const result = await createCommit(
      { state: this.state(committer), cipherSuite: cs },
      { extraProposals: proposals, wireAsPublicMessage: true, ratchetTreeExtension: true },
    );
    return {
      commit: encodeMlsMessage(result.commit),
      groupInfo: encodeGroupInfoMessage(await createGroupInfoWithExternalPub(result.newState, [], cs)),
      result,
    };
  }

  /** A member sends a proposal alone as PublicMessage; the others remember it. */
  async propose(sender: string, proposal: Proposal): Promise<Uint8Array> {
    const cs = await suite();
    const { newState, message } = await createProposal(this.state(sender), true, proposal, cs);
    this.members.set(sender, newState);
    await this.processByOthers(sender, message);
    return encodeMlsMessage(message);
  }

  /**
   * An Update proposal for `name`'s leaf with a fresh encryption key (ts-mls has no helper for it);
   * the member's state gets the new private key, as if ts-mls had made the Update itself.
   */
  async updateProposal(name: string): Promise<Proposal> {
    const cs = await suite();
    const state = this.state(name);
    const leafIndex = state.privatePath.leafIndex;
    const node = state.ratchetTree[leafIndex * 2];
    if (node?.nodeType !== "leaf") throw new Error("no leaf");
    const keys = await cs.hpke.generateKeyPair();
    const { signature: _old, ...rest } = node.leaf;
    const tbs = {
      ...rest,
      leafNodeSource: "update" as const,
      hpkePublicKey: await cs.hpke.exportPublicKey(keys.publicKey),
      extensions: node.leaf.extensions,
      groupId: state.groupContext.groupId,
      leafIndex,
    };
    const signature = await signWithLabel(
      state.signaturePrivateKey,
      "LeafNodeTBS",
      encodeLeafNodeTBS(tbs),
      cs.signature,
    );
    const { groupId: _g, leafIndex: _l, ...leaf } = { ...tbs, signature };
    state.privatePath.privateKeys[leafIndex * 2] = await cs.hpke.exportPrivateKey(keys.privateKey);
    return { proposalType: "update", update: { leafNode: leaf as LeafNode & { leafNodeSource: "update" } } };
  }

  /** An external commit by `joiner` from `publisher`'s GroupInfo that nobody applies. */
  async draftExternalJoin(
    joiner: ClientKeys,
    publisher: string,
  ): Promise<PublishedCommit & { message: MLSMessage; newState: ClientState }> {
    const cs = await suite();
    const publisherState = this.state(publisher);
    const groupInfo = await createGroupInfoWithExternalPub(publisherState, [], cs);
    const { publicMessage, newState } = await joinGroupExternal(
      groupInfo,
      joiner.publicPackage,
      joiner.privatePackage,
      false,
      cs,
      publisherState.ratchetTree,
    );
    const message: MLSMessage = { version: "mls10", wireformat: "mls_public_message", publicMessage };
    return {
      commit: encodeMlsMessage(message),
      groupInfo: encodeGroupInfoMessage(await createGroupInfoWithExternalPub(newState, [], cs)),
      message,
      newState,
    };
  }

  /** `joiner` joins by external commit from `publisher`'s GroupInfo, then publishes its own. */
  async joinExternally(joiner: ClientKeys, publisher: string): Promise<PublishedCommit> {
    const { commit, groupInfo, message, newState } = await this.draftExternalJoin(joiner, publisher);
    await this.processByOthers(joiner.name, message);
    this.members.set(joiner.name, newState);
    return { commit, groupInfo };
  }

  /** Every member receives a proposal from outside the group (the hub as external sender). */
  async receiveProposal(bytes: Uint8Array): Promise<void> {
    const cs = await suite();
    const message = decodeExactly(decodeMlsMessage, bytes, "MLSMessage");
    for (const [name, state] of [...this.members]) {
      const { newState } = await processPublicMessage(state, publicMessageOf(message), emptyPskIndex, cs);
      this.members.set(name, newState);
    }
  }

  private async processByOthers(sender: string, message: MLSMessage): Promise<void> {
    const cs = await suite();
    const removed = removedLeaves(message);
    for (const [name, state] of [...this.members]) {
      if (name === sender) continue;
      // A member removed by the commit stops here (ts-mls 1.6.4 cannot process the commit that
      // removes it when a new member takes its leaf in the same commit).
      if (removed(state).has(state.privatePath.leafIndex)) {
        this.members.delete(name);
        continue;
      }
      const { newState } = await processPublicMessage(state, publicMessageOf(message), emptyPskIndex, cs);
      this.members.set(name, newState);
    }
  }
}

/** The leaves a commit removes, by value or by reference to a proposal the member holds. */
function removedLeaves(message: MLSMessage): (state: ClientState) => Set<number> {
  const content = publicMessageOf(message).content;
  return (state) => {
    const removed = new Set<number>();
    if (content.contentType !== "commit") return removed;
    for (const entry of content.commit.proposals) {
      const proposal =
        entry.proposalOrRefType === "proposal"
          ? entry.proposal
          : state.unappliedProposals[bytesToBase64(entry.reference)]?.proposal;
      if (proposal?.proposalType === "remove") removed.add(proposal.remove.removed);
    }
    return removed;
  };
}
