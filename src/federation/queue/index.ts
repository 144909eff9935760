export { DEFAULT_BACKOFF, backoffDelay, systemTimer, type BackoffPolicy, type Timer } from "./backoff";
export {
  OutboundDelivery,
  type DeliveryFailureInfo,
  type InFlightInfo,
  type OutboundDeliveryOptions,
  type PduResult,
  type SendBody,
  type SendFn,
  type SendResponse,
} from "./delivery";
export {
  MAX_EDUS_PER_TXN,
  MAX_PDUS_PER_TXN,
  OutboundQueue,
  QueueError,
  type OutboundQueueOptions,
  type OutboundTransaction,
  type QueueItem,
  type QueueItemKind,
  type TransactionLimits,
} from "./outboundQueue";
