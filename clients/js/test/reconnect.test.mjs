// Outages for real: the hub process killed and started again on the same port.
import { test } from "node:test";
import assert from "node:assert/strict";
import { MelodyClient, ConnectionClosedError } from "../dist/index.js";
import { startHub, startRedis, freePort, next, take, gated, sleep, whileHistoryUnavailable } from "./helpers.mjs";
import { makeClient } from "./helpers.mjs";

test("reconnect after the hub is killed and restarted; requests work again", async () => {
  const port = await freePort();
  let hub = await startHub({ port });
  const client = makeClient(hub.url, { backoff: { initial: 50, max: 300 } });
  const states = [];
  client.onEvent("state", (s) => states.push(s));
  try {
    await client.connect();
    const down = next(client, "disconnected");
    await hub.kill();
    const info = await down;
    assert.equal(info.code, 1006);
    assert.equal(info.willReconnect, true);
    // A request made during the outage waits in the queue and goes out on reconnect.
    const during = client.request("echo", "sent while down", { timeout: 30_000 });
    hub = await startHub({ port });
    assert.deepEqual(await next(client, "connected", 15_000), { reconnect: true });
    assert.equal(await during, "sent while down");
    assert.ok(client.stats.failures >= 1, "attempts against the dead port failed");
    // (the first "connecting" came from the constructor, before the listener)
    assert.deepEqual(states.slice(0, 3), ["connected", "disconnected", "connecting"]);
  } finally {
    client.close();
    await hub.stop();
  }
});

test("resubscribe and recovery of what was published meanwhile (history in Redis)", async () => {
  const redis = await startRedis();
  const port = await freePort();
  let hub = await startHub({ port, redis: redis.url });
  const gate = { closed: false };
  const reader = makeClient(hub.url, { WebSocket: gated(gate), backoff: { initial: 20, max: 100 } });
  const writer = makeClient(hub.url, { backoff: { initial: 20, max: 100 } });
  const topic = `hist:recovery-${Date.now()}`;
  try {
    const sub = await whileHistoryUnavailable(() => reader.subscribe(topic));
    const iterator = sub[Symbol.asyncIterator]();
    await writer.publish(topic, "one");
    assert.deepEqual((await take(iterator, 1)).map((p) => [p.offset, p.data]), [[1, "one"]]);

    gate.closed = true; // the reader cannot come back until the gate opens
    const down = next(reader, "disconnected");
    await hub.kill();
    await down;
    hub = await startHub({ port, redis: redis.url });
    await writer.connect();
    for (const text of ["two", "three", "four"]) {
      await whileHistoryUnavailable(() => writer.publish(topic, text));
    }
    const recovered = next(reader, "recovered", 15_000);
    gate.closed = false;
    assert.deepEqual(await recovered, { topic, recovered: true });
    await writer.publish(topic, "five");
    const got = await take(iterator, 4);
    assert.deepEqual(got.map((p) => [p.offset, p.data]), [[2, "two"], [3, "three"], [4, "four"], [5, "five"]]);
    assert.equal(sub.resubscribes, 1);
    assert.equal(sub.recovered, true);
  } finally {
    reader.close();
    writer.close();
    await hub.stop();
    await redis.stop();
  }
});

test("a dropped session recovers from the hub's memory, exactly once and in order", async () => {
  const hub = await startHub();
  const gate = { closed: false };
  const reader = makeClient(hub.url, { WebSocket: gated(gate), backoff: { initial: 20, max: 100 } });
  const writer = makeClient(hub.url);
  try {
    const sub = await reader.subscribe("hist:kicked");
    const iterator = sub[Symbol.asyncIterator]();
    await writer.publish("hist:kicked", 1);
    await take(iterator, 1);
    gate.closed = true;
    const down = next(reader, "disconnected");
    reader.request("kick", { code: 1011, reason: "test" }).catch(() => undefined);
    assert.deepEqual(await down, { code: 1011, reason: "test", willReconnect: true });
    for (const n of [2, 3, 4]) await writer.publish("hist:kicked", n);
    const recovered = next(reader, "recovered");
    gate.closed = false;
    assert.deepEqual(await recovered, { topic: "hist:kicked", recovered: true });
    await writer.publish("hist:kicked", 5);
    assert.deepEqual((await take(iterator, 4)).map((p) => [p.offset, p.data]), [[2, 2], [3, 3], [4, 4], [5, 5]]);
    assert.equal(sub.duplicates, 0);
  } finally {
    reader.close();
    writer.close();
    await hub.stop();
  }
});

test("without a shared history a restart changes the epoch: recovered is false", async () => {
  const port = await freePort();
  let hub = await startHub({ port });
  const client = makeClient(hub.url, { backoff: { initial: 20, max: 100 } });
  try {
    const sub = await client.subscribe("hist:memory");
    await client.publish("hist:memory", "x");
    await take(sub[Symbol.asyncIterator](), 1);
    const epoch = sub.epoch;
    await hub.kill();
    hub = await startHub({ port });
    const outcome = await new Promise((resolve) => sub.on("subscribed", resolve));
    assert.deepEqual(outcome, { recovered: false, resubscribe: true });
    assert.notEqual(sub.epoch, epoch);
  } finally {
    client.close();
    await hub.stop();
  }
});

test("backoff: delays stay under the cap; maxAttempts gives up; a veto stops at once", async () => {
  const port = await freePort(); // nobody listens there
  const delays = [];
  const client = makeClient(`ws://127.0.0.1:${port}/ws`, {
    backoff: { initial: 40, max: 100, factor: 2 }, maxAttempts: 5, autoConnect: false,
  });
  client.onEvent("connecting", ({ delay }) => delays.push(delay));
  const closing = next(client, "closed", 10_000);
  await assert.rejects(client.connect(), ConnectionClosedError);
  const closed = await closing;
  assert.match(closed.reason, /gave up after 5 failed attempts/);
  await assert.rejects(client.connect(), ConnectionClosedError);
  assert.equal(client.stats.attempts, 5);
  const caps = [0, 40, 80, 100, 100];
  assert.equal(delays.length, 5);
  delays.forEach((d, i) => assert.ok(d >= 0 && d <= caps[i], `delay ${i} = ${d} > ${caps[i]}`));

  let asked = 0;
  const vetoed = makeClient(`ws://127.0.0.1:${port}/ws`, {
    shouldReconnect: (info) => { asked++; assert.equal(info.opened, false); return false; },
  });
  assert.match((await next(vetoed, "closed")).reason, /vetoed/);
  assert.equal(asked, 1);
  assert.equal(vetoed.stats.attempts, 1);
  await sleep(10);
});
