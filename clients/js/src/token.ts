/** Reading a JWT's `exp` (not verifying it: the hub does) and deciding when to refresh. */

/** Refresh at most this many milliseconds before `exp` (as melody's Python client). */
export const REFRESH_MARGIN = 30_000;

function base64UrlDecode(text: string): string {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
  const binary = atob(padded);
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

/** The `exp` claim of a JWT in milliseconds since the epoch; undefined without one. */
export function tokenExpiry(token: string): number | undefined {
  const parts = token.split(".");
  if (parts.length !== 3) return undefined;
  try {
    const claims: unknown = JSON.parse(base64UrlDecode(parts[1] ?? ""));
    if (claims !== null && typeof claims === "object") {
      const exp = (claims as { exp?: unknown }).exp;
      if (typeof exp === "number" && Number.isFinite(exp)) return exp * 1000;
    }
  } catch {
    // not a JWT: nothing expires
  }
  return undefined;
}

/** Milliseconds to wait before refreshing a token expiring at `exp`: the later of 30 s
 * before it and two thirds of the way there. */
export function refreshDelay(exp: number, now: number): number {
  const remaining = exp - now;
  return Math.max(remaining - REFRESH_MARGIN, (remaining * 2) / 3, 0);
}
