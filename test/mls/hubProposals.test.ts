import { join } from "node:path";
import { createApplicationMessage, decodeMlsMessage, encodeMlsMessage } from "ts-mls";
import type { FullyFormedEvent, JsonObject } from "../../src/events/types";
import { HubExternalSender } from "../../src/mls/hubSender";
import { decodeExactly } from "../../src/mls/observer/wire";
import {
  MLS_PROPOSAL,
  RoomGroupExtension,
  SUPPORTED_ALGORITHM,
  type RoomGroupState,
} from "../../src/mls/roomGroup";
import { ExtensionRejection } from "../../src/room/extension";
import { RoomService } from "../../src/room/roomService";
import { RoomStore } from "../../src/store/roomStore";
import { lookupOf, testKey } from "../support/keys";
import { removeDir, tempDir } from "../support/services";
import {
  ClientGroup,
  addOf,
  clientFor,
  suite,
  text,
  type ClientKeys,
  type PublishedCommit,
} from "./observerClients";
import { openTestStore } from "../support/store";

const hubKey = testKey("hub.example");
const keys = lookupOf(hubKey);
const HUB_USER = "@mimi-hub:hub.example";
const ALICE = "@alice:hub.example";
const BOB = "@bob:hub.example";
const CAROL = "@carol:hub.example";

const b64 = (bytes: Uint8Array) => Buffer.from(bytes).toString("base64").replace(/=+$/, "");
const bytesOf = (base64: string) => new Uint8Array(Buffer.from(base64, "base64"));

async function open(dir: string) {
  const level = await openTestStore(join(dir, "db"), { durability: "os" });
  const hubSender = await HubExternalSender.load(level, HUB_USER);
  const extension = new RoomGroupExtension(level, { hubSender });
  const service = await RoomService.open({
    signingKey: hubKey,
    store: new RoomStore(level),
    keys,
    extensions: [extension],
  });
  return { level, extension, service, hubSender };
}

type Opened = Awaited<ReturnType<typeof open>>;

function commitContent(published: PublishedCommit): JsonObject {
  return { message: b64(published.commit), public_group_state: b64(published.groupInfo) };
}

async function refusal(attempt: Promise<unknown>): Promise<ExtensionRejection> {
  const err = await attempt.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ExtensionRejection);
  return err as ExtensionRejection;
}

async function history(
  opened: Opened,
  roomId: string,
): Promise<{ eventId: string; event: FullyFormedEvent }[]> {
  const events = await opened.service.getEvents(roomId, 1, 1000);
  return events.map((e) => ({ eventId: e.eventId, event: JSON.parse(e.json) as FullyFormedEvent }));
}

