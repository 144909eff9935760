import { MimiError, type ErrorCode } from "../../errors";
/**
 * Why the hub's observer refused an MLS message. Every refusal leaves the observer's state as it
 * was; the errcode says which rule failed and `rule` names it more precisely (for logs and tests).
 */
export type MlsObserverErrorCode = Extract<ErrorCode, `IO.MIMI_APPSERVICE.MLS_${string}`>;

export class MlsObserverError extends MimiError {
  declare readonly errcode: MlsObserverErrorCode;

  constructor(
    errcode: MlsObserverErrorCode,
    /** A short name of the rule that failed, e.g. `keypackage.lifetime`. */
    readonly rule: string,
    message: string,
  ) {
    super(errcode, message);
  }

  override toJSON(): { errcode: MlsObserverErrorCode; error: string; rule: string } {
    return { errcode: this.errcode, error: this.message, rule: this.rule };
  }
}

/**
 * The message is for another epoch. A committer that lost the race for an epoch (the hub accepts
 * one commit per epoch) rebases onto `currentEpoch` and sends a new commit.
 */
export class MlsWrongEpochError extends MlsObserverError {
  constructor(
    readonly currentEpoch: bigint,
    readonly messageEpoch: bigint,
  ) {
    super(
      "IO.MIMI_APPSERVICE.MLS_WRONG_EPOCH",
      "epoch",
      `the message is for epoch ${messageEpoch}, the group is at epoch ${currentEpoch}`,
    );
  }

  override toJSON(): { errcode: MlsObserverErrorCode; error: string; rule: string; current_epoch: number } {
    // The current epoch is ours: it grows by one per commit, so it is always a safe integer.
    return { ...super.toJSON(), current_epoch: Number(this.currentEpoch) };
  }
}

export function refuse(errcode: MlsObserverErrorCode, rule: string, message: string): never {
  throw new MlsObserverError(errcode, rule, message);
}
