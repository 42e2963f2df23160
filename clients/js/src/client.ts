/**
 * `MelodyClient`: one logical connection to a melody hub over as many WebSockets as outages
 * need. Speaks the JSON protocol of docs/protocol.md: requests with ids and acks, the hub's
 * requests (ids starting with "s"), topics with history and recovery, presence, token refresh.
 */

import { type BackoffOptions, backoffDelay } from "./backoff.js";
import { Emitter } from "./emitter.js";
import {
  ConnectionClosedError,
  QueueFullError,
  RequestError,
  TimeoutError,
  abortError,
} from "./errors.js";
import { type ClientInfo, type Publication, Subscription } from "./subscription.js";
import { REFRESH_MARGIN, refreshDelay, tokenExpiry } from "./token.js";

/** The states a client goes through; `closed` is final. */
export type State = "idle" | "connecting" | "connected" | "disconnected" | "closed";

/** Why the client is about to wait and retry: given to `shouldReconnect`. */
export interface DisconnectInfo {
  /** The close code (1006 when the socket never opened or dropped without one). */
  code: number;
  reason: string;
  /** Whether the socket had opened before it closed. */
  opened: boolean;
  /** Failed attempts in a row in this outage (0 after a drop of an open connection). */
  failures: number;
}

export interface ClientEvents {
  state: State;
  /** An attempt starts after `delay` milliseconds (`attempt` counts from 1 per outage). */
  connecting: { attempt: number; delay: number };
  /** A socket opened (and resubscribes were sent); `reconnect` is false the first time. */
  connected: { reconnect: boolean };
  /** A socket closed; `willReconnect` says whether the client tries again. */
  disconnected: { code: number; reason: string; willReconnect: boolean };
  /** After each (re)subscribe: whether what was missed was recovered (null: no history). */
  recovered: { topic: string; recovered: boolean | null };
  /** The client stopped for good: `close()`, a veto, a refusal, or `maxAttempts`. */
  closed: { code: number; reason: string; error?: Error };
  /** A token refresh failed (it is retried halfway to `exp`). */
  error: Error;
}

/** What to do with a message sent while disconnected when the queue is full. */
export type QueuePolicy = "drop-oldest" | "drop-newest" | "reject";

/** The `WebSocket` constructor the client uses (the global one by default). */
export type WebSocketLike = new (url: string, protocols?: string | string[]) => WebSocket;

export interface ClientOptions {
  /** Reconnect after an outage (true). */
  reconnect?: boolean;
  /** Delays between attempts: full jitter under `min(max, initial * factor ** n)` ms. */
  backoff?: BackoffOptions;
  /** Give up after this many failed attempts in a row (unlimited). */
  maxAttempts?: number;
  /** Veto hook: return false to stop reconnecting after `info`. */
  shouldReconnect?: (info: DisconnectInfo) => boolean;
  /**
   * Asked after a socket that closed before opening (a browser cannot see the HTTP status of
   * a refused upgrade): resolve with the HTTP status the hub would give this URL (e.g. from
   * an endpoint of your application checking the token) or undefined when unknown. A 4xx
   * other than 408/429 stops reconnecting, like melody's Python client.
   */
  probe?: (url: string) => Promise<number | undefined> | number | undefined;
  /** Milliseconds before an attempt that has not opened is abandoned (10 000). */
  connectTimeout?: number;
  /**
   * Dead-connection detection: when nothing arrives for `interval` ms, send a request of
   * `type` (if given) and close the socket (code 4000) unless something arrives within
   * `timeout` ms more. The browser hides the hub's protocol pings: only messages count.
   * Off by default (a quiet topic is not a dead one).
   */
  heartbeat?: { interval: number; timeout: number; type?: string };
  /** Messages kept while disconnected (`max`, 1000) and what a full queue does. */
  queue?: { max?: number; policy?: QueuePolicy };
  /** Default request timeout in ms (10 000); 0 waits for ever. */
  requestTimeout?: number;
  /** A JWT presented as the `tokenParam` query parameter (browsers cannot set headers). */
  token?: string;
  /** The query parameter carrying the token ("token", `JWTAuth`'s default). */
  tokenParam?: string;
  /** Returns a fresh token: called before `exp` (then sent as `refresh`), after a 4001
   * close, and before a reconnect when the token in force expires within 30 s. */
  refreshToken?: () => string | Promise<string>;
  /** Subprotocols offered. */
  protocols?: string | string[];
  /** The WebSocket implementation (default: `globalThis.WebSocket`). */
  WebSocket?: WebSocketLike;
  /** Start connecting in the constructor (true); else call `connect()`. */
  autoConnect?: boolean;
  /** Injectable randomness for the jitter (tests). */
  random?: () => number;
}

