import { createPrivateKey, generateKeyPairSync, sign, type KeyObject } from "node:crypto";
import type { BatchOp, KvStore } from "../store/kv";
import {
  encodeExternalSenders,
  encodeFramedContent,
  encodeMlsMessage,
  type Extension,
  type ExternalSender,
  type FramedContent,
} from "./tsMls";
import { concatOpaque } from "./observer/suite";

/** `mxs` -> the hub's MLS external-sender key pair (JSON: PKCS#8 and raw public key, base64). */
const HUB_SENDER_KEY = "mxs";

const utf8 = new TextEncoder();
const PROTOCOL_VERSION_MLS10 = 1;
const WIRE_FORMAT_PUBLIC_MESSAGE = 1;

/**
 * The hub as an MLS external sender of the groups of the rooms it is hub of (RFC 9420 §12.1.8.1,
 * Robert §Queueing Service): the room's creator lists it in the group's `external_senders`
 * extension, and the hub signs Remove proposals with it, without any secret of the group. Its
 * credential is a basic credential naming `userId`, the hub's own user on whose behalf it sends
 * the proposals as room events (docs/protocol.md §12). One Ed25519 key pair per hub, kept in the
 * store; signing is synchronous, so the hub can make a proposal while it sequences an event.
 */
export class HubExternalSender {
  private constructor(
    readonly userId: string,
    readonly signaturePublicKey: Uint8Array,
    private readonly privateKey: KeyObject,
  ) {}

  /** The hub's key pair from the store, made and stored on first use. */
  static async load(kv: KvStore, userId: string): Promise<HubExternalSender> {
    const stored = await kv.get(HUB_SENDER_KEY);
    if (stored !== undefined) {
      const record = JSON.parse(stored) as { privateKey: string; publicKey: string };
      return new HubExternalSender(
        userId,
        new Uint8Array(Buffer.from(record.publicKey, "base64")),
        createPrivateKey({ key: Buffer.from(record.privateKey, "base64"), format: "der", type: "pkcs8" }),
      );
    }
    const { privateKey, publicKey } = generateKeyPairSync("ed25519");
    const raw = rawPublicKey(publicKey);
    const ops: BatchOp[] = [
      {
        type: "put",
        key: HUB_SENDER_KEY,
        value: JSON.stringify({
          privateKey: privateKey.export({ format: "der", type: "pkcs8" }).toString("base64"),
          publicKey: Buffer.from(raw).toString("base64"),
        }),
      },
    ];
    await kv.commit(ops);
    return new HubExternalSender(userId, raw, privateKey);
  }

  /** The ExternalSender entry naming this hub (RFC 9420 §12.1.8.1). */
  get externalSender(): ExternalSender {
    return {
      signaturePublicKey: this.signaturePublicKey,
      credential: { credentialType: "basic", identity: utf8.encode(this.userId) },
    };
  }

  /** The `external_senders` GroupContext extension a new group of one of the hub's rooms carries. */
  extension(): Extension {
    return {
      extensionType: "external_senders",
      extensionData: encodeExternalSenders([this.externalSender]),
    };
  }

  /**
   * A Remove proposal from this external sender (RFC 9420 §12.1.3, §12.1.8), as an MLSMessage
   * holding a PublicMessage: no membership tag, and a FramedContentTBS without GroupContext (§6.1).
   */
  proposeRemove(input: {
    groupId: Uint8Array;
    epoch: bigint;
    /** This sender's index in the group's external_senders. */
    senderIndex: number;
    removed: number;
  }): Uint8Array {
    const content: FramedContent = {
      groupId: input.groupId,
      epoch: input.epoch,
      sender: { senderType: "external", senderIndex: input.senderIndex },
      authenticatedData: new Uint8Array(),
      contentType: "proposal",
      proposal: { proposalType: "remove", remove: { removed: input.removed } },
    };
    const header = Uint8Array.of(
      PROTOCOL_VERSION_MLS10 >> 8,
      PROTOCOL_VERSION_MLS10 & 0xff,
      WIRE_FORMAT_PUBLIC_MESSAGE >> 8,
      WIRE_FORMAT_PUBLIC_MESSAGE & 0xff,
    );
    const tbs = Buffer.concat([header, encodeFramedContent(content)]);
    // SignWithLabel (RFC 9420 §5.1.2).
    const signContent = concatOpaque(utf8.encode("MLS 1.0 FramedContentTBS"), tbs);
    const signature = new Uint8Array(sign(null, signContent, this.privateKey));
    return encodeMlsMessage({
      version: "mls10",
      wireformat: "mls_public_message",
      publicMessage: { content, auth: { contentType: "proposal", signature }, senderType: "external" },
    });
  }
}

function rawPublicKey(publicKey: KeyObject): Uint8Array {
  const der = publicKey.export({ format: "der", type: "spki" });
  return new Uint8Array(der.subarray(der.length - 32));
}
