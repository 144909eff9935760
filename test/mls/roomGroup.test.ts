import { join } from "node:path";
import { createApplicationMessage, encodeMlsMessage, type Proposal } from "ts-mls";
import type { JsonObject } from "../../src/events/types";
import { RoomGroupExtension, SUPPORTED_ALGORITHM, type RoomGroupState } from "../../src/mls/roomGroup";
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
const ALICE = "@alice:hub.example";
const BOB = "@bob:hub.example";
const CAROL = "@carol:hub.example";

const b64 = (bytes: Uint8Array) => Buffer.from(bytes).toString("base64").replace(/=+$/, "");

async function open(dir: string) {
  const level = await openTestStore(join(dir, "db"), { durability: "os" });
  const extension = new RoomGroupExtension(level);
  const service = await RoomService.open({
    signingKey: hubKey,
    store: new RoomStore(level),
    keys,
    extensions: [extension],
  });
  return { level, extension, service };
}

type Opened = Awaited<ReturnType<typeof open>>;

function commitContent(published: PublishedCommit): JsonObject {
  return { message: b64(published.commit), public_group_state: b64(published.groupInfo) };
}

async function sendCommit(opened: Opened, roomId: string, sender: string, published: PublishedCommit) {
  return opened.service.sendAsHub(roomId, sender, "m.mls.commit", commitContent(published));
}

function groupState(opened: Opened, roomId: string): RoomGroupState {
  return opened.service.extensionState(roomId, opened.extension)!;
}

async function refusal(attempt: Promise<unknown>): Promise<ExtensionRejection> {
  const err = await attempt.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ExtensionRejection);
  return err as ExtensionRejection;
}

