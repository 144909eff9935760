import type { Extension } from "ts-mls";
import { decodeMlsMessage, proposeExternal } from "ts-mls";
import { GroupObserver } from "../../src/mls/observer";
import type { CommitChange } from "../../src/mls/observer";
import type { ClientKeys, PublishedCommit } from "./observerClients";
import { ClientGroup, newClient, suite, text } from "./observerClients";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const names = (changes: { identity: Uint8Array }[]) =>
  changes.map((c) => new TextDecoder().decode(c.identity));

/** RFC 9420 §12.1.8.1 `ExternalSender external_senders<V>` with one basic-credential sender, built by hand. */
function externalSendersExtension(signatureKey: Uint8Array, identity: Uint8Array): Extension {
  const credential = Buffer.concat([Buffer.from([0x00, 0x01, identity.length]), identity]);
  const sender = Buffer.concat([Buffer.from([signatureKey.length]), signatureKey, credential]);
  return {
    extensionType: "external_senders",
    extensionData: Buffer.concat([Buffer.from([sender.length]), sender]),
  };
}

describe("the observer follows a group of real clients commit by commit", () => {
  let group: ClientGroup;
  let observer: GroupObserver;
  const clients: Record<string, ClientKeys> = {};
  let hubKeys: { signKey: Uint8Array; publicKey: Uint8Array };

  /** The hub's step: validate, then check the observer's GroupContext equals every member's. */
  function accept(published: PublishedCommit): CommitChange {
    const { change, observer: next } = observer.validateCommit(published.commit, published.groupInfo);
    observer = next;
    const contexts = group.groupContexts();
    expect(contexts.size).toBeGreaterThan(0);
    for (const [member, context] of contexts) {
      expect([member, hex(observer.groupContext())]).toEqual([member, hex(context)]);
    }
    expect(hex(change.groupContext)).toBe(hex(observer.groupContext()));
    // A joiner's checks of the published GroupInfo and tree (parent hashes, unmerged leaves, every
    // leaf) pass on the tree of every epoch, and give the same state.
    const restarted = GroupObserver.fromGroupInfo(published.groupInfo, observer.ratchetTree());
    expect(hex(restarted.groupContext())).toBe(hex(observer.groupContext()));
    return change;
  }

  beforeAll(async () => {
    for (const name of ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]) {
      clients[name] = await newClient(name);
    }
    hubKeys = await (await suite()).signature.keygen();
    group = await ClientGroup.create(clients.alice, [
      externalSendersExtension(hubKeys.publicKey, text("hub.example")),
    ]);
    observer = GroupObserver.fromGroupInfo(await group.groupInfo("alice"), group.ratchetTree("alice"));
  });

  const add = (name: string) => ({
    proposalType: "add" as const,
    add: { keyPackage: clients[name].publicPackage },
  });
  const remove = (leaf: number) => ({ proposalType: "remove" as const, remove: { removed: leaf } });
  const leafOf = (name: string) => group.state(name).privatePath.leafIndex;

  it("starts at epoch 0 with the creator's GroupContext", () => {
    expect(observer.epoch).toBe(0n);
    expect(hex(observer.groupContext())).toBe(hex(group.groupContexts().get("alice")!));
  });

  it("1. an Add without a path", async () => {
    const change = accept(await group.commit("alice", [add("bob")], [clients.bob]));
    expect(change.epoch).toBe(1n);
    expect(names(change.added)).toEqual(["@bob:bob.example"]);
    expect(change.committer.leafIndex).toBe(0);
  });

  it("2. two Adds at once", async () => {
    const change = accept(
      await group.commit("alice", [add("carol"), add("dave")], [clients.carol, clients.dave]),
    );
    expect(change.added.map((a) => a.leafIndex)).toEqual([2, 3]);
  });

  it("3. an empty commit (UpdatePath only)", async () => {
    const change = accept(await group.commit("bob"));
    expect(change.committer.leafIndex).toBe(1);
    expect(change.added).toEqual([]);
  });

  it("4. an Update proposal sent alone, committed by reference", async () => {
    const proposal = await group.updateProposal("carol");
    const received = observer.validateProposal(await group.propose("carol", proposal));
    observer = received.observer;
    expect(received.proposal).toMatchObject({ type: "update", sender: { kind: "member", leafIndex: 2 } });
    const change = accept(await group.commit("bob"));
    expect(change.updated.map((u) => u.leafIndex)).toEqual([2]);
    expect(change.coveredProposals.map(hex)).toEqual([hex(received.proposal.reference)]);
  });

  it("5. a Remove", async () => {
    const change = accept(await group.commit("alice", [remove(leafOf("dave"))]));
    expect(names(change.removed)).toEqual(["@dave:dave.example"]);
  });

  it("6. a GroupContextExtensions commit (with the path RFC 9420 §12.4 requires)", async () => {
    const extensions: Extension[] = [
      externalSendersExtension(hubKeys.publicKey, text("hub.example")),
      { extensionType: "required_capabilities", extensionData: Uint8Array.of(0, 0, 2, 0, 1) },
    ];
    const change = accept(
      await group.commit("carol", [
        { proposalType: "group_context_extensions", groupContextExtensions: { extensions } },
      ]),
    );
    expect(change.extensionsChanged).toBe(true);
  });

  it("7. an external join", async () => {
    const change = accept(await group.joinExternally(clients.erin, "bob"));
    expect(change.committer).toMatchObject({ external: true, leafIndex: 3 });
    expect(names(change.added)).toEqual(["@erin:erin.example"]);
  });

  it("8. the new member's own empty commit", async () => {
    accept(await group.commit("erin"));
  });

  it("9. a Remove and two Adds in one commit (a blank leaf refilled, the tree extended)", async () => {
    const change = accept(
      await group.commit(
        "carol",
        [remove(leafOf("bob")), add("frank"), add("grace")],
        [clients.frank, clients.grace],
      ),
    );
    expect(change.added.map((a) => a.leafIndex)).toEqual([1, 4]);
  });

  it("10. an Add while unmerged leaves exist, with the ratchet tree in the GroupInfo", async () => {
    accept(await group.commit("alice", [add("heidi")], [clients.heidi], { ratchetTreeExtension: true }));
  });

  it("11–14. empty commits by several members", async () => {
    for (const member of ["heidi", "frank", "grace", "alice"]) accept(await group.commit(member));
  });

  it("15. a Remove sent by the hub as external sender, committed by reference", async () => {
    const cs = await suite();
    const groupInfo = decodeMlsMessage(observer.groupInfo(), 0)![0];
    if (groupInfo.wireformat !== "mls_group_info") throw new Error("not a GroupInfo");
    const message = await proposeExternal(
      groupInfo.groupInfo,
      remove(leafOf("grace")),
      hubKeys.publicKey,
      hubKeys.signKey,
      cs,
    );
    const { encodeMlsMessage } = await import("ts-mls");
    const bytes = encodeMlsMessage(message);
    const received = observer.validateProposal(bytes);
    observer = received.observer;
    expect(received.proposal).toMatchObject({ type: "remove", sender: { kind: "external", senderIndex: 0 } });
    expect(observer.pendingProposals()).toHaveLength(1);
    // The members receive it as well.
    for (const [name, state] of [...group.members]) {
      const { processPublicMessage, emptyPskIndex } = await import("ts-mls");
      if (message.wireformat !== "mls_public_message") throw new Error("not public");
      group.members.set(
        name,
        (await processPublicMessage(state, message.publicMessage, emptyPskIndex, cs)).newState,
      );
    }
    const change = accept(await group.commit("erin"));
    expect(names(change.removed)).toEqual(["@grace:grace.example"]);
    expect(observer.pendingProposals()).toHaveLength(0);
  });

  it("16. a Remove sent alone by a member, committed by another", async () => {
    const received = observer.validateProposal(await group.propose("frank", remove(leafOf("heidi"))));
    // The proposal is kept across encode/decode, so a commit may still cover it by reference.
    observer = GroupObserver.decode(received.observer.encode());
    expect(observer.pendingProposals().map((p) => hex(p.reference))).toEqual([
      hex(received.proposal.reference),
    ]);
    const change = accept(await group.commit("alice"));
    expect(names(change.removed)).toEqual(["@heidi:heidi.example"]);
  });

  it("17. a second external join and two more Adds", async () => {
    accept(await group.joinExternally(clients.ivan, "alice"));
    accept(await group.commit("ivan", [add("judy")], [clients.judy]));
  });

  it("19–20. commits after the changes, and the state survives encode/decode", async () => {
    accept(await group.commit("judy"));
    observer = GroupObserver.decode(observer.encode());
    accept(await group.commit("carol"));
    expect(observer.epoch).toBe(20n);
    expect(
      observer
        .members()
        .map((m) => new TextDecoder().decode(m.identity))
        .sort(),
    ).toEqual(["alice", "carol", "erin", "frank", "ivan", "judy"].map((n) => `@${n}:${n}.example`));
  });
});