/** A request of the hub (`session.call`): answer with a value, or throw `RequestError`. */
export type RouteHandler = (data: any) => unknown;

interface Pending {
  /** Handed to a socket (else still in the queue: it survives an outage). */
  sent: boolean;
  resolve: (data: unknown) => void;
  reject: (error: Error) => void;
  cleanup: () => void;
}

type Outgoing = string | ArrayBufferLike | ArrayBufferView | Blob;

interface Queued {
  payload: Outgoing;
  /** The request id this frame carries, if it is a request. */
  id?: number;
}

const CLOSE_NO_TRAFFIC = 4000;
const CLOSE_TOKEN_EXPIRED = 4001;

function isFatalStatus(status: number | undefined): boolean {
  return status !== undefined && status >= 400 && status < 500 && status !== 408 && status !== 429;
}

export class MelodyClient {
  /** The URL given (the token parameter is added per attempt). */
  readonly url: string;
  /** Counters: attempts, failures, reconnects, received and sent messages, dropped. */
  readonly stats = { attempts: 0, failures: 0, reconnects: 0, received: 0, sent: 0, dropped: 0 };
  /** The token in force (the last one refreshed). */
  token: string | undefined;
  readonly #options: ClientOptions;
  readonly #events = new Emitter<ClientEvents>();
  readonly #types = new Emitter<Record<string, any>>();
  readonly #routes = new Map<string, RouteHandler>();
  readonly #pending = new Map<number, Pending>();
  readonly #subs = new Map<string, Subscription<any>>();
  #queue: Queued[] = [];
  // Subscriptions whose first subscribe has not been answered (not resubscribed on open).
  readonly #initial = new Set<Subscription<any>>();
  #ws: WebSocket | undefined;
  #state: State = "idle";
  #seq = 0;
  #failures = 0;
  #everConnected = false;
  #retryTimer: ReturnType<typeof setTimeout> | undefined;
  #openTimer: ReturnType<typeof setTimeout> | undefined;
  #beatTimer: ReturnType<typeof setTimeout> | undefined;
  #refreshTimer: ReturnType<typeof setTimeout> | undefined;
  #lastTraffic = 0;
  #lastCode = 1006;
  #lastReason = "";
  #waiters = new Set<{ resolve: () => void; reject: (e: Error) => void }>();

  constructor(url: string, options: ClientOptions = {}) {
    this.url = url;
    this.#options = options;
    this.token = options.token ?? MelodyClient.#tokenIn(url, options.tokenParam ?? "token");
    if (options.autoConnect ?? true) {
      // Errors surface through connect()'s callers and the "closed" event.
      this.connect().catch(() => undefined);
    }
  }

