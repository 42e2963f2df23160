/** Errors the client rejects with; each has a stable `name`. */

/** The hub answered a request with `{"ok": false, "error": ...}`; `message` is its text. */
export class RequestError extends Error {
  override name = "RequestError";
}

/** No reply within the request's timeout (the handler may still run on the hub). */
export class TimeoutError extends Error {
  override name = "TimeoutError";
}

/**
 * The connection ended before the reply came, or the client is closed / gave up.
 * `code` and `reason` are the WebSocket close code and reason (1006 when none came).
 */
export class ConnectionClosedError extends Error {
  override name = "ConnectionClosedError";
  constructor(readonly code: number, readonly reason: string) {
    super(`connection closed (${code}${reason ? " " + reason : ""})`);
  }
}

/** The send queue was full under the `"reject"` policy (see `ClientOptions.queue`). */
export class QueueFullError extends Error {
  override name = "QueueFullError";
}

/** The operation's `AbortSignal` fired; `cause` is the signal's reason. */
export function abortError(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  if (reason instanceof Error) return reason;
  const error = new Error("aborted");
  error.name = "AbortError";
  return error;
}
