// JWTAuth on the hub: a refused token stops reconnecting, a token is refreshed before exp.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { MelodyClient } from "../dist/index.js";
import { startHub, next, jwt, sleep } from "./helpers.mjs";
import { makeClient } from "./helpers.mjs";

const SECRET = "test-secret";
let hub;
before(async () => { hub = await startHub({ secret: SECRET }); });
after(async () => { await hub?.stop(); });
const now = () => Math.floor(Date.now() / 1000);

test("an expired token is refused: no retries without refreshToken", async () => {
  const token = await jwt(SECRET, { sub: "ada", exp: now() - 60 });
  const client = makeClient(hub.url, { token, backoff: { initial: 10, max: 20 } });
  const closed = await next(client, "closed");
  assert.equal(closed.reason, "token refused");
  assert.equal(client.stats.attempts, 1);
});

test("an expired token is replaced by refreshToken, then the client connects", async () => {
  const token = await jwt(SECRET, { sub: "ada", exp: now() - 60 });
  const client = makeClient(hub.url, {
    token, refreshToken: () => jwt(SECRET, { sub: "ada", exp: now() + 600 }),
    backoff: { initial: 10, max: 20 },
  });
  try {
    await client.connect();
    assert.equal(await client.request("echo", "in"), "in");
  } finally {
    client.close();
  }
});

test("a token with a bad signature: the probe's 401 stops reconnecting", async () => {
  const token = (await jwt("another secret", { sub: "ada", exp: now() + 600 }));
  let probed = 0;
  const client = makeClient(hub.url, {
    token, backoff: { initial: 10, max: 20 },
    probe: async (url) => {
      probed++;
      const check = new URL(url);
      check.protocol = "http:";
      check.pathname = "/authcheck";
      return (await fetch(check)).status;
    },
  });
  const closed = await next(client, "closed");
  assert.equal(closed.reason, "refused (HTTP 401)");
  assert.equal(probed, 1);
  assert.equal(client.stats.attempts, 1);
});

test("refresh before exp keeps the session past the first token's exp", async () => {
  let refreshed = 0;
  const client = makeClient(hub.url, {
    token: await jwt(SECRET, { sub: "ada", exp: now() + 3 }),
    refreshToken: () => { refreshed++; return jwt(SECRET, { sub: "ada", exp: now() + 3 }); },
  });
  let drops = 0;
  client.onEvent("disconnected", () => drops++);
  try {
    await client.connect();
    await sleep(4500); // past the first exp: without a refresh the hub closes with 4001
    assert.equal(drops, 0);
    assert.ok(refreshed >= 1);
    assert.equal(await client.request("echo", "still here"), "still here");
  } finally {
    client.close();
  }
});

test("a 4001 close without refreshToken ends the client", async () => {
  const client = makeClient(hub.url, { token: await jwt(SECRET, { sub: "ada", exp: now() + 1 }) });
  await client.connect();
  const closed = await next(client, "closed", 10_000);
  assert.equal(closed.code, 4001);
  assert.equal(closed.reason, "token refused");
});
