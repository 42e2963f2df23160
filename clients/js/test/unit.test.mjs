// What needs no hub: the backoff formula, a subscription's offset bookkeeping, token expiry.
import { test } from "node:test";
import assert from "node:assert/strict";
import { backoffDelay, Subscription, tokenExpiry, refreshDelay } from "../dist/index.js";

test("backoff: full jitter under an exponential cap, capped at max", () => {
  const options = { initial: 100, max: 1000, factor: 2 };
  const top = () => 0.999999;
  assert.deepEqual([0, 1, 2, 3, 4, 10, 1000].map((n) => backoffDelay(n, options, top)),
    [99, 199, 399, 799, 999, 999, 999]);
  for (let n = 0; n < 20; n++) assert.equal(backoffDelay(n, options, () => 0), 0);
  for (let i = 0; i < 1000; i++) {
    const d = backoffDelay(3, options);
    assert.ok(d >= 0 && d < 800, String(d));
  }
});

function sub() {
  const asked = [];
  const host = { request: async () => null, resubscribe: (s) => asked.push(s.position()), forget() {} };
  return { s: new Subscription("t", host), asked };
}

test("subscription: duplicates dropped by offset, a gap repaired by a resubscribe", () => {
  const { s, asked } = sub();
  const got = [];
  s.on("publication", (p) => got.push(p.offset));
  s.subscribed({ subscribed: true, offset: 5, epoch: "e1", publications: [] }, false);
  assert.equal(s.recovered, null);
  s.feed({ topic: "t", data: 1, offset: 6 });
  s.feed({ topic: "t", data: 1, offset: 6 }); // duplicate
  s.feed({ topic: "t", data: 1, offset: 9 }); // 7 and 8 missing
  assert.deepEqual(asked, [{ topic: "t", offset: 6, epoch: "e1" }]);
  s.feed({ topic: "t", data: 1, offset: 10 }); // held until the repair's reply
  s.subscribed({ subscribed: false, recovered: true, offset: 8, epoch: "e1",
    publications: [{ offset: 7, data: 1 }, { offset: 8, data: 1 }] }, false);
  assert.deepEqual(got, [6, 7, 8, 9, 10]);
  assert.equal(s.duplicates, 1);
  assert.equal(s.gaps, 1);
  assert.equal(s.recovered, true);
});

test("subscription: not recovered starts over from the stream's position", () => {
  const { s } = sub();
  s.subscribed({ offset: 3, epoch: "old", publications: [] }, false);
  s.subscribed({ recovered: false, offset: 40, epoch: "new", publications: [] }, true);
  assert.equal(s.recovered, false);
  assert.deepEqual([s.offset, s.epoch, s.resubscribes], [40, "new", 1]);
});

test("token: exp read without verifying; refresh at max(exp - 30 s, 2/3 of the way)", () => {
  const payload = Buffer.from(JSON.stringify({ sub: "ada", exp: 2000000000 })).toString("base64url");
  assert.equal(tokenExpiry(`x.${payload}.y`), 2000000000 * 1000);
  assert.equal(tokenExpiry("not a jwt"), undefined);
  assert.equal(refreshDelay(3_600_000, 0), 3_570_000);
  assert.equal(refreshDelay(3_000, 0), 2_000);
});
