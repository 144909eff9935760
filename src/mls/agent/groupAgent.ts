import { canonicalJson } from "../../events/canonicalJson";
import type { FullyFormedEvent, JsonObject } from "../../events/types";
import { serverNameOf } from "../../identifiers";
import type { Logger } from "../../logging";
import { HubRefusal } from "../../provider/hubLink";
import type { RoomService } from "../../room/roomService";
import type { Participation, RoomVersion } from "../../roomVersions/types";
import { prefixEnd, type BatchOp, type KvStore } from "../../store/kv";
import type { KeyPackagePool } from "../keyPackages";
import type { KeyPackageClient } from "../federation/keyPackageApi";
import { welcomeKey, type StoredWelcome, type WelcomeRouter } from "../federation/welcomes";
import {
  commitAccepted,
  commitRefused,
  createCommit,
  createHostedGroup,
  decryptMessage,
  encryptMessage,
  ensureClientIdentity,
  joinByExternalCommit,
  joinFromWelcome,
  loadHostedGroup,
  membersOf,
  processCommit,
  processProposal,
  proposedRemovals,
  type CredentialPolicy,
  type HostedGroup,
} from "../clients";
import { SUPPORTED_ALGORITHM, loadSuite, suiteForAlgorithm } from "../clients/suite";
import { encodeUnpaddedBase64 } from "../../events/base64";
import { fromBase64, sameBytes } from "../clients/wire";
import { MimiError } from "../../errors";
import { MlsError } from "../errors";
import type { HubExternalSender } from "../hubSender";
import { MLS_COMMIT, MLS_ENCRYPTED, MLS_PROPOSAL, type RoomGroupExtension } from "../roomGroup";
import {
  cursorKey,
  inboxKey,
  inboxPrefix,
  inboxRoomPrefix,
  outboxKey,
  outgoingWelcomeKey,
  pendingLpduKey,
} from "./storeKeys";

/** A message as a local user's client received it. */
export interface ReceivedMessage {
  seq: number;
  eventId: string;
  /** The event's sender. */
  sender: string;
  /** The MLS epoch the message was encrypted in (decimal). */
  epoch: string;
  /**
   * `decrypted`: read by the user's client; `sent`: the user's own message; `undecryptable`: the
   * client could not read it; `dropped`: it decrypted, but its MLS sender is not the event's
   * sender, so it is treated as cryptographically invalid (McMillion §Policy Enforcement).
   */
  status: "decrypted" | "sent" | "undecryptable" | "dropped";
  type?: string;
  content?: JsonObject;
  reason?: string;
}

export interface GroupView {
  /** The MLS epoch (decimal). */
  epoch: string;
  /** The user ID of each member's credential, in leaf order. */
  members: string[];
  /** False once the client was removed from the group. */
  active: boolean;
  /** The GroupContext's tree hash (unpadded base64). */
  treeHash: string;
}

/** The application message inside a PrivateMessage: `{type, content}` as canonical JSON in UTF-8. */
export interface PlainMessage {
  type: string;
  content: JsonObject;
}

/** How the agent sends its clients' events (the rooms API implements it). */
export interface OwnEventInput {
  roomId: string;
  sender: string;
  type: string;
  content: JsonObject;
  extraOps: (lpduHash: string, role: "hub" | "follower") => BatchOp[];
}

export interface OwnEventPort {
  submitOwn(input: OwnEventInput): Promise<{ lpduHash: string; outcome: Promise<string> }>;
  /** Several events of one room in one durable batch, each with its own result. */
  submitOwnMany(
    inputs: readonly OwnEventInput[],
  ): Promise<
    ({ ok: true; value: { lpduHash: string; outcome: Promise<string> } } | { ok: false; error: Error })[]
  >;
  awaitOwn(roomId: string, lpduHash: string): Promise<string>;
}

/** A message waiting to be encrypted and sent with the others of its room. */
interface OutgoingMessage {
  sender: string;
  message: PlainMessage;
  plaintext: Uint8Array;
  recordOps: (lpduHash: string, role: "hub" | "follower") => BatchOp[];
  /** The LPDU hash of an earlier attempt the hub refused, whose outbox record this one replaces. */
  replaces?: string;
  /**
   * `outcome` once durable; `notReady` while the sender's client is not in the group, or while the
   * hub's Remove proposals wait for a commit (`waiting`).
   */
  settle(result: SendResult): void;
}

interface SendResult {
  outcome?: Promise<string>;
  /** The LPDU hash of the event `outcome` is for. */
  lpduHash?: string;
  notReady?: "not_in_group" | "proposals_pending";
  error?: unknown;
}

export interface GroupAgentOptions {
  serverName: string;
  kv: KvStore;
  rooms: RoomService;
  groups: RoomGroupExtension;
  port: OwnEventPort;
  log: Logger;
  /** How long a message waits for its sender's client to be in the group (default 15 s). */
  joinWaitMs?: number;
  /** Adds by Welcome (LM-04 §Updating Group State): KeyPackages claimed, Welcomes routed via the hub. */
  welcomes?: { pool: KeyPackagePool; claims: KeyPackageClient; router: WelcomeRouter };
  /** How long an invited user's provider waits for the inviter's Add before joining by external commit (default 5 s). */
  welcomeWaitMs?: number;
  /** This provider as the MLS external sender of its rooms' groups: listed in every group it creates. */
  hubSender?: HubExternalSender;
  now?: () => number;
}

interface RoomProgress {
  readonly roomId: string;
  readonly version: RoomVersion;
  /** The last event processed. */
  cursor: number;
  /** The cursor as last written: always with the effects of the events up to it. */
  savedCursor: number;
  /** Events heard from the room service past the cursor, by position (bounded). */
  readonly heard: Map<number, { eventId: string; event: FullyFormedEvent }>;
  /** Participation as of the cursor. */
  readonly participation: Map<string, Participation>;
  /** Local users' clients in the room's group. */
  groups: Map<string, HostedGroup>;
  /** Local users whose commit is on its way to the hub: its LPDU hash. */
  readonly inFlight: Map<string, string>;
  queue: Promise<unknown>;
  scheduled: boolean;
  failures: number;
  retryTimer: NodeJS.Timeout | undefined;
  readonly listeners: Set<() => void>;
  /** Who sent each pending invite (in memory; after a restart the joiner's provider joins by itself). */
  readonly invitedBy: Map<string, string>;
  /** Users a local member invited who have since joined: that member adds them by Welcome. */
  readonly toAdd: Set<string>;
  /** KeyPackages claimed for those Adds, kept until used. */
  readonly claimed: Map<string, Uint8Array>;
  /** When each local user invited by someone else was seen joining: their Welcome is awaited until then. */
  readonly joinSeenAt: Map<string, number>;
  /** Messages to send, encrypted and written together by the next flush. */
  readonly outgoing: OutgoingMessage[];
  flushQueued: boolean;
}

