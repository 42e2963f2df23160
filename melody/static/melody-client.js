// melody-ws-client 0.1.0: built from clients/js/src by `npm run build`; do not edit.
// src/backoff.ts
function backoffDelay(n, options = {}, random = Math.random) {
  const initial = options.initial ?? 100;
  const max = options.max ?? 1e4;
  const factor = options.factor ?? 2;
  const cap = Math.min(max, initial * Math.pow(factor, Math.min(n, 64)));
  return Math.floor(random() * cap);
}

// src/emitter.ts
var Emitter = class {
  #listeners = /* @__PURE__ */ new Map();
  /** Call `fn` on every `event`; returns a function that stops it. */
  on(event, fn) {
    let set = this.#listeners.get(event);
    if (set === void 0) this.#listeners.set(event, set = /* @__PURE__ */ new Set());
    set.add(fn);
    return () => this.off(event, fn);
  }
  /** Call `fn` on the next `event` only. */
  once(event, fn) {
    const off = this.on(event, (value) => {
      off();
      fn(value);
    });
    return off;
  }
  off(event, fn) {
    this.#listeners.get(event)?.delete(fn);
  }
  /** Call the listeners of `event` in order; one that throws is reported, not propagated. */
  emit(event, value) {
    const set = this.#listeners.get(event);
    if (set === void 0) return;
    for (const fn of [...set]) {
      try {
        fn(value);
      } catch (error) {
        setTimeout(() => {
          throw error;
        });
      }
    }
  }
};

// src/errors.ts
var RequestError = class extends Error {
  name = "RequestError";
};
var TimeoutError = class extends Error {
  name = "TimeoutError";
};
var ConnectionClosedError = class extends Error {
  constructor(code, reason) {
    super(`connection closed (${code}${reason ? " " + reason : ""})`);
    this.code = code;
    this.reason = reason;
  }
  code;
  reason;
  name = "ConnectionClosedError";
};
var QueueFullError = class extends Error {
  name = "QueueFullError";
};
function abortError(signal) {
  const reason = signal.reason;
  if (reason instanceof Error) return reason;
  const error = new Error("aborted");
  error.name = "AbortError";
  return error;
}

