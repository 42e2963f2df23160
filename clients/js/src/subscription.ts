/**
 * A topic the client receives: `const sub = await client.subscribe("chat:1")`, then
 * `for await (const pub of sub)` or `sub.on("publication", fn)`.
 *
 * For a topic with history every publication has an offset; the subscription keeps the last
 * one it delivered and the stream's epoch (its position). After a reconnect the client
 * resubscribes from that position and the hub hands over what was missed, then the live
 * stream. `recovered` says whether that worked; when it is false the application refetches
 * its state (the `subscribed` event is the place). A publication whose offset is not above
 * the position is a duplicate and dropped; an offset jump is repaired by a resubscribe.
 */

import { Emitter } from "./emitter.js";
import { ConnectionClosedError } from "./errors.js";

/** One message of a topic. `offset` is set for topics with history. */
export interface Publication<T = unknown> {
  topic: string;
  data: T;
  offset?: number;
}

/** What `presence` answers: per session id. */
export interface ClientInfo {
  session: string;
  user: string | null;
  connected_at: number;
  node: string;
}

/** The hub's answer to a subscribe (docs/protocol.md). */
export interface SubscribeReply {
  subscribed?: boolean;
  recovered?: boolean;
  offset?: number;
  epoch?: string;
  publications?: { offset: number; data: unknown }[];
}

export interface SubscriptionEvents<T> {
  /** Every publication, in order, duplicates dropped. */
  publication: Publication<T>;
  /** After each (re)subscribe: `recovered` true (nothing missed), false (refetch your
   * state), or null (the topic keeps no history, or there was no position to recover). */
  subscribed: { recovered: boolean | null; resubscribe: boolean };
  join: ClientInfo;
  leave: ClientInfo;
  /** The subscription ended: unsubscribed (`error` undefined), refused, or the client closed. */
  ended: { error?: Error };
}

/** What the subscription needs from its client (kept small: the client owns the socket). */
export interface SubscriptionHost {
  request(type: string, data: unknown, options?: { timeout?: number }): Promise<unknown>;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  resubscribe(sub: Subscription<any>): void;
  forget(sub: Subscription<any>): void;
}

export class Subscription<T = unknown> implements AsyncIterable<Publication<T>> {
  /** The last offset delivered (or the stream's offset at subscribe); undefined without. */
  offset: number | undefined;
  /** The stream's epoch at the last (re)subscribe. */
  epoch: string | undefined;
  /** See the `subscribed` event. */
  recovered: boolean | null = null;
  /** How many times it was restored after a reconnect. */
  resubscribes = 0;
  /** Publications dropped because their offset was not above `offset`. */
  duplicates = 0;
  /** Offset jumps seen (each repaired by a resubscribe from the position). */
  gaps = 0;
  /** Publications that found the iterator's buffer full (`maxBuffer`) and were dropped. */
  dropped = 0;
  readonly #events = new Emitter<SubscriptionEvents<T>>();
  #held: Publication<T>[] | undefined;
  #buffer: Publication<T>[] = [];
  #iterating = 0;
  // Publications are kept for `for await` from the start (none is lost between the
  // subscribe and the loop), unless the application listens to "publication" instead.
  #buffering = true;
  #wake: (() => void) | undefined;
  #ended: { error?: Error } | undefined;

  constructor(
    readonly topic: string,
    private readonly host: SubscriptionHost,
    /** Whether resubscribes ask for what was missed (topics with history). */
    readonly recover: boolean = true,
    /** Publications kept for `for await` when it is not keeping up (10 000). */
    readonly maxBuffer: number = 10_000,
  ) {}

  /** Listen to `publication`, `subscribed`, `join`, `leave`, `ended`. */
  on<K extends keyof SubscriptionEvents<T>>(
    event: K,
    fn: (value: SubscriptionEvents<T>[K]) => void,
  ): () => void {
    if (event === "publication" && this.#iterating === 0) {
      this.#buffering = false;
      this.#buffer = [];
    }
    return this.#events.on(event, fn);
  }

  /** Whether the subscription has ended. */
  get ended(): boolean {
    return this.#ended !== undefined;
  }