/** What a page of events does besides its store operations. */
interface Effects {
  /** Run once the page's batch is durable. */
  after: (() => void)[];
  /**
   * Operations obtained just before the batch is written: the delivery queues allocate sequence
   * numbers when asked, so their operations must be written in the order they were asked for.
   */
  queued: (() => BatchOp[])[];
}

const newEffects = (): Effects => ({ after: [], queued: [] });

const PAGE = 64;
/** Events that change no client still move the stored cursor this often, to bound a replay. */
const CURSOR_SAVE_EVERY = 1000;
const HEARD_LIMIT = 4096;
const MAX_BACKOFF_MS = 30_000;
const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * The provider's hosted MLS clients at work (LM-04 §MLS Considerations, the bridge trust model):
 * for each room it reads the linear history in order and makes every local user's client follow
 * it (processing each m.mls.commit, decrypting each m.room.encrypted into the user's inbox), and
 * it keeps the group in line with the room's participation:
 *
 * - the room's creator, when local, establishes the group with the room's first m.mls.commit;
 * - a local user joined to the room whose client is not in the group joins it by an external
 *   commit from the latest m.mls.commit's `public_group_state` (RFC 9420 §12.4.3.2);
 * - a local member removes the clients of users who are no longer joined (LM-04 §Updating Group
 *   State: anyone may remove them).
 *
 * Every effect of an event is written in one batch with the agent's cursor past it, so after a
 * crash the agent goes on from the cursor and nothing is applied twice or lost. A commit that
 * loses its epoch to another is dropped when the winner arrives, and the agent tries again from
 * the new epoch. Work for one room runs one step at a time.
 */
export class GroupAgent {
  private readonly progress = new Map<string, Promise<RoomProgress>>();
  /** The same, once loaded. */
  private readonly loaded = new Map<string, RoomProgress>();
  private stopped = false;
  private unsubscribe: () => void = () => undefined;
  private readonly receivers = new Set<(roomId: string, userId: string, message: ReceivedMessage) => void>();
  private readonly now: () => number;

  constructor(private readonly options: GroupAgentOptions) {
    this.now = options.now ?? Date.now;
  }

  start(): void {
    this.unsubscribe = this.options.rooms.subscribe((notice) => {
      const progress = this.loaded.get(notice.roomId);
      if (progress !== undefined && notice.seq > progress.cursor && progress.heard.size < HEARD_LIMIT) {
        progress.heard.set(notice.seq, { eventId: notice.eventId, event: notice.event });
      }
      this.schedule(notice.roomId);
    });
    for (const roomId of this.options.rooms.roomIds()) this.schedule(roomId);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.unsubscribe();
    const all = await Promise.allSettled([...this.progress.values()]);
    for (const settled of all) {
      if (settled.status !== "fulfilled") continue;
      clearTimeout(settled.value.retryTimer);
      await settled.value.queue.catch(() => undefined);
    }
  }

  /** Sends a local user's message as an m.room.encrypted event; resolves once durable, to its outcome. */
  async sendMessage(
    roomId: string,
    sender: string,
    message: PlainMessage,
    recordOps: (lpduHash: string, role: "hub" | "follower") => BatchOp[],
  ): Promise<Promise<string>> {
    const progress = await this.progressOf(roomId);
    const plaintext = utf8.encode(canonicalJson({ type: message.type, content: message.content }));
    return this.sendPlaintext(progress, sender, message, plaintext, recordOps, undefined);
  }

  private async sendPlaintext(
    progress: RoomProgress,
    sender: string,
    message: PlainMessage,
    plaintext: Uint8Array,
    recordOps: (lpduHash: string, role: "hub" | "follower") => BatchOp[],
    replaces: string | undefined,
  ): Promise<Promise<string>> {
    const roomId = progress.roomId;
    const deadline = this.now() + (this.options.joinWaitMs ?? 15_000);
    for (;;) {
      const result = await new Promise<SendResult>((settle) => {
        progress.outgoing.push({
          sender,
          message,
          plaintext,
          recordOps,
          settle,
          ...(replaces === undefined ? {} : { replaces }),
        });
        this.flushSoon(progress);
      });
      if (result.error !== undefined) throw result.error;
      const outcome = result.outcome;
      if (outcome !== undefined) {
        // Robert §Queueing Service: a message the hub refused while its Remove proposals waited
        // for a commit is encrypted again in the epoch that commit begins, and sent again.
        return outcome.catch(async (error: unknown) => {
          if (!isPendingRefusal(error) || this.stopped) throw error;
          return this.sendPlaintext(progress, sender, message, plaintext, recordOps, result.lpduHash);
        });
      }
      const left = deadline - this.now();
      if (left <= 0 || this.stopped) {
        throw result.notReady === "proposals_pending"
          ? new MlsError(
              "IO.MIMI_APPSERVICE.MLS_PROPOSALS_PENDING",
              "send.proposals_pending",
              `the hub's Remove proposals in ${roomId} still wait for a commit: no message can be sent until one covers them`,
            )
          : new MlsError(
              "IO.MIMI_APPSERVICE.MLS_NOT_MEMBER",
              "send.not_in_group",
              `${sender}'s MLS client is not in the group of ${roomId}: the user must be joined, and its client's join must have reached the hub`,
            );
      }
      this.schedule(roomId);
      await this.changed(progress, left);
    }
  }

  /**
   * Sends what waits in `outgoing`, in one step of the room's queue: every message is encrypted in
   * turn (each advances its sender's secret tree), then all are written in one batch.
   */
  private flushSoon(progress: RoomProgress): void {
    if (progress.flushQueued) return;
    progress.flushQueued = true;
    void this.inQueue(progress, async () => {
      progress.flushQueued = false;
      await this.flush(progress);
    });
  }

  private async flush(progress: RoomProgress): Promise<void> {
    const waiting = progress.outgoing.splice(0);
    if (waiting.length === 0) return;
    try {
      await this.catchUp(progress);
    } catch (error) {
      waiting.forEach((m) => m.settle({ error }));
      return;
    }
    const groups = new Map(progress.groups);
    const ready: { m: OutgoingMessage; input: OwnEventInput }[] = [];
    const hubProposals = this.options.rooms.extensionState(
      progress.roomId,
      this.options.groups,
    )?.hubProposals;
    for (const m of waiting) {
      if (hubProposals !== undefined && hubProposals.size > 0) {
        // The hub refuses messages until a commit covers its proposals; hold them until then.
        m.settle({ notReady: "proposals_pending" });
        continue;
      }
      const group = groups.get(m.sender);
      if (group === undefined || !isActive(group) || group.commitEventId === undefined) {
        m.settle({ notReady: "not_in_group" });
        continue;
      }
      try {
        const encrypted = await encryptMessage(group, m.plaintext);
        groups.set(m.sender, encrypted.group);
        ready.push({
          m,
          input: {
            roomId: progress.roomId,
            sender: m.sender,
            type: MLS_ENCRYPTED,
            content: {
              algorithm: SUPPORTED_ALGORITHM,
              ciphertext: encodeUnpaddedBase64(encrypted.ciphertext),
              commit_event_id: encrypted.commitEventId,
            },
            extraOps: (lpduHash, role) => [
              ...encrypted.ops,
              {
                type: "put",
                key: outboxKey(progress.roomId, lpduHash),
                value: JSON.stringify({ epoch: encrypted.epoch.toString(), ...m.message }),
              },
              ...(m.replaces === undefined
                ? []
                : [{ type: "del" as const, key: outboxKey(progress.roomId, m.replaces) }]),
              ...m.recordOps(lpduHash, role),
            ],
          },
        });
      } catch (error) {
        m.settle({ error });
      }
    }
    if (ready.length === 0) return;
    let results: Awaited<ReturnType<OwnEventPort["submitOwnMany"]>>;
    try {
      results = await this.options.port.submitOwnMany(ready.map((r) => r.input));
    } catch (error) {
      // Nothing was written: the clients stay as they were.
      ready.forEach((r) => r.m.settle({ error }));
      return;
    }
    // A refused message's keys were never used on anything that left; later ones moved past them.
    progress.groups = groups;
    results.forEach((result, i) => {
      const m = ready[i]!.m;
      if (result.ok) m.settle({ outcome: result.value.outcome, lpduHash: result.value.lpduHash });
      // The hub (this provider) refused it at once: it waits for the commit, as above.
      else if (isPendingRefusal(result.error)) m.settle({ notReady: "proposals_pending" });
      else m.settle({ error: result.error });
    });
  }

  /**
   * Calls `listener` with each message a local user's client receives (or sent), once it is
   * durably in the user's inbox; for consumers such as the Matrix bridge. Returns the unsubscribe.
   */
  onMessage(listener: (roomId: string, userId: string, message: ReceivedMessage) => void): () => void {
    this.receivers.add(listener);
    return () => this.receivers.delete(listener);
  }

  private announce(ops: readonly BatchOp[], roomId: string): void {
    if (this.receivers.size === 0) return;
    const prefix = inboxRoomPrefix(roomId);
    for (const op of ops) {
      if (op.type !== "put" || !op.key.startsWith(prefix)) continue;
      const message = JSON.parse(op.value) as ReceivedMessage;
      const userId = op.key.slice(prefix.length, op.key.lastIndexOf("\u0000"));
      for (const listener of this.receivers) {
        try {
          listener(roomId, userId, message);
        } catch (error) {
          this.options.log.warn("a message listener failed", { error });
        }
      }
    }
  }

  /** The messages a local user's client received in a room, oldest first, from `fromSeq`. */
  async messages(
    roomId: string,
    userId: string,
    fromSeq: number,
    limit: number,
    waitMs = 0,
  ): Promise<ReceivedMessage[]> {
    const progress = await this.progressOf(roomId);
    await this.inQueue(progress, () => this.catchUp(progress));
    const found = await this.readInbox(roomId, userId, fromSeq, limit);
    if (found.length > 0 || waitMs <= 0 || this.stopped) return found;
    // A long poll: wait for the user's next message at or after `fromSeq`.
    await new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        unsubscribe();
        resolve();
      };
      const timer = setTimeout(done, waitMs);
      const unsubscribe = this.onMessage((room, user, message) => {
        if (room === roomId && user === userId && message.seq >= fromSeq) done();
      });
    });
    return this.readInbox(roomId, userId, fromSeq, limit);
  }

  private async readInbox(
    roomId: string,
    userId: string,
    fromSeq: number,
    limit: number,
  ): Promise<ReceivedMessage[]> {
    const prefix = inboxPrefix(roomId, userId);
    const out: ReceivedMessage[] = [];
    for await (const [, value] of this.options.kv.range({
      gte: inboxKey(roomId, userId, fromSeq),
      lt: prefixEnd(prefix),
      limit,
    })) {
      out.push(JSON.parse(value) as ReceivedMessage);
    }
    return out;
  }

  /** The epoch and tree of a local user's client, for operators and tests. */
  async clientView(roomId: string, userId: string): Promise<GroupView | undefined> {
    const progress = await this.progressOf(roomId);
    await this.inQueue(progress, () => this.catchUp(progress));
    const group = progress.groups.get(userId);
    if (group?.state === undefined) return undefined;
    return {
      epoch: group.state.groupContext.epoch.toString(),
      members: membersOf(group).map((m) => m.userId ?? "?"),
      active: isActive(group),
      treeHash: encodeUnpaddedBase64(group.state.groupContext.treeHash),
    };
  }

  /** The room's group as this provider's observer tracks it (every provider checks every commit). */
  observerView(roomId: string): Omit<GroupView, "active"> | undefined {
    const observer = this.options.rooms.extensionState(roomId, this.options.groups)?.observer;
    if (observer === undefined) return undefined;
    return {
      epoch: observer.epoch.toString(),
      members: observer.members().map((m) => identityText(m.identity) ?? "?"),
      treeHash: encodeUnpaddedBase64(observer.treeHash),
    };
  }

  /** Resolves once the room's work queue is empty and nothing is left to do or in flight. */
  async settled(roomId: string, timeoutMs = 30_000): Promise<void> {
    const progress = await this.progressOf(roomId);
    const deadline = this.now() + timeoutMs;
    while (this.now() < deadline) {
      await progress.queue.catch(() => undefined);
      const head = this.options.rooms.room(roomId)?.record.headSeq ?? 0;
      if (!progress.scheduled && progress.inFlight.size === 0 && progress.cursor >= head) return;
      await this.changed(progress, Math.min(200, deadline - this.now()));
    }
  }

  // ---- scheduling ----

  private schedule(roomId: string, delayMs = 0): void {
    if (this.stopped) return;
    void this.progressOf(roomId).then(
      (progress) => {
        if (delayMs > 0) {
          if (progress.retryTimer !== undefined) return;
          progress.retryTimer = setTimeout(() => {
            progress.retryTimer = undefined;
            this.schedule(roomId);
          }, delayMs);
          return;
        }
        if (progress.scheduled) return;
        progress.scheduled = true;
        void this.inQueue(progress, async () => {
          progress.scheduled = false;
          if (this.stopped) return;
          await this.catchUp(progress);
          await this.reconcile(progress);
        }).catch((error: unknown) => {
          progress.failures += 1;
          this.options.log.warn("MLS group work failed; retrying", {
            roomId,
            error,
            attempt: progress.failures,
          });
          this.schedule(roomId, this.backoff(progress));
        });
      },
      (error: unknown) => this.options.log.warn("cannot load the room's MLS clients", { roomId, error }),
    );
  }

  private backoff(progress: RoomProgress): number {
    return Math.min(MAX_BACKOFF_MS, 100 * 2 ** Math.min(progress.failures, 10));
  }

  private inQueue<T>(progress: RoomProgress, work: () => Promise<T>): Promise<T> {
    const run = progress.queue.then(work, work);
    progress.queue = run.catch(() => undefined);
    return run;
  }

  private changed(progress: RoomProgress, waitMs: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        progress.listeners.delete(done);
        resolve();
      };
      const timer = setTimeout(done, Math.max(0, waitMs));
      progress.listeners.add(done);
    });
  }

  private notify(progress: RoomProgress): void {
    for (const listener of [...progress.listeners]) listener();
  }

  // ---- loading ----

  private progressOf(roomId: string): Promise<RoomProgress> {
    let loading = this.progress.get(roomId);
    if (loading === undefined) {
      loading = this.load(roomId);
      this.progress.set(roomId, loading);
      loading.catch(() => this.progress.delete(roomId));
    }
    return loading;
  }

  private async load(roomId: string): Promise<RoomProgress> {
    const { rooms, kv, serverName } = this.options;
    const room = rooms.room(roomId);
    if (room === undefined)
      throw new MlsError("M_NOT_FOUND", "agent.room", `${serverName} is not in ${roomId}`);
    const stored = await kv.get(cursorKey(roomId));
    const cursor = stored === undefined ? 0 : Number(stored);
    const participation = new Map<string, Participation>();
    if (cursor > 0) {
      for (const entry of await rooms.store.stateAt(roomId, cursor + 1)) {
        if (entry.type !== room.version.membership.eventType) continue;
        const value = room.version.membership.participationIn(entry.content);
        if (value !== undefined) participation.set(entry.stateKey, value);
      }
    }
    const progress: RoomProgress = {
      roomId,
      version: room.version,
      cursor,
      savedCursor: cursor,
      heard: new Map(),
      participation,
      groups: new Map(),
      inFlight: new Map(),
      queue: Promise.resolve(),
      scheduled: false,
      failures: 0,
      retryTimer: undefined,
      listeners: new Set(),
      invitedBy: new Map(),
      toAdd: new Set(),
      claimed: new Map(),
      joinSeenAt: new Map(),
      outgoing: [],
      flushQueued: false,
    };
    // Every local user who has been in the room may have a client there.
    for (const entry of room.state.allEntries()) {
      if (entry.type !== room.version.membership.eventType || !this.isLocal(entry.stateKey)) continue;
      const group = await loadHostedGroup(kv, entry.stateKey, roomId, this.policyFor(progress));
      if (group === undefined) continue;
      progress.groups.set(entry.stateKey, group);
      if (group.pending === undefined) continue;
      const lpduHash = await kv.get(pendingLpduKey(roomId, entry.stateKey));
      if (lpduHash === undefined) continue;
      progress.inFlight.set(entry.stateKey, lpduHash);
      this.watch(progress, entry.stateKey, lpduHash, this.options.port.awaitOwn(roomId, lpduHash));
    }
    this.loaded.set(roomId, progress);
    return progress;
  }

  /**
   * Who may have a client in the group, as the hosted clients' authentication service asks: a
   * user who is or was joined to the room (a user who left stays in the tree until a member
   * commits the removal). Adds are for joined users only: the hub checks that on every commit.
   */
  private policyFor(progress: RoomProgress): CredentialPolicy {
    return (userId) => {
      // The hub's own user is the credential of its external sender (external_senders).
      if (userId === this.options.hubSender?.userId) return true;
      const participation = progress.participation.get(userId);
      return participation === "join" || participation === "leave" || participation === "ban";
    };
  }

  private isLocal(userId: string): boolean {
    try {
      return serverNameOf(userId) === this.options.serverName;
    } catch {
      return false;
    }
  }

  // ---- following the history ----

  private async catchUp(progress: RoomProgress): Promise<void> {
    for (;;) {
      const head = this.options.rooms.room(progress.roomId)?.record.headSeq ?? 0;
      if (progress.cursor >= head) return;
      const page = await this.nextPage(progress);
      if (page.length === 0) return;
      const groups = new Map(progress.groups);
      const ops: BatchOp[] = [];
      const effects = newEffects();
      for (const { seq, eventId, event } of page) {
        await this.processEvent(progress, groups, seq, eventId, event, ops, effects);
      }
      const last = page[page.length - 1]!.seq;
      if (
        ops.length === 0 &&
        effects.queued.length === 0 &&
        last - progress.savedCursor < CURSOR_SAVE_EVERY
      ) {
        // Nothing to write: events that change no client are replayed harmlessly after a crash.
        progress.cursor = last;
        progress.groups = groups;
        effects.after.forEach((action) => action());
        this.notify(progress);
        continue;
      }
      ops.push({ type: "put", key: cursorKey(progress.roomId), value: String(last) });
      await this.writePage(progress, ops, effects);
      progress.cursor = last;
      progress.savedCursor = last;
      progress.groups = groups;
      this.notify(progress);
    }
  }

  /** The events after the cursor: from the notices just heard when they follow on, else from the store. */
  private async nextPage(
    progress: RoomProgress,
  ): Promise<{ seq: number; eventId: string; event: FullyFormedEvent }[]> {
    const heard: { seq: number; eventId: string; event: FullyFormedEvent }[] = [];
    for (let seq = progress.cursor + 1; heard.length < PAGE; seq++) {
      const notice = progress.heard.get(seq);
      if (notice === undefined) break;
      heard.push({ seq, eventId: notice.eventId, event: notice.event });
    }
    for (const seq of [...progress.heard.keys()])
      if (seq <= progress.cursor + heard.length) progress.heard.delete(seq);
    if (heard.length > 0) return heard;
    const stored = await this.options.rooms.getEvents(progress.roomId, progress.cursor + 1, PAGE);
    return stored.map((e) => ({
      seq: e.seq,
      eventId: e.eventId,
      event: JSON.parse(e.json) as FullyFormedEvent,
    }));
  }

  private async processEvent(
    progress: RoomProgress,
    groups: Map<string, HostedGroup>,
    seq: number,
    eventId: string,
    event: FullyFormedEvent,
    ops: BatchOp[],
    effects: Effects,
  ): Promise<void> {
    const membership = progress.version.membership;
    if (event.type === membership.eventType && event.state_key !== undefined) {
      const participation = membership.participationIn(event.content);
      if (participation === undefined) return;
      const target = event.state_key;
      const before = progress.participation.get(target);
      progress.participation.set(target, participation);
      if (participation === "invite") progress.invitedBy.set(target, event.sender);
      if (participation === "join" && before === "invite") {
        const inviter = progress.invitedBy.get(target);
        if (inviter !== undefined && inviter !== target && this.isLocal(inviter)) progress.toAdd.add(target);
        if (inviter !== undefined && inviter !== target && this.isLocal(target))
          progress.joinSeenAt.set(target, this.now());
      }
      if (participation !== "invite") progress.invitedBy.delete(target);
      return;
    }
    await this.followMls(progress, groups, seq, eventId, event, ops, effects);
    if (event.type === MLS_COMMIT) {
      // A local user the commit added joins from the Welcome the hub passed on (RFC 9420 §12.4.3.1).
      for (const [user, participation] of progress.participation) {
        if (participation !== "join" || !this.isLocal(user)) continue;
        const group = groups.get(user);
        // A client that followed this commit is in its epoch; one left behind (it missed its
        // removal while its server was out of the room) joins afresh when a Welcome came for it.
        if (group !== undefined && isActive(group) && group.commitEventId === eventId) continue;
        const joined = await this.joinFromStoredWelcome(progress, user, eventId, ops);
        if (joined !== undefined) groups.set(user, joined);
      }
    }
  }

  /** The clients in `groups` follow one event: a commit is processed, a message decrypted. */
  private async followMls(
    progress: RoomProgress,
    groups: Map<string, HostedGroup>,
    seq: number,
    eventId: string,
    event: FullyFormedEvent,
    ops: BatchOp[],
    effects: Effects,
  ): Promise<void> {
    if (event.type === MLS_COMMIT) {
      const message = fromBase64(event.content.message as string);
      for (const [user, group] of groups) {
        groups.set(
          user,
          await this.followCommit(progress, user, group, message, eventId, event, ops, effects),
        );
      }
    } else if (event.type === MLS_ENCRYPTED) {
      await this.receive(progress, groups, seq, eventId, event, ops);
    } else if (event.type === MLS_PROPOSAL) {
      // The hub's Remove proposal as external sender: every member keeps it for its next commit.
      const message = fromBase64(event.content.message as string);
      for (const [user, group] of groups) {
        if (!isActive(group)) continue;
        try {
          const processed = await processProposal(group, message);
          ops.push(...processed.ops);
          groups.set(user, processed.group);
        } catch (err) {
          if (!(err instanceof MlsError)) throw err;
          this.options.log.warn("a local client could not process the hub's proposal", {
            roomId: progress.roomId,
            user,
            eventId,
            error: err.message,
          });
        }
      }
    }
  }

  /** Writes a page's operations in one batch, then runs what waited for it to be durable. */
  private async writePage(progress: RoomProgress, ops: BatchOp[], effects: Effects): Promise<void> {
    const batch = [...dedupe(ops), ...effects.queued.flatMap((queued) => queued())];
    await this.options.kv.commit(batch);
    effects.after.forEach((action) => action());
    this.announce(batch, progress.roomId);
  }

  private async followCommit(
    progress: RoomProgress,
    user: string,
    group: HostedGroup,
    message: Uint8Array,
    eventId: string,
    event: FullyFormedEvent,
    ops: BatchOp[],
    effects: Effects,
  ): Promise<HostedGroup> {
    const clearPending = () => {
      ops.push(
        { type: "del", key: pendingLpduKey(progress.roomId, user) },
        { type: "del", key: outgoingWelcomeKey(progress.roomId, user) },
      );
      progress.inFlight.delete(user);
    };
    if (group.pending !== undefined && sameBytes(group.pending.message, message)) {
      const accepted = commitAccepted(group, eventId);
      ops.push(...accepted.ops);
      await this.sendWelcome(progress, user, event, eventId, effects);
      clearPending();
      progress.failures = 0;
      return accepted.group;
    }
    if (!isActive(group)) {
      if (group.pending === undefined) return group;
      // An external join that lost its epoch: try again from the new one.
      const refused = commitRefused(group);
      ops.push(...refused.ops);
      clearPending();
      return refused.group;
    }
    if (group.pending !== undefined) clearPending();
    try {
      const processed = await processCommit(group, message, eventId);
      ops.push(...processed.ops);
      if (processed.removed) {
        this.options.log.info("a local client was removed from the group", { roomId: progress.roomId, user });
      }
      return processed.group;
    } catch (err) {
      if (!(err instanceof MlsError)) throw err;
      // The client cannot follow this commit; it rejoins by an external commit (reconcile).
      this.options.log.warn("a local client could not process a commit", {
        roomId: progress.roomId,
        user,
        eventId,
        error: err.message,
      });
      return group.pending === undefined ? group : commitRefused(group).group;
    }
  }

  /** Our commit with Adds was sequenced: its Welcome goes to the hub, or from here when we are the hub. */
  private async sendWelcome(
    progress: RoomProgress,
    user: string,
    event: FullyFormedEvent,
    eventId: string,
    effects: Effects,
  ): Promise<void> {
    const welcomes = this.options.welcomes;
    if (welcomes === undefined) return;
    const welcome = await this.options.kv.get(outgoingWelcomeKey(progress.roomId, user));
    if (welcome === undefined) return;
    const room = this.options.rooms.room(progress.roomId);
    if (room === undefined) return;
    for (const u of welcomes.router.addedOf(event)) {
      progress.toAdd.delete(u);
      progress.claimed.delete(u);
    }
    const router = welcomes.router;
    let routed: ReturnType<WelcomeRouter["routeOps"]> | undefined;
    effects.queued.push(() => {
      routed =
        room.record.role === "hub"
          ? router.routeOps(event, eventId, welcome)
          : router.toHubOps(room.record.hubServer, user, progress.roomId, eventId, welcome);
      return routed.ops;
    });
    effects.after.push(() => router.routed(routed!, eventId));
  }

  /** The user's client joins from the Welcome stored for `commitEventId`, if one came from the room's hub. */
  private async joinFromStoredWelcome(
    progress: RoomProgress,
    user: string,
    commitEventId: string,
    ops: BatchOp[],
  ): Promise<HostedGroup | undefined> {
    const welcomes = this.options.welcomes;
    if (welcomes === undefined) return undefined;
    const key = welcomeKey(user, commitEventId);
    const stored = await this.options.kv.get(key);
    if (stored === undefined) return undefined;
    ops.push({ type: "del", key });
    const { welcome, origin } = JSON.parse(stored) as StoredWelcome;
    const hub = this.options.rooms.room(progress.roomId)?.record.hubServer;
    if (origin !== hub) {
      this.options.log.warn("dropped a Welcome that did not come from the room's hub", {
        roomId: progress.roomId,
        user,
        origin,
      });
      return undefined;
    }
    try {
      const bytes = fromBase64(welcome);
      const keys = await welcomes.pool.keysForWelcome(bytes);
      if (keys.userId !== user) return undefined;
      const joined = await joinFromWelcome({
        userId: user,
        roomId: progress.roomId,
        welcome: bytes,
        commitEventId,
        keys,
        policy: this.policyFor(progress),
      });
      ops.push(...joined.ops);
      progress.joinSeenAt.delete(user);
      this.options.log.info("a local client joined from a Welcome", { roomId: progress.roomId, user });
      return joined.group;
    } catch (err) {
      if (!(err instanceof MlsError)) throw err;
      this.options.log.warn("cannot join from a Welcome", {
        roomId: progress.roomId,
        user,
        error: err.message,
      });
      return undefined;
    }
  }

  /**
   * A Welcome for a local user was stored. If the user's client already went past its commit, it
   * joins now and then follows the commits and messages since.
   */
  welcomeStored(userId: string, commitEventId: string): void {
    void (async () => {
      const stored = await this.options.rooms.getEvent(commitEventId);
      if (stored === undefined) return;
      const progress = await this.progressOf(stored.roomId);
      await this.inQueue(progress, async () => {
        const group = progress.groups.get(userId);
        const epoch = this.options.rooms.extensionState(progress.roomId, this.options.groups)?.observer
          ?.epoch;
        const current =
          group?.state !== undefined && isActive(group) && group.state.groupContext.epoch === epoch;
        if (progress.cursor < stored.seq || current) return;
        const ops: BatchOp[] = [];
        const joined = await this.joinFromStoredWelcome(progress, userId, commitEventId, ops);
        if (joined === undefined) {
          await this.options.kv.commit(ops);
          return;
        }
        const groups = new Map([[userId, joined]]);
        const effects = newEffects();
        for (let from = stored.seq + 1; from <= progress.cursor; ) {
          const page = await this.options.rooms.getEvents(progress.roomId, from, PAGE);
          if (page.length === 0) break;
          for (const e of page) {
            if (e.seq > progress.cursor) break;
            const event = JSON.parse(e.json) as FullyFormedEvent;
            await this.followMls(progress, groups, e.seq, e.eventId, event, ops, effects);
          }
          from = page[page.length - 1]!.seq + 1;
        }
        await this.writePage(progress, ops, effects);
        progress.groups.set(userId, groups.get(userId)!);
        this.notify(progress);
      });
    })().catch((error: unknown) => this.options.log.warn("cannot use a Welcome", { userId, error }));
  }

  private async receive(
    progress: RoomProgress,
    groups: Map<string, HostedGroup>,
    seq: number,
    eventId: string,
    event: FullyFormedEvent,
    ops: BatchOp[],
  ): Promise<void> {
    const roomId = progress.roomId;
    const base = { seq, eventId, sender: event.sender };
    if (this.isLocal(event.sender)) {
      const key = outboxKey(roomId, event.hashes.lpdu.sha256);
      const sent = await this.options.kv.get(key);
      if (sent !== undefined) {
        const { epoch, type, content } = JSON.parse(sent) as PlainMessage & { epoch: string };
        const record: ReceivedMessage = { ...base, epoch, status: "sent", type, content };
        ops.push({ type: "del", key }, inboxOp(roomId, event.sender, record));
      }
    }
    const ciphertext = fromBase64(event.content.ciphertext as string);
    for (const [user, group] of groups) {
      if (user === event.sender || group.state === undefined) continue;
      let record: ReceivedMessage;
      try {
        const decrypted = await decryptMessage(group, ciphertext);
        groups.set(user, decrypted.group);
        ops.push(...decrypted.ops);
        const epoch = decrypted.epoch.toString();
        const plain = parsePlain(decrypted.plaintext);
        if (decrypted.senderUserId !== event.sender) {
          record = {
            ...base,
            epoch,
            status: "dropped",
            reason: `the MLS sender ${decrypted.senderUserId} is not the event's sender`,
          };
        } else if (plain === undefined) {
          record = {
            ...base,
            epoch,
            status: "undecryptable",
            reason: "the plaintext is not a {type, content} object",
          };
        } else {
          record = { ...base, epoch, status: "decrypted", type: plain.type, content: plain.content };
        }
      } catch (err) {
        if (!(err instanceof MlsError)) throw err;
        record = { ...base, epoch: "?", status: "undecryptable", reason: err.message };
      }
      ops.push(inboxOp(roomId, user, record));
    }
  }

  // ---- keeping the group in line with the room ----

  private async reconcile(progress: RoomProgress): Promise<void> {
    if (progress.inFlight.size > 0 || this.stopped) return;
    const { rooms, groups: groupExtension } = this.options;
    const room = rooms.room(progress.roomId);
    if (room === undefined || progress.cursor < room.record.headSeq) return;
    const joined = [...progress.participation]
      .filter(([user, participation]) => participation === "join" && this.isLocal(user))
      .map(([user]) => user);
    if (joined.length === 0) return;
    const groupState = rooms.extensionState(progress.roomId, groupExtension);
    const observer = groupState?.observer;
    if (observer === undefined || groupState?.headCommit === undefined) {
      const creator = room.state.get(room.version.createEventType, "")?.sender;
      if (creator !== undefined && joined.includes(creator)) await this.establish(progress, creator);
      return;
    }
    const current = (group: HostedGroup | undefined): group is HostedGroup =>
      group !== undefined && isActive(group) && group.state!.groupContext.epoch === observer.epoch;
    const committer = joined.find((user) => current(progress.groups.get(user)));
    if (committer !== undefined) {
      const group = progress.groups.get(committer)!;
      // The hub's Remove proposals are covered by reference (createCommit includes every proposal
      // the client holds); other departed users' leaves are removed by value.
      const proposed = new Set(proposedRemovals(group));
      const stale = membersOf(group)
        .filter(
          (member) => member.userId === undefined || progress.participation.get(member.userId) !== "join",
        )
        .map((member) => member.leafIndex)
        .filter((leaf) => !proposed.has(leaf));
      if (stale.length > 0 || proposed.size > 0) {
        const commit = await createCommit(group, { remove: stale });
        await this.submitCommit(
          progress,
          committer,
          commit.group,
          commit.commit,
          commit.groupInfo,
          commit.ops,
        );
        return;
      }
      if (await this.addInvited(progress, committer, group)) return;
    }
    const joiner = joined.find((user) => !current(progress.groups.get(user)));
    if (joiner === undefined) return;
    const seenAt = progress.joinSeenAt.get(joiner);
    const waitUntil = seenAt === undefined ? 0 : seenAt + (this.options.welcomeWaitMs ?? 5_000);
    if (this.options.welcomes !== undefined && this.now() < waitUntil) {
      // The inviter's client adds the user; its Welcome is on its way through the hub.
      this.schedule(progress.roomId, waitUntil - this.now());
      return;
    }
    progress.joinSeenAt.delete(joiner);
    await this.joinExternally(progress, joiner, groupState.headCommit, observer);
  }

  /** A user a local member invited has joined: that member adds the user's client with a claimed KeyPackage. */
  private async addInvited(progress: RoomProgress, committer: string, group: HostedGroup): Promise<boolean> {
    const welcomes = this.options.welcomes;
    if (welcomes === undefined) return false;
    const members = new Set(membersOf(group).map((m) => m.userId));
    if (welcomes.claims.bundlesClaims) await this.claimTogether(progress, members);
    for (const user of [...progress.toAdd]) {
      if (progress.participation.get(user) !== "join" || members.has(user)) {
        progress.toAdd.delete(user);
        progress.claimed.delete(user);
        continue;
      }
      let keyPackage = progress.claimed.get(user);
      if (keyPackage === undefined) {
        try {
          keyPackage = await welcomes.claims.claim(user);
        } catch (err) {
          // The user's own provider joins by external commit instead.
          this.options.log.info("cannot claim a KeyPackage for an Add", {
            roomId: progress.roomId,
            user,
            error: (err as Error).message,
          });
          progress.toAdd.delete(user);
          continue;
        }
        progress.claimed.set(user, keyPackage);
      }
      const commit = await createCommit(group, { add: [keyPackage] });
      const welcomeOps: BatchOp[] =
        commit.welcome === undefined
          ? []
          : [
              {
                type: "put",
                key: outgoingWelcomeKey(progress.roomId, committer),
                value: encodeUnpaddedBase64(commit.welcome),
              },
            ];
      await this.submitCommit(progress, committer, commit.group, commit.commit, commit.groupInfo, [
        ...commit.ops,
        ...welcomeOps,
      ]);
      return true;
    }
    return false;
  }

  /**
   * With `mls.bundle_claims`, the KeyPackages of every joined user waiting to be added are claimed
   * at once, those of one provider in one request (McMillion §Privacy); each Add then uses its own.
   */
  private async claimTogether(progress: RoomProgress, members: Set<string | undefined>): Promise<void> {
    const welcomes = this.options.welcomes!;
    const waiting = [...progress.toAdd].filter(
      (user) =>
        progress.participation.get(user) === "join" && !members.has(user) && !progress.claimed.has(user),
    );
    if (waiting.length < 2) return;
    for (const [user, result] of await welcomes.claims.claimMany(waiting)) {
      if (!(result instanceof Error)) {
        progress.claimed.set(user, result);
        continue;
      }
      this.options.log.info("cannot claim a KeyPackage for an Add", {
        roomId: progress.roomId,
        user,
        error: result.message,
      });
      progress.toAdd.delete(user);
    }
  }

  private async establish(progress: RoomProgress, creator: string): Promise<void> {
    const room = this.options.rooms.room(progress.roomId)!;
    const algorithm = room.state.get(room.version.createEventType, "")?.content.encryption_algorithm;
    const cs = await loadSuite(suiteForAlgorithm(algorithm));
    const { identity, ops: identityOps } = await ensureClientIdentity(this.options.kv, creator, cs);
    const hubSender = this.options.hubSender;
    const created = await createHostedGroup({
      identity,
      roomId: progress.roomId,
      encryptionAlgorithm: algorithm,
      policy: this.policyFor(progress),
      // The hub is the group's external sender, for its Remove proposals (RFC 9420 §12.1.8.1).
      ...(hubSender === undefined || room.record.role !== "hub"
        ? {}
        : { extensions: [hubSender.extension()] }),
      now: this.now(),
    });
    const commit = await createCommit(created.group);
    await this.submitCommit(progress, creator, commit.group, commit.commit, commit.groupInfo, [
      ...identityOps,
      ...created.ops,
      ...commit.ops,
    ]);
  }

  private async joinExternally(
    progress: RoomProgress,
    user: string,
    headCommit: string,
    observer: { members(): { identity: Uint8Array }[] },
  ): Promise<void> {
    const stored = await this.options.rooms.getEvent(headCommit);
    if (stored === undefined) return;
    const event = JSON.parse(stored.json) as FullyFormedEvent;
    const cs = await loadSuite(suiteForAlgorithm(SUPPORTED_ALGORITHM));
    const ensured = await ensureClientIdentity(this.options.kv, user, cs);
    // A client of the user still in the tree (its state lost or behind) is replaced: RFC 9420 §12.2 resync.
    const resync = observer.members().some((member) => identityText(member.identity) === user);
    const joined = await joinByExternalCommit({
      identity: ensured.identity,
      roomId: progress.roomId,
      groupInfo: fromBase64(event.content.public_group_state as string),
      policy: this.policyFor(progress),
      now: this.now(),
      resync,
    });
    await this.submitCommit(progress, user, joined.group, joined.commit, joined.groupInfo, [
      ...ensured.ops,
      ...joined.ops,
    ]);
  }

  private async submitCommit(
    progress: RoomProgress,
    user: string,
    group: HostedGroup,
    commit: Uint8Array,
    groupInfo: Uint8Array,
    ops: BatchOp[],
  ): Promise<void> {
    // LM-04 §m.mls.commit: prev_commit_event_id names the commit this one builds on.
    const previous = this.options.rooms.extensionState(progress.roomId, this.options.groups)?.headCommit;
    const content: JsonObject = {
      message: encodeUnpaddedBase64(commit),
      public_group_state: encodeUnpaddedBase64(groupInfo),
      ...(previous === undefined ? {} : { prev_commit_event_id: previous }),
    };
    const { lpduHash, outcome } = await this.options.port.submitOwn({
      roomId: progress.roomId,
      sender: user,
      type: MLS_COMMIT,
      content,
      extraOps: (hash) => [...ops, { type: "put", key: pendingLpduKey(progress.roomId, user), value: hash }],
    });
    progress.groups.set(user, group);
    progress.inFlight.set(user, lpduHash);
    this.watch(progress, user, lpduHash, outcome);
  }

  /** Waits for the hub's answer to a commit: a refusal drops it so the agent can try again. */
  private watch(progress: RoomProgress, user: string, lpduHash: string, outcome: Promise<string>): void {
    outcome.then(
      () => this.schedule(progress.roomId),
      (err: unknown) => {
        if (this.stopped) return;
        if (!(err instanceof HubRefusal)) {
          // No answer yet: the commit stays queued; ask again later.
          setTimeout(() => {
            if (!this.stopped && progress.inFlight.get(user) === lpduHash) {
              this.watch(progress, user, lpduHash, this.options.port.awaitOwn(progress.roomId, lpduHash));
            }
          }, 1000).unref();
          return;
        }
        void this.inQueue(progress, () => this.refused(progress, user, lpduHash, err)).catch(
          (error: unknown) =>
            this.options.log.warn("cannot drop a refused commit", { roomId: progress.roomId, error }),
        );
      },
    );
  }

  private async refused(
    progress: RoomProgress,
    user: string,
    lpduHash: string,
    err: HubRefusal,
  ): Promise<void> {
    if (progress.inFlight.get(user) !== lpduHash) return;
    this.options.log.info("the hub refused a commit of a local client; trying again", {
      roomId: progress.roomId,
      user,
      errcode: err.remoteErrcode,
      error: err.message,
    });
    const group = progress.groups.get(user);
    const dropped = group?.pending === undefined ? undefined : commitRefused(group);
    await this.options.kv.commit([
      { type: "del", key: pendingLpduKey(progress.roomId, user) },
      { type: "del", key: outgoingWelcomeKey(progress.roomId, user) },
      ...(dropped?.ops ?? []),
    ]);
    progress.inFlight.delete(user);
    if (dropped !== undefined) progress.groups.set(user, dropped.group);
    progress.failures += 1;
    this.schedule(
      progress.roomId,
      err.remoteErrcode === "IO.MIMI_APPSERVICE.MLS_WRONG_EPOCH" ? 1 : this.backoff(progress),
    );
  }
}

