// The distribution's Chromium (never a downloaded one): $MELODY_CHROMIUM, else the usual paths.
import { accessSync, constants } from "node:fs";

export const CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];

export function chromiumPath() {
  const candidates = [process.env.MELODY_CHROMIUM, "/usr/bin/chromium", "/usr/bin/chromium-browser"].filter(Boolean);
  for (const candidate of candidates) {
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // next
    }
  }
  throw new Error(`no Chromium at ${candidates.join(", ")}: apt-get install chromium or set MELODY_CHROMIUM`);
}
