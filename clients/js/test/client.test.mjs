// The client against a real hub (test/hub.py): requests both ways, timeouts, binary, the
// send queue, AbortSignal, presence and join/leave, dead-connection detection.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  MelodyClient, RequestError, TimeoutError, QueueFullError,
} from "../dist/index.js";
import { startHub, next, take, sleep } from "./helpers.mjs";
import { makeClient } from "./helpers.mjs";

let hub;
before(async () => { hub = await startHub(); });
after(async () => { await hub?.stop(); });

function connect(options = {}) {
  return makeClient(hub.url, { backoff: { initial: 50, max: 200 }, ...options });
}

test("request: the reply's data, the hub's error, a timeout, and a late reply dropped", async () => {
  const client = connect();
  try {
    await client.connect();
    assert.deepEqual(await client.request("echo", { a: [1, "é"] }), { a: [1, "é"] });
    await assert.rejects(client.request("fail"), (e) => e instanceof RequestError && e.message === "it failed");
    await assert.rejects(client.request("nope"), (e) => e instanceof RequestError && /unknown type/.test(e.message));
    await assert.rejects(client.request("slow", 0.5, { timeout: 100 }), TimeoutError);
    await sleep(600); // the late reply arrives and is dropped
    assert.equal(await client.request("echo", 1), 1);
  } finally {
    client.close();
  }
});

test("request: an AbortSignal rejects it with the signal's reason", async () => {
  const client = connect();
  try {
    await client.connect();
    const controller = new AbortController();
    const pending = client.request("slow", 0.3, { signal: controller.signal });
    controller.abort(new Error("user left"));
    await assert.rejects(pending, /user left/);
    await assert.rejects(client.request("echo", 1, { signal: AbortSignal.abort() }), { name: "AbortError" });
  } finally {
    client.close();
  }
});

test("AbortSignal: connect and subscribe give up with the signal's reason", async () => {
  const idle = connect({ autoConnect: false });
  await assert.rejects(idle.connect({ signal: AbortSignal.abort(new Error("not now")) }), /not now/);
  const client = connect();
  try {
    await client.connect();
    const controller = new AbortController();
    const pending = client.subscribe("hist:aborted", { signal: controller.signal });
    controller.abort(new Error("changed my mind"));
    await assert.rejects(pending, /changed my mind/);
    assert.equal(client.subscription("hist:aborted"), undefined);
    const again = await client.subscribe("hist:aborted"); // the topic is free again
    assert.equal(again.topic, "hist:aborted");
  } finally {
    client.close();
    idle.close();
  }
});

test("server-to-client requests: answered, refused, and unknown types", async () => {
  const client = connect();
  try {
    client.route("confirm", async (data) => ({ accepted: data.total < 100 }));
    client.route("refuse", () => { throw new RequestError("the user said no"); });
    await client.connect();
    assert.deepEqual(await client.request("ask", { type: "confirm", data: { total: 42 } }), { answer: { accepted: true } });
    assert.deepEqual(await client.request("ask", { type: "refuse" }), { error: "the user said no" });
    assert.deepEqual(await client.request("ask", { type: "what" }), { error: "unknown type" });
  } finally {
    client.close();
  }
});

test("binary messages come as ArrayBuffer", async () => {
  const client = connect();
  try {
    await client.connect();
    const got = new Promise((resolve) => client.on("binary", resolve));
    await client.request("binary", "abc");
    assert.equal(new TextDecoder().decode(await got), "cba");
  } finally {
    client.close();
  }
});

test("send queue: kept while connecting, bounded, with a policy", async () => {
  const client = connect({ autoConnect: false, queue: { max: 2, policy: "reject" } });
  try {
    const a = client.request("echo", "a");
    const b = client.request("echo", "b");
    await assert.rejects(client.request("echo", "c"), QueueFullError);
    await client.connect();
    assert.deepEqual(await Promise.all([a, b]), ["a", "b"]);
  } finally {
    client.close();
  }
  const dropping = connect({ autoConnect: false, queue: { max: 2, policy: "drop-oldest" } });
  try {
    const first = dropping.request("echo", 1);
    const rest = [dropping.request("echo", 2), dropping.request("echo", 3)];
    await assert.rejects(first, QueueFullError);
    await dropping.connect();
    assert.deepEqual(await Promise.all(rest), [2, 3]);
    assert.equal(dropping.stats.dropped, 1);
  } finally {
    dropping.close();
  }
});

test("topics: publications in order, presence, join and leave, forbidden", async () => {
  const a = connect();
  const b = connect();
  try {
    const subA = await a.subscribe("hist:presence");
    const joined = new Promise((resolve) => subA.on("join", resolve));
    const subB = await b.subscribe("hist:presence");
    assert.equal((await joined).session !== undefined, true);
    assert.equal(Object.keys(await subA.presence()).length, 2);
    assert.deepEqual(await subB.presenceStats(), { sessions: 2, users: 0 });
    const iterator = subB[Symbol.asyncIterator]();
    for (const n of [1, 2, 3]) await subA.publish({ n });
    assert.deepEqual((await take(iterator, 3)).map((p) => p.data.n), [1, 2, 3]);
    const left = new Promise((resolve) => subA.on("leave", resolve));
    await subB.unsubscribe();
    await left;
    assert.equal((await iterator.next()).done, true);
    await assert.rejects(a.subscribe("private:x"), /forbidden/);
    // A topic without history: publications without offsets, the publisher excluded.
    const plain = await b.subscribe("room");
    const got = new Promise((resolve) => plain.on("publication", resolve));
    await a.publish("room", "hi");
    assert.deepEqual(await got, { topic: "room", data: "hi" });
  } finally {
    a.close();
    b.close();
  }
});

test("dead connection: silence past the heartbeat bound closes and reconnects", async () => {
  const client = connect({ heartbeat: { interval: 200, timeout: 300, type: "ping" } });
  try {
    await client.connect();
    await sleep(1200); // answered pings keep it up
    assert.equal(client.state, "connected");
    assert.equal(client.stats.reconnects, 0);
    hub.child.kill("SIGSTOP"); // the hub hangs: TCP stays up, nothing arrives
    const started = Date.now();
    const down = await next(client, "disconnected", 5000);
    const took = Date.now() - started;
    assert.equal(down.reason, "no traffic");
    assert.ok(took < 1500, `detected after ${took} ms`);
    hub.child.kill("SIGCONT");
    await next(client, "connected", 10_000);
  } finally {
    hub.child.kill("SIGCONT");
    client.close();
  }
});
