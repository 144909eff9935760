export type { CommitChange, MemberChange } from "./commit";
export type { MlsObserverErrorCode } from "./errors";
export { MlsObserverError, MlsWrongEpochError } from "./errors";
export type { Member, ObserverOptions, ProposalReceipt, ProposalSender } from "./groupObserver";
export { GroupObserver } from "./groupObserver";
export type { CommitPolicy, PolicyRefusal } from "./state";
export { SUPPORTED_CIPHERSUITE } from "./suite";
export type { ExternalSender } from "./wire";
export { keyOf } from "./wire";
