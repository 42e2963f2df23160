/** Reconnection delays: exponential, capped, with full jitter. */

export interface BackoffOptions {
  /** Milliseconds: the cap of the first delay (100). */
  initial?: number;
  /** Milliseconds: no delay is longer (10 000). */
  max?: number;
  /** Each failed attempt multiplies the cap by this (2). */
  factor?: number;
}

/**
 * The delay before attempt `n` (0 for the first retry of an outage): a uniformly random
 * duration in `[0, min(max, initial * factor ** n))` ("full jitter", so that clients dropped
 * together do not come back together). `random` is injectable for tests.
 */
export function backoffDelay(
  n: number,
  options: BackoffOptions = {},
  random: () => number = Math.random,
): number {
  const initial = options.initial ?? 100;
  const max = options.max ?? 10_000;
  const factor = options.factor ?? 2;
  const cap = Math.min(max, initial * Math.pow(factor, Math.min(n, 64)));
  return Math.floor(random() * cap);
}
