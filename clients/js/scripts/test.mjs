// Runs Node's test runner on the given test files, one file at a time (they start hubs).
// Adds --experimental-websocket when this Node has it (20.10+; 22+ has WebSocket anyway);
// older ones get the `ws` package through the client's WebSocket option (test/helpers.mjs).
import { spawnSync } from "node:child_process";

const files = process.argv.slice(2);
const flags = [];
if (!globalThis.WebSocket && process.allowedNodeEnvironmentFlags.has("--experimental-websocket")) {
  flags.push("--experimental-websocket", "--no-warnings=ExperimentalWarning");
}
const [major, minor] = process.versions.node.split(".").map(Number);
if (major > 20 || (major === 20 && minor >= 10)) flags.push("--test-concurrency=1");
let failed = 0;
for (const file of files) {
  const run = spawnSync(process.execPath, [...flags, "--test", file], { stdio: "inherit" });
  if (run.status !== 0) failed++;
}
if (failed) {
  console.error(`${failed} of ${files.length} test files failed`);
  process.exit(1);
}