// src/subscription.ts
var Subscription = class {
  constructor(topic, host, recover = true, maxBuffer = 1e4) {
    this.topic = topic;
    this.host = host;
    this.recover = recover;
    this.maxBuffer = maxBuffer;
  }
  topic;
  host;
  recover;
  maxBuffer;
  /** The last offset delivered (or the stream's offset at subscribe); undefined without. */
  offset;
  /** The stream's epoch at the last (re)subscribe. */
  epoch;
  /** See the `subscribed` event. */
  recovered = null;
  /** How many times it was restored after a reconnect. */
  resubscribes = 0;
  /** Publications dropped because their offset was not above `offset`. */
  duplicates = 0;
  /** Offset jumps seen (each repaired by a resubscribe from the position). */
  gaps = 0;
  /** Publications that found the iterator's buffer full (`maxBuffer`) and were dropped. */
  dropped = 0;
  #events = new Emitter();
  #held;
  #buffer = [];
  #iterating = 0;
  // Publications are kept for `for await` from the start (none is lost between the
  // subscribe and the loop), unless the application listens to "publication" instead.
  #buffering = true;
  #wake;
  #ended;
  /** Listen to `publication`, `subscribed`, `join`, `leave`, `ended`. */
  on(event, fn) {
    if (event === "publication" && this.#iterating === 0) {
      this.#buffering = false;
      this.#buffer = [];
    }
    return this.#events.on(event, fn);
  }
  /** Whether the subscription has ended. */
  get ended() {
    return this.#ended !== void 0;
  }
  /** Publish `data` to this topic (the `publish` request); resolves with the hub's count. */
  publish(data, options) {
    return this.host.request("publish", { topic: this.topic, data }, options);
  }
  /** Who is subscribed (a topic with `presence=True`), by session id. */
  presence(options) {
    return this.host.request("presence", this.topic, options);
  }
  /** How many sessions and distinct users are subscribed. */
  presenceStats(options) {
    return this.host.request("presence_stats", this.topic, options);
  }
  /** End the subscription here and on the hub. */
  async unsubscribe(options) {
    if (this.#ended) return;
    this.end();
    this.host.forget(this);
    await this.host.request("unsubscribe", this.topic, options).catch((error) => {
      if (!(error instanceof ConnectionClosedError)) throw error;
    });
  }
  // -- what the client calls ----------------------------------------------------------------
  /** The `data` of the subscribe request: the topic and, to recover, the position. */
  position() {
    if (this.recover && this.offset !== void 0 && this.epoch !== void 0) {
      return { topic: this.topic, offset: this.offset, epoch: this.epoch };
    }
    return { topic: this.topic };
  }
  /** Apply the hub's reply to a (re)subscribe. */
  subscribed(reply, resubscribe) {
    const held = this.#held;
    this.#held = void 0;
    if (reply === null || typeof reply !== "object") {
      this.recovered = null;
    } else {
      const r = reply;
      const asked = typeof this.position() === "object" && "offset" in this.position();
      if (!asked || !r.recovered) this.offset = void 0;
      this.recovered = asked ? Boolean(r.recovered) : null;
      for (const item of r.publications ?? []) {
        this.feed({ topic: this.topic, data: item.data, offset: item.offset });
      }
      this.epoch = typeof r.epoch === "string" ? r.epoch : void 0;
      if (typeof r.offset === "number" && (this.offset === void 0 || this.offset < r.offset)) {
        this.offset = r.offset;
      }
    }
    for (const publication of held ?? []) this.feed(publication);
    if (resubscribe) this.resubscribes++;
    this.#events.emit("subscribed", { recovered: this.recovered, resubscribe });
  }
  /** A publication of this topic from the hub. */
  feed(publication) {
    if (this.#ended) return;
    const offset = publication.offset;
    if (typeof offset === "number") {
      if (this.#held !== void 0) {
        this.#held.push(publication);
        return;
      }
      if (this.offset !== void 0 && offset <= this.offset) {
        this.duplicates++;
        return;
      }
      if (this.offset !== void 0 && offset > this.offset + 1 && this.recover) {
        this.gaps++;
        this.#held = [publication];
        this.host.resubscribe(this);
        return;
      }
      this.offset = offset;
    }
    this.#events.emit("publication", publication);
    if (this.#buffering || this.#iterating > 0) {
      if (this.#buffer.length >= this.maxBuffer) this.dropped++;
      else this.#buffer.push(publication);
      this.#wake?.();
    }
  }
  /** A join or leave of another session. */
  presenceEvent(kind, info) {
    this.#events.emit(kind, info);
  }
  /** No more publications; `for await` ends (or throws `error`) once the buffer is empty. */
  end(error) {
    if (this.#ended) return;
    this.#ended = error === void 0 ? {} : { error };
    this.#held = void 0;
    this.#events.emit("ended", this.#ended);
    this.#wake?.();
  }
  /** Publications from now on, in order; ends after `unsubscribe`, throws when refused. */
  async *[Symbol.asyncIterator]() {
    this.#iterating++;
    this.#buffering = true;
    try {
      for (; ; ) {
        const next = this.#buffer.shift();
        if (next !== void 0) {
          yield next;
          continue;
        }
        if (this.#ended) {
          if (this.#ended.error) throw this.#ended.error;
          return;
        }
        await new Promise((resolve) => this.#wake = resolve);
        this.#wake = void 0;
      }
    } finally {
      this.#iterating--;
    }
  }
};

// src/token.ts
var REFRESH_MARGIN = 3e4;
function base64UrlDecode(text) {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const padded = b64 + "=".repeat((4 - b64.length % 4) % 4);
  const binary = atob(padded);
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}
function tokenExpiry(token) {
  const parts = token.split(".");
  if (parts.length !== 3) return void 0;
  try {
    const claims = JSON.parse(base64UrlDecode(parts[1] ?? ""));
    if (claims !== null && typeof claims === "object") {
      const exp = claims.exp;
      if (typeof exp === "number" && Number.isFinite(exp)) return exp * 1e3;
    }
  } catch {
  }
  return void 0;
}
function refreshDelay(exp, now) {
  const remaining = exp - now;
  return Math.max(remaining - REFRESH_MARGIN, remaining * 2 / 3, 0);
}

// src/client.ts
var CLOSE_NO_TRAFFIC = 4e3;
var CLOSE_TOKEN_EXPIRED = 4001;
function isFatalStatus(status) {
  return status !== void 0 && status >= 400 && status < 500 && status !== 408 && status !== 429;
}
var MelodyClient = class _MelodyClient {
  /** The URL given (the token parameter is added per attempt). */
  url;
  /** Counters: attempts, failures, reconnects, received and sent messages, dropped. */
  stats = { attempts: 0, failures: 0, reconnects: 0, received: 0, sent: 0, dropped: 0 };
  /** The token in force (the last one refreshed). */
  token;
  #options;
  #events = new Emitter();
  #types = new Emitter();
  #routes = /* @__PURE__ */ new Map();
  #pending = /* @__PURE__ */ new Map();
  #subs = /* @__PURE__ */ new Map();
  #queue = [];
  // Subscriptions whose first subscribe has not been answered (not resubscribed on open).
  #initial = /* @__PURE__ */ new Set();
  #ws;
  #state = "idle";
  #seq = 0;
  #failures = 0;
  #everConnected = false;
  #retryTimer;
  #openTimer;
  #beatTimer;
  #refreshTimer;
  #lastTraffic = 0;
  #lastCode = 1006;
  #lastReason = "";
  #waiters = /* @__PURE__ */ new Set();
  constructor(url, options = {}) {
    this.url = url;
    this.#options = options;
    this.token = options.token ?? _MelodyClient.#tokenIn(url, options.tokenParam ?? "token");
    if (options.autoConnect ?? true) {
      this.connect().catch(() => void 0);
    }
  }
  static #tokenIn(url, param) {
    try {
      return new URL(url).searchParams.get(param) ?? void 0;
    } catch {
      return void 0;
    }
  }
  /** The current state. */
  get state() {
    return this.#state;
  }
  /** Listen to the client's own events (`state`, `connecting`, `connected`,
   * `disconnected`, `recovered`, `closed`, `error`); returns the function that stops it. */
  onEvent(event, fn) {
    return this.#events.on(event, fn);
  }
  /**
   * Call `fn(data, message)` for every JSON message from the hub whose `type` is `type`
   * (publications of subscribed topics go to their subscription instead). `"*"` gets every
   * JSON message, `"text"` every text message that is not JSON (the raw string), `"binary"`
   * every binary message (an ArrayBuffer). Returns the function that stops it.
   */
  on(type, fn) {
    return this.#types.on(type, (m) => fn(m.data, m.message));
  }
  /** Answer the hub's requests of `type` (`await session.call(type, data)` on the server):
   * return the answer (or a promise), throw `RequestError` to refuse with its message. */
  route(type, fn) {
    this.#routes.set(type, fn);
    return () => {
      if (this.#routes.get(type) === fn) this.#routes.delete(type);
    };
  }
  /** Resolve once connected (starting if idle); rejects if the client closes first or
   * `signal` aborts. */
  connect(options = {}) {
    if (this.#state === "closed") {
      return Promise.reject(new ConnectionClosedError(this.#lastCode, this.#lastReason));
    }
    if (this.#state === "idle") this.#attempt(0);
    return this.#whenConnected(options.signal);
  }
  #whenConnected(signal) {
    if (this.#state === "connected") return Promise.resolve();
    if (signal?.aborted) return Promise.reject(abortError(signal));
    return new Promise((resolve, reject) => {
      const waiter = {
        resolve: () => {
          signal?.removeEventListener("abort", onAbort);
          resolve();
        },
        reject: (e) => {
          signal?.removeEventListener("abort", onAbort);
          reject(e);
        }
      };
      const onAbort = () => {
        this.#waiters.delete(waiter);
        reject(abortError(signal));
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#waiters.add(waiter);
    });
  }
  /** Close for good (code 1000 by default): no more reconnects; pending requests reject. */
  close(code = 1e3, reason = "") {
    if (this.#state === "closed") return;
    this.#finish(code, reason);
    const ws = this.#ws;
    this.#ws = void 0;
    if (ws !== void 0 && ws.readyState <= 1) ws.close(code, reason);
  }
  // -- sending ------------------------------------------------------------------------------
  /** Send `message` JSON-encoded; queued while disconnected (see `queue`). */
  send(message) {
    this.#send(JSON.stringify(message));
  }
  /** Send a text message as it is. */
  sendText(text) {
    this.#send(text);
  }
  /** Send a binary message. */
  sendBinary(data) {
    this.#send(data);
  }
  #send(payload, id) {
    if (this.#state === "closed") throw new ConnectionClosedError(this.#lastCode, this.#lastReason);
    const ws = this.#ws;
    if (this.#state === "connected" && ws !== void 0 && ws.readyState === 1) {
      ws.send(payload);
      this.stats.sent++;
      if (id !== void 0) {
        const pending = this.#pending.get(id);
        if (pending !== void 0) pending.sent = true;
      }
      return;
    }
    const max = this.#options.queue?.max ?? 1e3;
    if (this.#queue.length >= max) {
      const policy = this.#options.queue?.policy ?? "drop-oldest";
      if (policy === "reject") throw new QueueFullError(`send queue full (${max})`);
      this.stats.dropped++;
      if (policy === "drop-newest") {
        if (id !== void 0) throw new QueueFullError(`send queue full (${max})`);
        return;
      }
      const oldest = this.#queue.shift();
      if (oldest?.id !== void 0) {
        const pending = this.#pending.get(oldest.id);
        pending?.cleanup();
        pending?.reject(new QueueFullError(`send queue full (${max}): dropped`));
      }
    }
    this.#queue.push(id === void 0 ? { payload } : { payload, id });
  }
  /**
   * Ask the hub (a route of type `type`) and resolve with its reply's `data`; rejects with
   * `RequestError` (the hub's error), `TimeoutError` (no reply within `timeout` ms, counted
   * from this call: waiting for a connection included), `ConnectionClosedError` (the socket
   * closed before the reply: the handler may or may not have run; requests are not
   * retried), `QueueFullError`, or the abort reason of `signal`.
   */
  request(type, data, options = {}) {
    const { signal } = options;
    if (signal?.aborted) return Promise.reject(abortError(signal));
    const id = ++this.#seq;
    const timeout = options.timeout ?? this.#options.requestTimeout ?? 1e4;
    return new Promise((resolve, reject) => {
      let timer;
      const onAbort = () => {
        this.#pending.get(id)?.cleanup();
        reject(abortError(signal));
      };
      const entry = {
        sent: false,
        resolve,
        reject,
        cleanup: () => {
          this.#pending.delete(id);
          if (timer !== void 0) clearTimeout(timer);
          signal?.removeEventListener("abort", onAbort);
        }
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
        reject(error);
      }
    });
  }
  /** Publish `data` to `topic` (the built-in `publish`); resolves with the hub's count. */
  publish(topic, data, options) {
    return this.request("publish", { topic, data }, options);
  }
  // -- topics -------------------------------------------------------------------------------
  /**
   * Subscribe to `topic` for as long as the client lives: restored after every reconnect,
   * from the last offset and epoch for a topic with history (`recover`, true). Resolves once
   * the hub accepted (after the publications the reply carries were delivered); rejects
   * with `RequestError` (e.g. "forbidden"), `TimeoutError`, or the abort reason.
   */
  async subscribe(topic, options = {}) {
    if (this.#subs.has(topic)) throw new Error(`already subscribed to ${topic}`);
    const sub = new Subscription(topic, this.#host, options.recover ?? true, options.maxBuffer);
    if (options.offset !== void 0 && options.epoch !== void 0) {
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
      sub.end(error);
      if (!(error instanceof RequestError) && this.#state === "connected") {
        this.request("unsubscribe", topic).catch(() => void 0);
      }
      throw error;
    } finally {
      this.#initial.delete(sub);
    }
    return sub;
  }
  /** The subscription to `topic`, if any. */
  subscription(topic) {
    return this.#subs.get(topic);
  }
  #host = {
    request: (type, data, options) => this.request(type, data, options),
    resubscribe: (sub) => this.#resubscribe(sub, false),
    forget: (sub) => {
      if (this.#subs.get(sub.topic) === sub) this.#subs.delete(sub.topic);
    }
  };
  #resubscribe(sub, afterReconnect) {
    this.request("subscribe", sub.position()).then(
      (reply) => {
        if (sub.ended) return;
        sub.subscribed(reply, afterReconnect);
        this.#events.emit("recovered", { topic: sub.topic, recovered: sub.recovered });
      },
      (error) => {
        if (error instanceof RequestError && error.message === "history unavailable") {
          setTimeout(() => {
            if (!sub.ended && this.#state === "connected") this.#resubscribe(sub, afterReconnect);
          }, 1e3);
          return;
        }
        if (error instanceof RequestError) {
          this.#host.forget(sub);
          sub.end(error);
        }
      }
    );
  }
  // -- the connection -----------------------------------------------------------------------
  #setState(state) {
    if (this.#state === state) return;
    this.#state = state;
    this.#events.emit("state", state);
  }
  #urlWithToken() {
    if (this.token === void 0) return this.url;
    const url = new URL(this.url, globalThis.location?.href);
    url.searchParams.set(this.#options.tokenParam ?? "token", this.token);
    return url.toString();
  }
  #attempt(delay) {
    this.#setState("connecting");
    this.#events.emit("connecting", { attempt: this.#failures + 1, delay });
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = void 0;
      void this.#open();
    }, delay);
  }
  async #open() {
    const refresh = this.#options.refreshToken;
    if (refresh !== void 0 && this.token !== void 0) {
      const exp = tokenExpiry(this.token);
      if (exp !== void 0 && exp - Date.now() < REFRESH_MARGIN) {
        try {
          this.token = await refresh();
        } catch (error) {
          this.#events.emit("error", error);
        }
      }
    }
    if (this.#state !== "connecting") return;
    const Impl = this.#options.WebSocket ?? globalThis.WebSocket;
    if (Impl === void 0) {
      this.#finish(1006, "no WebSocket implementation: pass options.WebSocket");
      return;
    }
    this.stats.attempts++;
    let ws;
    try {
      ws = new Impl(this.#urlWithToken(), this.#options.protocols);
    } catch (error) {
      this.#finish(1006, String(error), error);
      return;
    }
    ws.binaryType = "arraybuffer";
    this.#ws = ws;
    let opened = false;
    this.#openTimer = setTimeout(() => {
      if (!opened && ws.readyState <= 1) ws.close(CLOSE_NO_TRAFFIC, "connect timeout");
      this.#dropped(ws, false, 1006, "connect timeout");
    }, this.#options.connectTimeout ?? 1e4);
    ws.onopen = () => {
      opened = true;
      clearTimeout(this.#openTimer);
      this.#opened(ws);
    };
    ws.onmessage = (event) => this.#received(ws, event.data);
    ws.onclose = (event) => this.#dropped(ws, opened, event.code, event.reason);
    ws.onerror = () => {
      if (!opened) this.#dropped(ws, false, 1006, "");
    };
  }
  #opened(ws) {
    if (ws !== this.#ws) return;
    const reconnect = this.#everConnected;
    if (reconnect) this.stats.reconnects++;
    this.#everConnected = true;
    this.#failures = 0;
    this.#setState("connected");
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
  #beat() {
    const heartbeat = this.#options.heartbeat;
    if (heartbeat === void 0) return;
    clearTimeout(this.#beatTimer);
    const ws = this.#ws;
    const quiet = () => {
      if (ws !== this.#ws || ws === void 0) return;
      const idle = Date.now() - this.#lastTraffic;
      if (idle < heartbeat.interval) {
        this.#beatTimer = setTimeout(quiet, heartbeat.interval - idle);
        return;
      }
      const asked = Date.now();
      if (heartbeat.type !== void 0) {
        this.request(heartbeat.type, null, { timeout: heartbeat.timeout }).catch(() => void 0);
      }
      this.#beatTimer = setTimeout(() => {
        if (ws !== this.#ws) return;
        if (this.#lastTraffic >= asked) {
          this.#beat();
          return;
        }
        ws.close(CLOSE_NO_TRAFFIC, "no traffic");
        this.#dropped(ws, true, 1006, "no traffic");
      }, heartbeat.timeout);
    };
    this.#lastTraffic = Date.now();
    this.#beatTimer = setTimeout(quiet, heartbeat.interval);
  }
  #scheduleRefresh() {
    clearTimeout(this.#refreshTimer);
    const refresh = this.#options.refreshToken;
    const exp = this.token === void 0 ? void 0 : tokenExpiry(this.token);
    if (refresh === void 0 || exp === void 0) return;
    const ws = this.#ws;
    const run = async () => {
      if (ws !== this.#ws || this.#state !== "connected") return;
      try {
        const token = await refresh();
        await this.request("refresh", { token });
        this.token = token;
        this.#scheduleRefresh();
      } catch (error) {
        this.#events.emit("error", error);
        const left = exp - Date.now();
        if (left > 1e3) this.#refreshTimer = setTimeout(run, left / 2);
      }
    };
    this.#refreshTimer = setTimeout(run, refreshDelay(exp, Date.now()));
  }
  #received(ws, data) {
    if (ws !== this.#ws) return;
    this.stats.received++;
    this.#lastTraffic = Date.now();
    if (typeof data !== "string") {
      this.#types.emit("binary", { data, message: data });
      return;
    }
    let message;
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
    if (type === void 0 && "ok" in message && typeof id === "number") {
      const pending = this.#pending.get(id);
      if (pending === void 0) return;
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
      if (sub !== void 0) {
        if (type === "publish") {
          const publication = { topic: message.topic, data: message.data };
          if (typeof message.offset === "number") publication.offset = message.offset;
          sub.feed(publication);
          return;
        }
        if (type === "join" || type === "leave") {
          sub.presenceEvent(type, message.info);
          return;
        }
      }
    }
    this.#types.emit("*", { data: message, message });
    if (typeof type === "string") this.#types.emit(type, { data: message.data, message });
  }
  async #answer(ws, type, id, data) {
    const fn = this.#routes.get(type);
    let reply;
    if (fn === void 0) {
      reply = { id, ok: false, error: "unknown type" };
    } else {
      try {
        reply = { id, ok: true, data: await fn(data) ?? null };
      } catch (error) {
        const text = error instanceof RequestError ? error.message : "internal error";
        if (!(error instanceof RequestError)) setTimeout(() => {
          throw error;
        });
        reply = { id, ok: false, error: text };
      }
    }
    if (ws === this.#ws && ws.readyState === 1) {
      let text;
      try {
        text = JSON.stringify(reply);
      } catch {
        text = JSON.stringify({ id, ok: false, error: "reply not serializable" });
      }
      ws.send(text);
      this.stats.sent++;
    }
  }
  #dropped(ws, opened, code, reason) {
    if (ws !== this.#ws) return;
    this.#ws = void 0;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    if (ws.readyState <= 1) {
      try {
        ws.close();
      } catch {
      }
    }
    clearTimeout(this.#openTimer);
    clearTimeout(this.#beatTimer);
    clearTimeout(this.#refreshTimer);
    this.#lastCode = code;
    this.#lastReason = reason;
    const closed = new ConnectionClosedError(code, reason);
    for (const pending of [...this.#pending.values()]) {
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
  async #decide(info) {
    const options = this.#options;
    let stop;
    let error;
    if (!(options.reconnect ?? true)) stop = "reconnect is off";
    else if (options.maxAttempts !== void 0 && info.failures >= options.maxAttempts) {
      stop = `gave up after ${info.failures} failed attempts`;
    }
    if (stop === void 0 && info.code === CLOSE_TOKEN_EXPIRED) {
      stop = await this.#renewToken();
    }
    if (stop === void 0 && !info.opened) {
      const exp = this.token === void 0 ? void 0 : tokenExpiry(this.token);
      if (exp !== void 0 && exp <= Date.now()) stop = await this.#renewToken();
      if (stop === void 0 && options.probe !== void 0) {
        let status;
        try {
          status = await options.probe(this.#urlWithToken());
        } catch {
          status = void 0;
        }
        if (isFatalStatus(status)) stop = `refused (HTTP ${status})`;
      }
    }
    if (stop === void 0 && options.shouldReconnect?.(info) === false) stop = "vetoed";
    if (this.#state === "closed") return;
    this.#events.emit("disconnected", {
      code: info.code,
      reason: info.reason,
      willReconnect: stop === void 0
    });
    if (stop !== void 0) {
      if (error === void 0) error = new ConnectionClosedError(info.code, stop);
      this.#finish(info.code, stop, error);
      return;
    }
    this.#setState("disconnected");
    const delay = backoffDelay(
      Math.max(0, this.#failures - (info.opened ? 0 : 1)),
      options.backoff,
      options.random
    );
    this.#attempt(delay);
  }
  async #renewToken() {
    const refresh = this.#options.refreshToken;
    if (refresh === void 0) return "token refused";
    try {
      this.token = await refresh();
      return void 0;
    } catch (error) {
      this.#events.emit("error", error);
      return "token refused";
    }
  }
  #finish(code, reason, error) {
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
    for (const sub of this.#subs.values()) sub.end(code === 1e3 ? void 0 : closed);
    this.#subs.clear();
    this.#events.emit("closed", error === void 0 ? { code, reason } : { code, reason, error });
  }
};
export {
  ConnectionClosedError,
  MelodyClient,
  QueueFullError,
  REFRESH_MARGIN,
  RequestError,
  Subscription,
  TimeoutError,
  backoffDelay,
  refreshDelay,
  tokenExpiry
};