describe("the room's MLS group at the hub (m.mls.commit and m.room.encrypted)", () => {
  let dir: string;
  let opened: Opened;
  let roomId: string;
  let alice: ClientKeys;
  let bob: ClientKeys;
  let group: ClientGroup;

  beforeEach(async () => {
    dir = tempDir("mls-room");
    opened = await open(dir);
    roomId = await opened.service.createRoom(ALICE);
    await opened.service.sendAsHub(roomId, ALICE, "m.room.join_rules", { rule: "public" }, "");
    await opened.service.sendAsHub(roomId, BOB, "m.room.user", { participation: "join" }, BOB);
    alice = await clientFor("alice", ALICE);
    bob = await clientFor("bob", BOB);
    group = await ClientGroup.create(alice, [], text(roomId));
  });

  afterEach(async () => {
    await opened.level.close();
    removeDir(dir);
  });

  const establish = async () => {
    const first = await group.commit("alice", [addOf(bob)], [bob], { ratchetTreeExtension: true });
    return sendCommit(opened, roomId, ALICE, first);
  };

  it("establishes the group from the first commit's GroupInfo and follows it commit by commit", async () => {
    const first = await establish();
    expect(groupState(opened, roomId)).toMatchObject({ headCommit: first.eventId });
    expect(groupState(opened, roomId).observer!.epoch).toBe(1n);
    const second = await sendCommit(opened, roomId, BOB, await group.commit("bob"));
    const state = groupState(opened, roomId);
    expect(state.observer!.epoch).toBe(2n);
    expect(state.headCommit).toBe(second.eventId);
    expect(Buffer.from(state.observer!.groupContext())).toEqual(
      Buffer.from(group.groupContexts().get("alice")!),
    );
  });

  it("accepts one commit per epoch: the second one for it is refused, naming the current epoch and commit", async () => {
    await establish();
    const late = await group.draftCommit("bob");
    const winner = await sendCommit(opened, roomId, ALICE, await group.commit("alice"));
    const err = await refusal(sendCommit(opened, roomId, BOB, late));
    expect(err.errcode).toBe("IO.MIMI_APPSERVICE.MLS_WRONG_EPOCH");
    expect(err.reason).toContain("epoch 2");
    expect(err.reason).toContain(winner.eventId);
    expect(groupState(opened, roomId).headCommit).toBe(winner.eventId);
  });

  it("refuses an Add of a user who is not joined, and a commit signed by another user's client", async () => {
    await establish();
    const carol = await clientFor("carol", CAROL);
    const headBefore = groupState(opened, roomId).headCommit;
    const addCarol = await refusal(
      sendCommit(opened, roomId, ALICE, await group.draftCommit("alice", [addOf(carol)])),
    );
    expect(addCarol.errcode).toBe("IO.MIMI_APPSERVICE.MLS_FORBIDDEN");
    expect(addCarol.reason).toContain(CAROL);
    const asAlice = await refusal(sendCommit(opened, roomId, ALICE, await group.draftCommit("bob")));
    expect(asAlice.errcode).toBe("IO.MIMI_APPSERVICE.MLS_FORBIDDEN");
    expect(groupState(opened, roomId).headCommit).toBe(headBefore);
  });

  it("refuses an Add of a banned user, and changes nothing", async () => {
    await establish();
    // Alice holds the room's default power as its creator; she bans carol, who had joined.
    await opened.service.sendAsHub(roomId, CAROL, "m.room.user", { participation: "join" }, CAROL);
    await opened.service.sendAsHub(roomId, ALICE, "m.room.user", { participation: "ban" }, CAROL);
    const carol = await clientFor("carol", CAROL);
    const before = groupState(opened, roomId);
    const refused = await refusal(
      sendCommit(opened, roomId, ALICE, await group.draftCommit("alice", [addOf(carol)])),
    );
    expect(refused.errcode).toBe("IO.MIMI_APPSERVICE.MLS_FORBIDDEN");
    expect(refused.reason).toContain(`${CAROL} is not joined`);
    expect(groupState(opened, roomId).headCommit).toBe(before.headCommit);
    expect(groupState(opened, roomId).observer!.epoch).toBe(before.observer!.epoch);
  });

  it("lets a client be removed by another user only once its user is no longer joined (LM-04)", async () => {
    await establish();
    const removeBob: Proposal = { proposalType: "remove", remove: { removed: 1 } };
    const early = await refusal(
      sendCommit(opened, roomId, ALICE, await group.draftCommit("alice", [removeBob])),
    );
    expect(early.errcode).toBe("IO.MIMI_APPSERVICE.MLS_FORBIDDEN");
    expect(early.reason).toContain(BOB);
    await opened.service.sendAsHub(roomId, BOB, "m.room.user", { participation: "leave" }, BOB);
    const removal = await group.draftCommit("alice", [removeBob]);
    await sendCommit(opened, roomId, ALICE, removal);
    expect(
      groupState(opened, roomId)
        .observer!.members()
        .map((m) => Buffer.from(m.identity).toString()),
    ).toEqual([ALICE]);
  });

  it("refuses a first commit for another group ID, or whose members are not all joined", async () => {
    const other = await ClientGroup.create(alice, [], text("!other:hub.example"));
    const otherFirst = await other.commit("alice", [addOf(bob)], [bob], { ratchetTreeExtension: true });
    expect((await refusal(sendCommit(opened, roomId, ALICE, otherFirst))).errcode).toBe(
      "IO.MIMI_APPSERVICE.MLS_WRONG_GROUP",
    );
    const carol = await clientFor("carol", CAROL);
    const withCarol = await group.commit("alice", [addOf(carol)], [carol], { ratchetTreeExtension: true });
    expect((await refusal(sendCommit(opened, roomId, ALICE, withCarol))).errcode).toBe(
      "IO.MIMI_APPSERVICE.MLS_FORBIDDEN",
    );
    expect(groupState(opened, roomId).observer).toBeUndefined();
  });

  it("refuses garbage in place of a commit, and changes nothing", async () => {
    await establish();
    const epoch = groupState(opened, roomId).observer!.epoch;
    const err = await refusal(
      opened.service.sendAsHub(roomId, ALICE, "m.mls.commit", {
        message: "AAEC",
        public_group_state: "AAEC",
      }),
    );
    expect(err.errcode).toBe("IO.MIMI_APPSERVICE.MLS_MALFORMED");
    expect(groupState(opened, roomId).observer!.epoch).toBe(epoch);
  });

  it("takes an m.room.encrypted naming a recent commit of the room and carrying a message of its epoch", async () => {
    const first = await establish();
    const encrypt = async (body: string) => {
      const cs = await suite();
      const { newState, privateMessage } = await createApplicationMessage(
        group.state("alice"),
        text(body),
        cs,
      );
      group.members.set("alice", newState);
      return b64(encodeMlsMessage({ version: "mls10", wireformat: "mls_private_message", privateMessage }));
    };
    const sendEncrypted = async (body: string, commit: string, algorithm = SUPPORTED_ALGORITHM) =>
      opened.service.sendAsHub(roomId, ALICE, "m.room.encrypted", {
        algorithm,
        ciphertext: await encrypt(body),
        commit_event_id: commit,
      });
    await sendEncrypted("hello", first.eventId);
    const unknown = await refusal(sendEncrypted("x", "$" + "A".repeat(43)));
    expect(unknown.errcode).toBe("IO.MIMI_APPSERVICE.MLS_WRONG_EPOCH");

    const second = await sendCommit(opened, roomId, BOB, await group.commit("bob"));
    // A message of the new epoch that names the old commit: the epochs disagree.
    const mismatch = await refusal(sendEncrypted("y", first.eventId));
    expect(mismatch.errcode).toBe("IO.MIMI_APPSERVICE.MLS_WRONG_EPOCH");
    await sendEncrypted("z", second.eventId);
    const otherAlgorithm = await refusal(sendEncrypted("w", second.eventId, "m.mls.v1.other"));
    expect(otherAlgorithm.errcode).toBe("IO.MIMI_APPSERVICE.MLS_UNSUPPORTED");
  });

  it("judges a message by the fork it names: a sender who joined after that commit was no member of it", async () => {
    const first = await establish();
    await opened.service.sendAsHub(roomId, CAROL, "m.room.user", { participation: "join" }, CAROL);
    // The hub cannot read a PrivateMessage's sender; what it judges is the event's sender and the
    // commit the message names. A ciphertext of the first epoch, sent by carol:
    const cs = await suite();
    const ciphertext = async () => {
      const { newState, privateMessage } = await createApplicationMessage(
        group.state("alice"),
        text("x"),
        cs,
      );
      group.members.set("alice", newState);
      return b64(encodeMlsMessage({ version: "mls10", wireformat: "mls_private_message", privateMessage }));
    };
    const asCarol = async (commit: string) =>
      opened.service.sendAsHub(roomId, CAROL, "m.room.encrypted", {
        algorithm: SUPPORTED_ALGORITHM,
        ciphertext: await ciphertext(),
        commit_event_id: commit,
      });
    const err = await refusal(asCarol(first.eventId));
    expect(err.errcode).toBe("IO.MIMI_APPSERVICE.MLS_FORBIDDEN");
    expect(err.reason).toMatch(/after .*not a member/);
    // Alice, joined before that commit, may send in that epoch.
    await opened.service.sendAsHub(roomId, ALICE, "m.room.encrypted", {
      algorithm: SUPPORTED_ALGORITHM,
      ciphertext: await ciphertext(),
      commit_event_id: first.eventId,
    });
    // A later commit, after carol joined: the same sender is judged by that fork's state.
    const second = await sendCommit(opened, roomId, BOB, await group.commit("bob"));
    await asCarol(second.eventId);
    // After a restart the extension still knows when carol joined.
    await opened.level.close();
    opened = await open(dir);
    expect((await refusal(asCarol(first.eventId))).errcode).toBe("IO.MIMI_APPSERVICE.MLS_FORBIDDEN");
  });

  it("keeps the group's state across a restart and goes on validating", async () => {
    await establish();
    const late = await group.draftCommit("bob");
    const winner = await sendCommit(opened, roomId, ALICE, await group.commit("alice"));
    await opened.level.close();
    opened = await open(dir);
    const state = groupState(opened, roomId);
    expect(state.observer!.epoch).toBe(2n);
    expect(state.headCommit).toBe(winner.eventId);
    expect((await refusal(sendCommit(opened, roomId, BOB, late))).errcode).toBe(
      "IO.MIMI_APPSERVICE.MLS_WRONG_EPOCH",
    );
    await sendCommit(opened, roomId, BOB, await group.commit("bob"));
    expect(groupState(opened, roomId).observer!.epoch).toBe(3n);
  });
});
