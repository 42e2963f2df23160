// The chat example (examples/chat) in headless Chromium, two tabs, through a hub restart.
// Uses the distribution's chromium (/usr/bin/chromium or $MELODY_CHROMIUM) through
// playwright-core: nothing downloads a browser. A screenshot of the chat page is kept in
// test-artifacts/chat.png.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { ROOT, PYTHON, freePort, startRedis } from "../helpers.mjs";
import { chromiumPath, CHROMIUM_ARGS } from "./chromium.mjs";

const ARTIFACTS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "test-artifacts");
const TIMEOUT = 15_000;

/** python examples/chat/main.py on `port`, history in Redis; `stop()` is Ctrl-C. */
async function startChat(port, redis) {
  const env = { ...process.env, PYTHONPATH: [ROOT, process.env.PYTHONPATH].filter(Boolean).join(path.delimiter), PYTHONUNBUFFERED: "1" };
  const child = spawn(PYTHON, [path.join(ROOT, "examples", "chat", "main.py"), "--port", String(port), "--redis", redis],
    { cwd: ROOT, env, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout.setEncoding("utf8").on("data", (d) => (output += d));
  child.stderr.setEncoding("utf8").on("data", (d) => (output += d));
  const exited = new Promise((resolve) => child.once("exit", resolve));
  const deadline = Date.now() + 30_000;
  while (!/chat: open http/.test(output)) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`chat did not start:\n${output}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    output: () => output,
    async stop() {
      child.kill("SIGINT");
      return exited;
    },
  };
}

async function lines(page) {
  return page.locator("#log .line").allTextContents();
}

async function waitForLines(page, expected) {
  const deadline = Date.now() + TIMEOUT;
  for (;;) {
    const got = await lines(page);
    if (JSON.stringify(got) === JSON.stringify(expected)) return;
    if (Date.now() > deadline) assert.deepEqual(got, expected);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function waitForStatus(page, pattern) {
  await page.waitForFunction((source) => new RegExp(source).test(document.getElementById("status").textContent),
    pattern.source, { timeout: TIMEOUT });
}

async function say(page, text) {
  await page.fill("#message", text);
  await page.press("#message", "Enter");
}

test("chat in two tabs: messages both ways, a hub restart, recovery of what was missed", async () => {
  const redis = await startRedis();
  const port = await freePort();
  let hub = await startChat(port, redis.url);
  const browser = await chromium.launch({
    executablePath: chromiumPath(), headless: true, timeout: 30_000,
    args: CHROMIUM_ARGS,
  });
  try {
    // Two contexts: two separate browser sessions, like two people.
    const contextA = await browser.newContext();
    const contextB = await browser.newContext();
    const a = await contextA.newPage();
    const b = await contextB.newPage();
    for (const page of [a, b]) {
      page.on("pageerror", (error) => console.error("page error:", error));
      await page.goto(`http://127.0.0.1:${port}/`, { timeout: TIMEOUT });
      await waitForStatus(page, /^connected$/);
    }

    await say(a, "hello from A");
    await say(b, "and <b>hello</b> from B");
    const before = ["hello from A", "and <b>hello</b> from B"];
    for (const page of [a, b]) await waitForLines(page, before);
    assert.equal(await a.locator("#log b").count(), 0, "messages are text, never HTML");

    // The hub goes away (Ctrl-C: 1001) and B's network with it; A types while the hub is
    // down (its client queues it), the hub comes back, A reconnects and its message goes out.
    await contextB.setOffline(true);
    await hub.stop();
    await waitForStatus(a, /^reconnecting/);
    await say(a, "said while the hub was down");
    hub = await startChat(port, redis.url);
    await waitForStatus(a, /^connected$/);
    await waitForLines(a, [...before, "said while the hub was down"]);
    await say(a, "said while B was away");
    await waitForLines(a, [...before, "said while the hub was down", "said while B was away"]);
    assert.match(await b.locator("#status").textContent(), /^reconnecting/, "B was away meanwhile");
    assert.deepEqual(await lines(b), before);

    // B comes back: it resubscribes from its position and gets both, in order, once.
    await contextB.setOffline(false);
    await waitForStatus(b, /^connected$/);
    const all = [...before, "said while the hub was down", "said while B was away"];
    await waitForLines(b, all);
    const sub = await b.evaluate(() => {
      const s = window.chatClient.subscription("chat");
      return { recovered: s.recovered, resubscribes: s.resubscribes, offset: s.offset };
    });
    assert.deepEqual(sub, { recovered: true, resubscribes: sub.resubscribes, offset: 4 });
    assert.ok(sub.resubscribes >= 1);

    await say(b, "B is back");
    for (const page of [a, b]) await waitForLines(page, [...all, "B is back"]);
    mkdirSync(ARTIFACTS, { recursive: true });
    await b.screenshot({ path: path.join(ARTIFACTS, "chat.png"), fullPage: true });
  } finally {
    await browser.close();
    await hub.stop();
    await redis.stop();
  }
});
