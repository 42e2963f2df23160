/**
 * melody's browser client: `new MelodyClient(url, options)`. Zero dependencies; runs in
 * browsers, in Node 22+ (global WebSocket) and wherever a WebSocket constructor is given.
 */
export { MelodyClient } from "./client.js";
export type {
  ClientEvents,
  ClientOptions,
  DisconnectInfo,
  QueuePolicy,
  RouteHandler,
  State,
  WebSocketLike,
} from "./client.js";
export { Subscription } from "./subscription.js";
export type { ClientInfo, Publication, SubscribeReply, SubscriptionEvents } from "./subscription.js";
export { backoffDelay } from "./backoff.js";
export type { BackoffOptions } from "./backoff.js";
export { tokenExpiry, refreshDelay, REFRESH_MARGIN } from "./token.js";
export {
  ConnectionClosedError,
  QueueFullError,
  RequestError,
  TimeoutError,
} from "./errors.js";