  /** Publish `data` to this topic (the `publish` request); resolves with the hub's count. */
  publish(data: unknown, options?: { timeout?: number }): Promise<unknown> {
    return this.host.request("publish", { topic: this.topic, data }, options);
  }

  /** Who is subscribed (a topic with `presence=True`), by session id. */
  presence(options?: { timeout?: number }): Promise<Record<string, ClientInfo>> {
    return this.host.request("presence", this.topic, options) as Promise<
      Record<string, ClientInfo>
    >;
  }

  /** How many sessions and distinct users are subscribed. */
  presenceStats(options?: { timeout?: number }): Promise<{ sessions: number; users: number }> {
    return this.host.request("presence_stats", this.topic, options) as Promise<{
      sessions: number;
      users: number;
    }>;
  }

  /** End the subscription here and on the hub. */
  async unsubscribe(options?: { timeout?: number }): Promise<void> {
    if (this.#ended) return;
    this.end();
    this.host.forget(this);
    await this.host.request("unsubscribe", this.topic, options).catch((error: unknown) => {
      if (!(error instanceof ConnectionClosedError)) throw error;
    });
  }

  // -- what the client calls ----------------------------------------------------------------

  /** The `data` of the subscribe request: the topic and, to recover, the position. */
  position(): string | { topic: string; offset?: number; epoch?: string } {
    if (this.recover && this.offset !== undefined && this.epoch !== undefined) {
      return { topic: this.topic, offset: this.offset, epoch: this.epoch };
    }
    return { topic: this.topic };
  }

  /** Apply the hub's reply to a (re)subscribe. */
  subscribed(reply: unknown, resubscribe: boolean): void {
    const held = this.#held;
    this.#held = undefined;
    if (reply === null || typeof reply !== "object") {
      this.recovered = null; // a topic without history answers true/false
    } else {
      const r = reply as SubscribeReply;
      const asked = typeof this.position() === "object" && "offset" in (this.position() as object);
      if (!asked || !r.recovered) this.offset = undefined; // start over from the stream
      this.recovered = asked ? Boolean(r.recovered) : null;
      for (const item of r.publications ?? []) {
        this.feed({ topic: this.topic, data: item.data as T, offset: item.offset });
      }
      this.epoch = typeof r.epoch === "string" ? r.epoch : undefined;
      if (typeof r.offset === "number" && (this.offset === undefined || this.offset < r.offset)) {
        this.offset = r.offset;
      }
    }
    for (const publication of held ?? []) this.feed(publication);
    if (resubscribe) this.resubscribes++;
    this.#events.emit("subscribed", { recovered: this.recovered, resubscribe });
  }

  /** A publication of this topic from the hub. */
  feed(publication: Publication<T>): void {
    if (this.#ended) return;
    const offset = publication.offset;
    if (typeof offset === "number") {
      if (this.#held !== undefined) {
        this.#held.push(publication); // a gap is being repaired: after its reply
        return;
      }
      if (this.offset !== undefined && offset <= this.offset) {
        this.duplicates++;
        return;
      }
      if (this.offset !== undefined && offset > this.offset + 1 && this.recover) {
        // Publications are missing (a broker dropped live messages): resubscribe from the
        // position; this one waits for the reply.
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
  presenceEvent(kind: "join" | "leave", info: ClientInfo): void {
    this.#events.emit(kind, info);
  }

  /** No more publications; `for await` ends (or throws `error`) once the buffer is empty. */
  end(error?: Error): void {
    if (this.#ended) return;
    this.#ended = error === undefined ? {} : { error };
    this.#held = undefined;
    this.#events.emit("ended", this.#ended);
    this.#wake?.();
  }

  /** Publications from now on, in order; ends after `unsubscribe`, throws when refused. */
  async *[Symbol.asyncIterator](): AsyncIterator<Publication<T>> {
    this.#iterating++;
    this.#buffering = true;
    try {
      for (;;) {
        const next = this.#buffer.shift();
        if (next !== undefined) {
          yield next;
          continue;
        }
        if (this.#ended) {
          if (this.#ended.error) throw this.#ended.error;
          return;
        }
        await new Promise<void>((resolve) => (this.#wake = resolve));
        this.#wake = undefined;
      }
    } finally {
      this.#iterating--;
    }
  }
}