describe("the hub as the group's external sender: Remove proposals for departed users (Robert §Queueing Service)", () => {
  let dir: string;
  let opened: Opened;
  let roomId: string;
  let alice: ClientKeys;
  let bob: ClientKeys;
  let carol: ClientKeys;
  let group: ClientGroup;

  const groupState = (): RoomGroupState => opened.service.extensionState(roomId, opened.extension)!;
  const sendCommit = (sender: string, published: PublishedCommit) =>
    opened.service.sendAsHub(roomId, sender, "m.mls.commit", commitContent(published));
  const encrypted = async (name: string, sender: string) => {
    const { newState, privateMessage } = await createApplicationMessage(
      group.state(name),
      text("hello"),
      await suite(),
    );
    group.members.set(name, newState);
    return opened.service.sendAsHub(roomId, sender, "m.room.encrypted", {
      algorithm: SUPPORTED_ALGORITHM,
      ciphertext: b64(
        encodeMlsMessage({ version: "mls10", wireformat: "mls_private_message", privateMessage }),
      ),
      commit_event_id: groupState().headCommit!,
    });
  };
  const leave = (user: string) =>
    opened.service.sendAsHub(roomId, user, "m.room.user", { participation: "leave" }, user);

  beforeEach(async () => {
    dir = tempDir("mls-hub-proposals");
    opened = await open(dir);
    roomId = await opened.service.createRoom(ALICE);
    await opened.service.sendAsHub(roomId, ALICE, "m.room.join_rules", { rule: "public" }, "");
    for (const user of [BOB, CAROL]) {
      await opened.service.sendAsHub(roomId, user, "m.room.user", { participation: "join" }, user);
    }
    alice = await clientFor("alice", ALICE);
    bob = await clientFor("bob", BOB);
    carol = await clientFor("carol", CAROL);
    group = await ClientGroup.create(alice, [opened.hubSender.extension()], text(roomId));
    await sendCommit(
      ALICE,
      await group.commit("alice", [addOf(bob), addOf(carol)], [bob, carol], { ratchetTreeExtension: true }),
    );
  });

  afterEach(async () => {
    await opened.level.close();
    removeDir(dir);
  });

  it("refuses to establish a group that does not list the hub as external sender", async () => {
    const other = await opened.service.createRoom(ALICE);
    const without = await ClientGroup.create(alice, [], text(other));
    const refused = await refusal(
      opened.service.sendAsHub(
        other,
        ALICE,
        "m.mls.commit",
        commitContent(await without.commit("alice", [], [], { ratchetTreeExtension: true })),
      ),
    );
    expect(refused.errcode).toBe("IO.MIMI_APPSERVICE.MLS_FORBIDDEN");
    expect(refused.reason).toContain("external sender");
    expect(opened.service.extensionState(other, opened.extension)!.observer).toBeUndefined();
  });

  it("proposes the removal of a departed user's client right after the leave, in the same batch", async () => {
    const carolLeaf = group.state("carol").privatePath.leafIndex;
    const left = await leave(CAROL);
    const events = await history(opened, roomId);
    const at = events.findIndex((e) => e.eventId === left.eventId);
    const proposal = events[at + 1]!;
    expect(proposal.event).toMatchObject({ type: MLS_PROPOSAL, sender: HUB_USER });
    const message = decodeExactly(
      decodeMlsMessage,
      bytesOf(proposal.event.content.message as string),
      "MLSMessage",
    );
    if (message.wireformat !== "mls_public_message") throw new Error("not a PublicMessage");
    const content = message.publicMessage.content;
    expect(content.sender).toEqual({ senderType: "external", senderIndex: 0 });
    expect(content.contentType === "proposal" && content.proposal).toEqual({
      proposalType: "remove",
      remove: { removed: carolLeaf },
    });
    expect([...groupState().hubProposals.values()]).toEqual([proposal.eventId]);
    // The members' ts-mls clients accept it as the external sender's (RFC 9420 §12.1.8).
    await group.receiveProposal(bytesOf(proposal.event.content.message as string));
  });

  it("refuses messages and other commits until a commit covers the proposals, then accepts both", async () => {
    const stale = await group.draftCommit("bob");
    await leave(CAROL);
    const [proposal] = (await history(opened, roomId)).filter((e) => e.event.type === MLS_PROPOSAL);
    // Encrypted before alice's client received the proposal (ts-mls then refuses to encrypt at all).
    const message = await refusal(encrypted("alice", ALICE));
    expect(message.errcode).toBe("IO.MIMI_APPSERVICE.MLS_PROPOSALS_PENDING");
    expect(message.reason).toContain(proposal!.eventId);
    await group.receiveProposal(bytesOf(proposal!.event.content.message as string));
    const commit = await refusal(sendCommit(BOB, stale));
    expect(commit.errcode).toBe("IO.MIMI_APPSERVICE.MLS_PROPOSALS_PENDING");
    expect(groupState().observer!.epoch).toBe(1n);

    // bob's next commit covers the proposal by reference (ts-mls includes what it received).
    await sendCommit(BOB, await group.commit("bob"));
    expect(groupState().observer!.epoch).toBe(2n);
    expect(groupState().hubProposals.size).toBe(0);
    expect(
      groupState()
        .observer!.members()
        .map((m) => Buffer.from(m.identity).toString()),
    ).toEqual([ALICE, BOB]);
    expect(group.members.has("carol")).toBe(false);
    await encrypted("alice", ALICE);
  });

  it("keeps the pending proposals across a restart", async () => {
    await leave(CAROL);
    await opened.level.close();
    opened = await open(dir);
    expect(groupState().hubProposals.size).toBe(1);
    expect((await refusal(encrypted("alice", ALICE))).errcode).toBe(
      "IO.MIMI_APPSERVICE.MLS_PROPOSALS_PENDING",
    );
    const [proposal] = (await history(opened, roomId)).filter((e) => e.event.type === MLS_PROPOSAL);
    await group.receiveProposal(bytesOf(proposal!.event.content.message as string));
    await sendCommit(ALICE, await group.commit("alice"));
    expect(groupState().hubProposals.size).toBe(0);
  });

  it("accepts a proposal event only from the hub's external sender, for a client of a departed user", async () => {
    await leave(CAROL);
    const [proposal] = (await history(opened, roomId)).filter((e) => e.event.type === MLS_PROPOSAL);
    const content = proposal!.event.content;
    // Another user of the hub, with the hub's own proposal: not the external sender.
    const notSender = await refusal(opened.service.sendAsHub(roomId, ALICE, MLS_PROPOSAL, content));
    expect(notSender.errcode).toBe("IO.MIMI_APPSERVICE.MLS_FORBIDDEN");
    // The hub's user, with a proposal signed by another key.
    const forgerStore = await openTestStore(join(dir, "forger"), { durability: "os" });
    const forger = await HubExternalSender.load(forgerStore, HUB_USER);
    await forgerStore.close();
    const bobLeaf = group.state("bob").privatePath.leafIndex;
    const forged = forger.proposeRemove({
      groupId: text(roomId),
      epoch: 1n,
      senderIndex: 0,
      removed: bobLeaf,
    });
    const badSignature = await refusal(
      opened.service.sendAsHub(roomId, HUB_USER, MLS_PROPOSAL, { message: b64(forged) }),
    );
    expect(badSignature.errcode).toBe("IO.MIMI_APPSERVICE.MLS_BAD_SIGNATURE");
    // A correctly signed Remove of a joined user's client.
    const joinedUser = opened.hubSender.proposeRemove({
      groupId: text(roomId),
      epoch: 1n,
      senderIndex: 0,
      removed: bobLeaf,
    });
    const joined = await refusal(
      opened.service.sendAsHub(roomId, HUB_USER, MLS_PROPOSAL, { message: b64(joinedUser) }),
    );
    expect(joined.errcode).toBe("IO.MIMI_APPSERVICE.MLS_FORBIDDEN");
    expect(joined.reason).toContain(BOB);
    expect(groupState().hubProposals.size).toBe(1);
  });

  it("refuses an external join while a member could cover the proposals", async () => {
    const DAVE = "@dave:hub.example";
    await opened.service.sendAsHub(roomId, DAVE, "m.room.user", { participation: "join" }, DAVE);
    await leave(CAROL);
    const dave = await clientFor("dave", DAVE);
    const join = await group.draftExternalJoin(dave, "alice");
    const refused = await refusal(sendCommit(DAVE, join));
    expect(refused.errcode).toBe("IO.MIMI_APPSERVICE.MLS_PROPOSALS_PENDING");
  });

  it("lets an external join through when no member is left to commit, then proposes the removals again", async () => {
    const DAVE = "@dave:hub.example";
    for (const user of [BOB, CAROL, ALICE]) await leave(user);
    expect(groupState().hubProposals.size).toBe(3);
    await opened.service.sendAsHub(roomId, DAVE, "m.room.user", { participation: "join" }, DAVE);
    const dave = await clientFor("dave", DAVE);
    const joined = await sendCommit(DAVE, await group.draftExternalJoin(dave, "alice"));
    expect(groupState().observer!.epoch).toBe(2n);
    // The proposals of epoch 1 ended with it; the hub made them again for epoch 2.
    const events = await history(opened, roomId);
    const after = events.slice(events.findIndex((e) => e.eventId === joined.eventId) + 1);
    expect(after.map((e) => e.event.type)).toEqual([MLS_PROPOSAL, MLS_PROPOSAL, MLS_PROPOSAL]);
    expect(groupState().hubProposals.size).toBe(3);
    for (const e of after) {
      const message = decodeExactly(
        decodeMlsMessage,
        bytesOf(e.event.content.message as string),
        "MLSMessage",
      );
      expect(message.wireformat === "mls_public_message" && message.publicMessage.content.epoch).toBe(2n);
    }
  });

  it("lets only users of the hub's server send proposal events (room version auth)", async () => {
    const room = opened.service.room(roomId)!;
    const decide = (sender: string) =>
      room.version.authorize(room.state, {
        type: MLS_PROPOSAL,
        sender,
        content: { message: "AAAA" },
        roomId,
      });
    expect(decide(HUB_USER)).toEqual({ allowed: true });
    expect(decide("@mimi-hub:elsewhere.example")).toMatchObject({ allowed: false, rule: "mls_proposal.hub" });
  });
});