function isPendingRefusal(error: unknown): boolean {
  const errcode =
    error instanceof HubRefusal
      ? error.remoteErrcode
      : error instanceof MimiError
        ? error.errcode
        : undefined;
  return errcode === "IO.MIMI_APPSERVICE.MLS_PROPOSALS_PENDING";
}

function isActive(group: HostedGroup): boolean {
  return group.state !== undefined && group.state.groupActiveState.kind === "active";
}

function identityText(identity: Uint8Array): string | undefined {
  try {
    return fromUtf8.decode(identity);
  } catch {
    return undefined;
  }
}

function parsePlain(bytes: Uint8Array): PlainMessage | undefined {
  try {
    const value = JSON.parse(fromUtf8.decode(bytes)) as unknown;
    if (typeof value !== "object" || value === null) return undefined;
    const { type, content } = value as { type?: unknown; content?: unknown };
    if (typeof type !== "string" || typeof content !== "object" || content === null || Array.isArray(content))
      return undefined;
    return { type, content: content as JsonObject };
  } catch {
    return undefined;
  }
}

function inboxOp(roomId: string, userId: string, record: ReceivedMessage): BatchOp {
  return { type: "put", key: inboxKey(roomId, userId, record.seq), value: JSON.stringify(record) };
}

/** Keeps the last operation on each key: a page may rewrite one client's state many times. */
function dedupe(ops: BatchOp[]): BatchOp[] {
  const last = new Map<string, number>();
  ops.forEach((op, i) => last.set(op.key, i));
  return ops.filter((op, i) => last.get(op.key) === i);
}