  static #tokenIn(url: string, param: string): string | undefined {
    try {
      return new URL(url).searchParams.get(param) ?? undefined;
    } catch {
      return undefined; // a relative URL: no token in it
    }
  }

  /** The current state. */
  get state(): State {
    return this.#state;
  }

  /** Listen to the client's own events (`state`, `connecting`, `connected`,
   * `disconnected`, `recovered`, `closed`, `error`); returns the function that stops it. */
  onEvent<K extends keyof ClientEvents>(event: K, fn: (value: ClientEvents[K]) => void) {
    return this.#events.on(event, fn);
  }

  /**
   * Call `fn(data, message)` for every JSON message from the hub whose `type` is `type`
   * (publications of subscribed topics go to their subscription instead). `"*"` gets every
   * JSON message, `"text"` every text message that is not JSON (the raw string), `"binary"`
   * every binary message (an ArrayBuffer). Returns the function that stops it.
   */
  on<T = any>(type: string, fn: (data: T, message: any) => void): () => void {
    return this.#types.on(type, (m: { data: T; message: unknown }) => fn(m.data, m.message));
  }

  /** Answer the hub's requests of `type` (`await session.call(type, data)` on the server):
   * return the answer (or a promise), throw `RequestError` to refuse with its message. */
  route(type: string, fn: RouteHandler): () => void {
    this.#routes.set(type, fn);
    return () => {
      if (this.#routes.get(type) === fn) this.#routes.delete(type);
    };
  }

  /** Resolve once connected (starting if idle); rejects if the client closes first or
   * `signal` aborts. */
  connect(options: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.#state === "closed") {
      return Promise.reject(new ConnectionClosedError(this.#lastCode, this.#lastReason));
    }
    if (this.#state === "idle") this.#attempt(0);
    return this.#whenConnected(options.signal);
  }

  #whenConnected(signal?: AbortSignal): Promise<void> {
    if (this.#state === "connected") return Promise.resolve();
    if (signal?.aborted) return Promise.reject(abortError(signal));
    return new Promise((resolve, reject) => {
      const waiter = {
        resolve: () => {
          signal?.removeEventListener("abort", onAbort);
          resolve();
        },
        reject: (e: Error) => {
          signal?.removeEventListener("abort", onAbort);
          reject(e);
        },
      };
      const onAbort = () => {
        this.#waiters.delete(waiter);
        reject(abortError(signal!));
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#waiters.add(waiter);
    });
  }

  /** Close for good (code 1000 by default): no more reconnects; pending requests reject. */
  close(code = 1000, reason = ""): void {
    if (this.#state === "closed") return;
    this.#finish(code, reason);
    const ws = this.#ws;
    this.#ws = undefined;
    if (ws !== undefined && ws.readyState <= 1) ws.close(code, reason);
  }

  // -- sending ------------------------------------------------------------------------------

  /** Send `message` JSON-encoded; queued while disconnected (see `queue`). */
  send(message: unknown): void {
    this.#send(JSON.stringify(message));
  }

  /** Send a text message as it is. */
  sendText(text: string): void {
    this.#send(text);
  }

  /** Send a binary message. */
  sendBinary(data: ArrayBufferLike | ArrayBufferView | Blob): void {
    this.#send(data);
  }

  #send(payload: Outgoing, id?: number): void {
    if (this.#state === "closed") throw new ConnectionClosedError(this.#lastCode, this.#lastReason);
    const ws = this.#ws;
    if (this.#state === "connected" && ws !== undefined && ws.readyState === 1) {
      ws.send(payload as string);
      this.stats.sent++;
      if (id !== undefined) {
        const pending = this.#pending.get(id);
        if (pending !== undefined) pending.sent = true;
      }
      return;
    }
    const max = this.#options.queue?.max ?? 1000;
    if (this.#queue.length >= max) {
      const policy = this.#options.queue?.policy ?? "drop-oldest";
      if (policy === "reject") throw new QueueFullError(`send queue full (${max})`);
      this.stats.dropped++;
      if (policy === "drop-newest") {
        if (id !== undefined) throw new QueueFullError(`send queue full (${max})`);
        return;
      }
      const oldest = this.#queue.shift();
      if (oldest?.id !== undefined) {
        const pending = this.#pending.get(oldest.id);
        pending?.cleanup();
        pending?.reject(new QueueFullError(`send queue full (${max}): dropped`));
      }
    }
    this.#queue.push(id === undefined ? { payload } : { payload, id });
  }

  /**
   * Ask the hub (a route of type `type`) and resolve with its reply's `data`; rejects with
   * `RequestError` (the hub's error), `TimeoutError` (no reply within `timeout` ms, counted
   * from this call: waiting for a connection included), `ConnectionClosedError` (the socket
   * closed before the reply: the handler may or may not have run; requests are not
   * retried), `QueueFullError`, or the abort reason of `signal`.
   */
  request<T = any>(
    type: string,
    data?: unknown,
    options: { timeout?: number; signal?: AbortSignal } = {},
  ): Promise<T> {
    const { signal } = options;
    if (signal?.aborted) return Promise.reject(abortError(signal));
    const id = ++this.#seq;
    const timeout = options.timeout ?? this.#options.requestTimeout ?? 10_000;
    return new Promise<T>((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const onAbort = () => {
        this.#pending.get(id)?.cleanup();
        reject(abortError(signal!));
      };
      const entry: Pending = {
        sent: false,
        resolve: resolve as (data: unknown) => void,
        reject,
        cleanup: () => {
          this.#pending.delete(id);
          if (timer !== undefined) clearTimeout(timer);
          signal?.removeEventListener("abort", onAbort);
        },
      };
      this.#pending.set(id, entry);
      if (timeout > 0) {
        timer = setTimeout(() => {
          entry.cleanup();
          reject(new TimeoutError(`no reply to ${type} within ${timeout} ms`));
        }, timeout);
      }
      signal?.addEventListener("abort", onAbort, { once: true });
      try {
        this.#send(JSON.stringify({ type, id, data: data ?? null }), id);
      } catch (error) {
        entry.cleanup();
        reject(error as Error);
      }
    });
  }

  /** Publish `data` to `topic` (the built-in `publish`); resolves with the hub's count. */
  publish(topic: string, data: unknown, options?: { timeout?: number; signal?: AbortSignal }) {
    return this.request<number>("publish", { topic, data }, options);
  }

  // -- topics -------------------------------------------------------------------------------

  /**
   * Subscribe to `topic` for as long as the client lives: restored after every reconnect,
   * from the last offset and epoch for a topic with history (`recover`, true). Resolves once
   * the hub accepted (after the publications the reply carries were delivered); rejects
   * with `RequestError` (e.g. "forbidden"), `TimeoutError`, or the abort reason.
   */
  async subscribe<T = unknown>(
    topic: string,
    options: {
      recover?: boolean;
      /** Where to start from, both or neither (e.g. a position stored by the page). */
      offset?: number;
      epoch?: string;
      timeout?: number;
      signal?: AbortSignal;
      maxBuffer?: number;
    } = {},
  ): Promise<Subscription<T>> {
    if (this.#subs.has(topic)) throw new Error(`already subscribed to ${topic}`);
    const sub = new Subscription<T>(topic, this.#host, options.recover ?? true, options.maxBuffer);
    if (options.offset !== undefined && options.epoch !== undefined) {
      sub.offset = options.offset;
      sub.epoch = options.epoch;
    }
    this.#subs.set(topic, sub);
    this.#initial.add(sub);
    try {
      const reply = await this.request("subscribe", sub.position(), options);
      sub.subscribed(reply, false);
      this.#events.emit("recovered", { topic, recovered: sub.recovered });
    } catch (error) {
      if (this.#subs.get(topic) === sub) this.#subs.delete(topic);
      sub.end(error as Error);
      if (!(error instanceof RequestError) && this.#state === "connected") {
        // Aborted or timed out: the hub may have subscribed all the same; undo it.
        this.request("unsubscribe", topic).catch(() => undefined);
      }
      throw error;
    } finally {
      this.#initial.delete(sub);
    }
    return sub;
  }

  /** The subscription to `topic`, if any. */
  subscription<T = unknown>(topic: string): Subscription<T> | undefined {
    return this.#subs.get(topic) as Subscription<T> | undefined;
  }

  readonly #host = {
    request: (type: string, data: unknown, options?: { timeout?: number }) =>
      this.request(type, data, options),
    resubscribe: (sub: Subscription<any>) => this.#resubscribe(sub, false),
    forget: (sub: Subscription<any>) => {
      if (this.#subs.get(sub.topic) === sub) this.#subs.delete(sub.topic);
    },
  };

  #resubscribe(sub: Subscription<any>, afterReconnect: boolean): void {
    this.request("subscribe", sub.position()).then(
      (reply) => {
        if (sub.ended) return;
        sub.subscribed(reply, afterReconnect);
        this.#events.emit("recovered", { topic: sub.topic, recovered: sub.recovered });
      },
      (error: Error) => {
        if (error instanceof RequestError && error.message === "history unavailable") {
          // The hub's history store is down for now: try again, the position is kept.
          setTimeout(() => {
            if (!sub.ended && this.#state === "connected") this.#resubscribe(sub, afterReconnect);
          }, 1000);
          return;
        }
        if (error instanceof RequestError) {
          // Refused now (e.g. no longer authorized): the subscription ends with the error.
          this.#host.forget(sub);
          sub.end(error);
        }
        // A connection error: the next connection resubscribes.
      },
    );
  }

  // -- the connection -----------------------------------------------------------------------

  #setState(state: State): void {
    if (this.#state === state) return;
    this.#state = state;
    this.#events.emit("state", state);
  }

  #urlWithToken(): string {
    if (this.token === undefined) return this.url;
    const url = new URL(this.url, (globalThis as any).location?.href);
    url.searchParams.set(this.#options.tokenParam ?? "token", this.token);
    return url.toString();
  }

  #attempt(delay: number): void {
    this.#setState("connecting");
    this.#events.emit("connecting", { attempt: this.#failures + 1, delay });
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      void this.#open();
    }, delay);
  }

  async #open(): Promise<void> {
    // A token that expires within the margin is renewed before it is presented.
    const refresh = this.#options.refreshToken;
    if (refresh !== undefined && this.token !== undefined) {
      const exp = tokenExpiry(this.token);
      if (exp !== undefined && exp - Date.now() < REFRESH_MARGIN) {
        try {
          this.token = await refresh();
        } catch (error) {
          this.#events.emit("error", error as Error);
        }
      }
    }
    if (this.#state !== "connecting") return; // closed meanwhile
    const Impl = this.#options.WebSocket ?? (globalThis.WebSocket as WebSocketLike | undefined);
    if (Impl === undefined) {
      this.#finish(1006, "no WebSocket implementation: pass options.WebSocket");
      return;
    }
    this.stats.attempts++;
    let ws: WebSocket;
    try {
      ws = new Impl(this.#urlWithToken(), this.#options.protocols);
    } catch (error) {
      this.#finish(1006, String(error), error as Error);
      return;
    }
    ws.binaryType = "arraybuffer";
    this.#ws = ws;
    let opened = false;
    this.#openTimer = setTimeout(() => {
      if (!opened && ws.readyState <= 1) ws.close(CLOSE_NO_TRAFFIC, "connect timeout");
      this.#dropped(ws, false, 1006, "connect timeout");
    }, this.#options.connectTimeout ?? 10_000);
    ws.onopen = () => {
      opened = true;
      clearTimeout(this.#openTimer);
      this.#opened(ws);
    };
    ws.onmessage = (event: MessageEvent) => this.#received(ws, event.data);
    ws.onclose = (event: CloseEvent) => this.#dropped(ws, opened, event.code, event.reason);
    ws.onerror = () => {
      // Browsers follow an error with a close event; some implementations (Node 20's
      // undici) do not when the socket never opened: count the failure on the error.
      if (!opened) this.#dropped(ws, false, 1006, "");
    };
  }

  #opened(ws: WebSocket): void {
    if (ws !== this.#ws) return;
    const reconnect = this.#everConnected;
    if (reconnect) this.stats.reconnects++;
    this.#everConnected = true;
    this.#failures = 0;
    this.#setState("connected");
    // Resubscribes go first, then what was queued: the hub handles them in that order.
    for (const sub of this.#subs.values()) {
      if (!this.#initial.has(sub)) this.#resubscribe(sub, true);
    }
    const queued = this.#queue;
    this.#queue = [];
    for (const item of queued) this.#send(item.payload, item.id);
    this.#beat();
    this.#scheduleRefresh();
    this.#events.emit("connected", { reconnect });
    for (const waiter of this.#waiters) waiter.resolve();
    this.#waiters.clear();
  }

  // Dead-connection detection costs one timer per interval, not one per message: a message
  // only records the time, and the timer, when it fires, waits out the rest of the interval.
  #beat(): void {
    const heartbeat = this.#options.heartbeat;
    if (heartbeat === undefined) return;
    clearTimeout(this.#beatTimer);
    const ws = this.#ws;
    const quiet = (): void => {
      if (ws !== this.#ws || ws === undefined) return;
      const idle = Date.now() - this.#lastTraffic;
      if (idle < heartbeat.interval) {
        this.#beatTimer = setTimeout(quiet, heartbeat.interval - idle);
        return;
      }
      const asked = Date.now();
      if (heartbeat.type !== undefined) {
        // Any reply (even an error for an unknown type) is traffic.
        this.request(heartbeat.type, null, { timeout: heartbeat.timeout }).catch(() => undefined);
      }
      this.#beatTimer = setTimeout(() => {
        if (ws !== this.#ws) return;
        if (this.#lastTraffic >= asked) {
          this.#beat(); // something came: a new interval
          return;
        }
        ws.close(CLOSE_NO_TRAFFIC, "no traffic");
        this.#dropped(ws, true, 1006, "no traffic");
      }, heartbeat.timeout);
    };
    this.#lastTraffic = Date.now();
    this.#beatTimer = setTimeout(quiet, heartbeat.interval);
  }

  #scheduleRefresh(): void {
    clearTimeout(this.#refreshTimer);
    const refresh = this.#options.refreshToken;
    const exp = this.token === undefined ? undefined : tokenExpiry(this.token);
    if (refresh === undefined || exp === undefined) return;
    const ws = this.#ws;
    const run = async (): Promise<void> => {
      if (ws !== this.#ws || this.#state !== "connected") return;
      try {
        const token = await refresh();
        await this.request("refresh", { token });
        this.token = token;
        this.#scheduleRefresh();
      } catch (error) {
        this.#events.emit("error", error as Error);
        const left = exp - Date.now();
        if (left > 1000) this.#refreshTimer = setTimeout(run, left / 2);
      }
    };
    this.#refreshTimer = setTimeout(run, refreshDelay(exp, Date.now()));
  }

  #received(ws: WebSocket, data: unknown): void {
    if (ws !== this.#ws) return;
    this.stats.received++;
    this.#lastTraffic = Date.now();
    if (typeof data !== "string") {
      this.#types.emit("binary", { data, message: data });
      return;
    }
    let message: any;
    try {
      message = JSON.parse(data);
    } catch {
      this.#types.emit("text", { data, message: data });
      return;
    }
    if (message === null || typeof message !== "object" || Array.isArray(message)) {
      this.#types.emit("text", { data, message: data });
      return;
    }
    const { type, id } = message;
    if (type === undefined && "ok" in message && typeof id === "number") {
      const pending = this.#pending.get(id);
      if (pending === undefined) return; // late (timed out, aborted)
      pending.cleanup();
      if (message.ok) pending.resolve(message.data);
      else pending.reject(new RequestError(String(message.error)));
      return;
    }
    if (typeof type === "string" && typeof id === "string" && id.startsWith("s")) {
      void this.#answer(ws, type, id, message.data);
      return;
    }
    if (typeof message.topic === "string") {
      const sub = this.#subs.get(message.topic);
      if (sub !== undefined) {
        if (type === "publish") {
          const publication: Publication = { topic: message.topic, data: message.data };
          if (typeof message.offset === "number") publication.offset = message.offset;
          sub.feed(publication);
          return;
        }
        if (type === "join" || type === "leave") {
          sub.presenceEvent(type, message.info as ClientInfo);
          return;
        }
      }
    }
    this.#types.emit("*", { data: message, message });
    if (typeof type === "string") this.#types.emit(type, { data: message.data, message });
  }

  async #answer(ws: WebSocket, type: string, id: string, data: unknown): Promise<void> {
    const fn = this.#routes.get(type);
    let reply: unknown;
    if (fn === undefined) {
      reply = { id, ok: false, error: "unknown type" };
    } else {
      try {
        reply = { id, ok: true, data: (await fn(data)) ?? null };
      } catch (error) {
        const text = error instanceof RequestError ? error.message : "internal error";
        if (!(error instanceof RequestError)) setTimeout(() => { throw error; });
        reply = { id, ok: false, error: text };
      }
    }
    // Only on the connection that asked: another one has another session.
    if (ws === this.#ws && ws.readyState === 1) {
      let text: string;
      try {
        text = JSON.stringify(reply);
      } catch {
        text = JSON.stringify({ id, ok: false, error: "reply not serializable" });
      }
      ws.send(text);
      this.stats.sent++;
    }
  }

  #dropped(ws: WebSocket, opened: boolean, code: number, reason: string): void {
    if (ws !== this.#ws) return;
    this.#ws = undefined;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    if (ws.readyState <= 1) {
      try {
        ws.close();
      } catch {
        // some implementations throw for a socket that is still connecting
      }
    }
    clearTimeout(this.#openTimer);
    clearTimeout(this.#beatTimer);
    clearTimeout(this.#refreshTimer);
    this.#lastCode = code;
    this.#lastReason = reason;
    const closed = new ConnectionClosedError(code, reason);
    for (const pending of [...this.#pending.values()]) {
      // Requests still queued survive to the next connection; whether a sent one was
      // handled cannot be known: it rejects (never retried, like the Python client).
      if (!pending.sent) continue;
      pending.cleanup();
      pending.reject(closed);
    }
    if (this.#state === "closed") return;
    if (!opened) {
      this.#failures++;
      this.stats.failures++;
    }
    void this.#decide({ code, reason, opened, failures: this.#failures });
  }

  async #decide(info: DisconnectInfo): Promise<void> {
    const options = this.#options;
    let stop: string | undefined;
    let error: Error | undefined;
    if (!(options.reconnect ?? true)) stop = "reconnect is off";
    else if (options.maxAttempts !== undefined && info.failures >= options.maxAttempts) {
      stop = `gave up after ${info.failures} failed attempts`;
    }
    if (stop === undefined && info.code === CLOSE_TOKEN_EXPIRED) {
      // The hub ended the session at the token's exp: a new token or nothing.
      stop = await this.#renewToken();
    }
    if (stop === undefined && !info.opened) {
      // A browser hides a refused upgrade's status: an expired token is one we can see,
      // the probe (if given) tells the rest.
      const exp = this.token === undefined ? undefined : tokenExpiry(this.token);
      if (exp !== undefined && exp <= Date.now()) stop = await this.#renewToken();
      if (stop === undefined && options.probe !== undefined) {
        let status: number | undefined;
        try {
          status = await options.probe(this.#urlWithToken());
        } catch {
          status = undefined; // the probe failed too: the network, retry
        }
        if (isFatalStatus(status)) stop = `refused (HTTP ${status})`;
      }
    }
    if (stop === undefined && options.shouldReconnect?.(info) === false) stop = "vetoed";
    if (this.#state === "closed") return;
    this.#events.emit("disconnected", {
      code: info.code,
      reason: info.reason,
      willReconnect: stop === undefined,
    });
    if (stop !== undefined) {
      if (error === undefined) error = new ConnectionClosedError(info.code, stop);
      this.#finish(info.code, stop, error);
      return;
    }
    this.#setState("disconnected");
    const delay = backoffDelay(
      Math.max(0, this.#failures - (info.opened ? 0 : 1)),
      options.backoff,
      options.random,
    );
    this.#attempt(delay);
  }

  async #renewToken(): Promise<string | undefined> {
    const refresh = this.#options.refreshToken;
    if (refresh === undefined) return "token refused";
    try {
      this.token = await refresh();
      return undefined;
    } catch (error) {
      this.#events.emit("error", error as Error);
      return "token refused";
    }
  }

  #finish(code: number, reason: string, error?: Error): void {
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#openTimer);
    clearTimeout(this.#beatTimer);
    clearTimeout(this.#refreshTimer);
    this.#lastCode = code;
    this.#lastReason = reason;
    this.#setState("closed");
    const closed = new ConnectionClosedError(code, reason);
    for (const pending of [...this.#pending.values()]) {
      pending.cleanup();
      pending.reject(closed);
    }
    this.#queue = [];
    for (const waiter of this.#waiters) waiter.reject(error ?? closed);
    this.#waiters.clear();
    for (const sub of this.#subs.values()) sub.end(code === 1000 ? undefined : closed);
    this.#subs.clear();
    this.#events.emit("closed", error === undefined ? { code, reason } : { code, reason, error });
  }
}
