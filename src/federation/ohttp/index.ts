export * from "./bhttp";
export * from "./constants";
export * from "./encapsulation";
export * from "./errors";
export * from "./gateway";
export * from "./gatewayKeys";
export * from "./keyConfig";
export * from "./relay";
export { ReplayCache } from "./replayCache";
