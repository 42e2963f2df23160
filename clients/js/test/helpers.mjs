// Starting the real things the tests talk to: test/hub.py (a melody hub) and, for history
// that survives a restart, redis-server. Nothing here mocks the hub.
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { MelodyClient } from "../dist/index.js";

/** The WebSocket the tests give the client: Node's own (22+, or 20 with
 * --experimental-websocket, which scripts/test.mjs passes when this Node has it), else the
 * `ws` package (a devDependency), through the client's `WebSocket` option. */
export const WebSocketImpl = globalThis.WebSocket ?? (await import("ws")).WebSocket;

/** `new MelodyClient(url, options)` with the tests' WebSocket. */
export function makeClient(url, options = {}) {
  return new MelodyClient(url, { WebSocket: WebSocketImpl, ...options });
}

const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, "..", "..", "..");
export const PYTHON = process.env.MELODY_PYTHON || "python";

/** A free TCP port on 127.0.0.1 (so that a restarted hub can come back on the same one). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function waitFor(child, pattern, what, timeout = 30_000) {
  return new Promise((resolve, reject) => {
    let output = "";
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${what} did not start within ${timeout} ms:\n${output}`));
    }, timeout);
    const onData = (chunk) => {
      output += chunk;
      const match = pattern.exec(output);
      if (match) {
        clearTimeout(timer);
        resolve(match);
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${what} exited (${code}) before it was ready:\n${output}`));
    });
  });
}

/** test/hub.py on `port` (0: any); `stop()` is SIGINT (graceful), `kill()` SIGKILL. */
export async function startHub({ port = 0, redis, secret } = {}) {
  const args = [path.join(here, "hub.py"), "--port", String(port)];
  if (redis) args.push("--redis", redis);
  if (secret) args.push("--secret", secret);
  const env = { ...process.env, PYTHONPATH: [ROOT, process.env.PYTHONPATH].filter(Boolean).join(path.delimiter), PYTHONUNBUFFERED: "1" };
  const child = spawn(PYTHON, args, { cwd: ROOT, env, stdio: ["ignore", "pipe", "pipe"] });
  child.stdout.setEncoding("utf8");
  child.stderr.setEncoding("utf8");
  const match = await waitFor(child, /hub listening on (\d+)/, "test/hub.py");
  const actual = Number(match[1]);
  const exited = new Promise((resolve) => child.once("exit", resolve));
  return {
    port: actual,
    url: `ws://127.0.0.1:${actual}/ws`,
    http: `http://127.0.0.1:${actual}`,
    child,
    async kill() {
      child.kill("SIGKILL");
      await exited;
    },
    async stop() {
      child.kill("SIGINT");
      await exited;
    },
  };
}

/** A redis-server of the test's own (empty: offsets start at 1) on a free port, no
 * persistence; `stop()` ends it. */
export async function startRedis() {
  const port = await freePort();
  const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: ["ignore", "pipe", "pipe"] });
  child.stdout.setEncoding("utf8");
  child.stderr.setEncoding("utf8");
  await waitFor(child, /Ready to accept connections/, "redis-server");
  const exited = new Promise((resolve) => child.once("exit", resolve));
  return {
    url: `redis://127.0.0.1:${port}/0`,
    async stop() {
      child.kill("SIGTERM");
      await exited;
    },
  };
}

/** Resolve with the next `event` of `client` (rejects after `timeout` ms). */
export function next(client, event, timeout = 10_000, predicate = () => true) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no ${event} within ${timeout} ms`));
    }, timeout);
    const off = client.onEvent(event, (value) => {
      if (!predicate(value)) return;
      clearTimeout(timer);
      off();
      resolve(value);
    });
  });
}

/** Take `n` publications from `sub` through its async iterator (with a deadline). */
export async function take(iterator, n, timeout = 10_000) {
  const out = [];
  const deadline = Date.now() + timeout;
  while (out.length < n) {
    const left = deadline - Date.now();
    const step = await Promise.race([
      iterator.next(),
      new Promise((_, reject) => setTimeout(() => reject(new Error(`got ${out.length} of ${n}`)), Math.max(left, 1))),
    ]);
    if (step.done) break;
    out.push(step.value);
  }
  return out;
}

/** A WebSocket class whose connections go nowhere (port 1) while `gate.closed`. */
export function gated(gate) {
  return class GatedWebSocket extends WebSocketImpl {
    constructor(url, protocols) {
      super(gate.closed ? url.replace(/:\d+\//, ":1/") : url, protocols);
    }
  };
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** An HS256 JWT signed with `secret` (Node's crypto; the hub verifies it with PyJWT). */
export async function jwt(secret, claims) {
  const { createHmac } = await import("node:crypto");
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

/** `fn()` again while it rejects with "history unavailable" (a hub that has just started
 * may not have reached Redis yet), for at most `timeout` ms. */
export async function whileHistoryUnavailable(fn, timeout = 10_000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    try {
      return await fn();
    } catch (error) {
      if (!/history unavailable/.test(String(error?.message)) || Date.now() > deadline) throw error;
      await sleep(100);
    }
  }
}
