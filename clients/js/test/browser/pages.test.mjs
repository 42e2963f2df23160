// The other pages that use the browser client: `melody demo` and the multichat room, in
// headless Chromium. Each connects, says something, hears it back, and reconnects after the
// hub restarts.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import path from "node:path";
import { chromium } from "playwright-core";
import { ROOT, PYTHON, freePort } from "../helpers.mjs";
import { chromiumPath, CHROMIUM_ARGS } from "./chromium.mjs";

const TIMEOUT = 15_000;
let browser;
after(async () => { await browser?.close(); });

async function start(args, port) {
  const env = { ...process.env, PYTHONPATH: [ROOT, process.env.PYTHONPATH].filter(Boolean).join(path.delimiter), PYTHONUNBUFFERED: "1" };
  const child = spawn(PYTHON, [...args, "--port", String(port)], { cwd: ROOT, env, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout.setEncoding("utf8").on("data", (d) => (output += d));
  child.stderr.setEncoding("utf8").on("data", (d) => (output += d));
  const exited = new Promise((resolve) => child.once("exit", resolve));
  const deadline = Date.now() + 30_000;
  while (!/open http|serving on/.test(output)) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`${args} did not start:\n${output}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return { async stop() { child.kill("SIGINT"); await exited; } };
}

async function status(page, pattern) {
  await page.waitForFunction((source) => new RegExp(source).test(document.getElementById("status").textContent),
    pattern.source, { timeout: TIMEOUT });
}

for (const [name, args, pagePath, input, lineSelector] of [
  ["melody demo", ["-m", "melody", "demo"], "/", "#msg", "#log .line"],
  ["multichat room", [path.join("examples", "multichat", "main.py")], "/channel/go", "#message", "#log .line"],
]) {
  test(`${name}: the page talks through the client and comes back after a restart`, async () => {
    browser ??= await chromium.launch({ executablePath: chromiumPath(), headless: true, args: CHROMIUM_ARGS, timeout: 30_000 });
    const port = await freePort();
    let hub = await start(args, port);
    const page = await browser.newPage();
    const errors = [];
    page.on("pageerror", (error) => errors.push(String(error)));
    try {
      await page.goto(`http://127.0.0.1:${port}${pagePath}`, { timeout: TIMEOUT });
      await status(page, /^connected$/);
      await page.fill(input, "first");
      await page.press(input, "Enter");
      await page.locator(lineSelector).filter({ hasText: "first" }).waitFor({ timeout: TIMEOUT });
      await hub.stop();
      await status(page, /^reconnecting/);
      hub = await start(args, port);
      await status(page, /^connected$/);
      await page.fill(input, "after the restart");
      await page.press(input, "Enter");
      await page.locator(lineSelector).filter({ hasText: "after the restart" }).waitFor({ timeout: TIMEOUT });
      assert.deepEqual(errors, []);
    } finally {
      await page.close();
      await hub.stop();
    }
  });
}
