"""Reconnecting mode: :class:`ReconnectingClient`, a connection re-established after outages."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import random
import ssl as _ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from melody.client.answering import Routes
from melody.client.connection import ClientConnection, _open_connection
from melody.client.options import _USER_AGENT, _make_options, _parse_url
from melody.client.refresh import (
    REFRESH_MARGIN,
    RefreshToken,
    fetch_token,
    find_token,
    token_expiry,
)
from melody.client.subscription import Subscription
from melody.errors import (
    CLOSE_ABNORMAL,
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    ConnectionClosed,
    HandshakeError,
    RequestError,
)
from melody.handshake import Headers
from melody.limits import MAX_COUNT, check_int, check_rate, check_seconds

__all__ = ["OnConnect", "ReconnectingClient"]

# The whole package logs under the one name the documentation gives.
logger = logging.getLogger("melody.client")

_F = TypeVar("_F", bound=Callable[..., Any])

OnConnect = Callable[["ClientConnection"], "Awaitable[None] | None"]
"""``on_connect(conn)``: a plain function or a coroutine function, run after each connection."""


def _retryable(exc: BaseException) -> bool:
    """Whether a failed attempt is worth repeating: the network, a timeout, a 5xx, 408, 429."""
    if isinstance(exc, _ssl.SSLCertVerificationError):
        return False  # a certificate does not fix itself
    if isinstance(exc, HandshakeError):
        return exc.status >= 500 or exc.status in (408, 429)
    return isinstance(exc, (OSError, TimeoutError, asyncio.TimeoutError, ConnectionClosed))


class ReconnectingClient:
    """A client that reconnects after every outage; made by ``connect(url, reconnect=True)``.

    Same interface as :class:`ClientConnection`. Between attempts it sleeps
    ``min(backoff_max, backoff_initial * backoff_factor ** n)`` seconds (``n`` failed attempts
    so far in this outage) less a random fraction of up to ``jitter`` of it, so that clients
    dropped together do not return together. The first reconnection attempt also waits
    ``backoff_initial`` (jittered). Network errors, timeouts and HTTP 5xx/408/429 refusals are
    retried; any other refusal (401, 403, 404...) ends reconnection, as do ``max_attempts``
    failed attempts in a row.

    After each (re)connection ``on_connect(conn)`` (sync or async) runs with the new
    :class:`ClientConnection` before any waiting :meth:`send` goes out, so a resubscription
    comes first (send on ``conn`` there: the client's own :meth:`send` waits for
    ``on_connect`` to finish). If it raises, the connection is closed (1011) and the error
    treated as a failed attempt (retried if it is one of the errors above or a
    :class:`ConnectionClosed`, fatal otherwise).

    Sending while disconnected waits for the reconnection up to ``send_timeout`` seconds, then
    raises :class:`ConnectionClosed` (code 1006). Delivery is at most once: a message handed
    to a connection that then drops may be lost (resend from ``on_connect`` if that matters).
    :meth:`recv` and ``async for`` continue across reconnections; they end (``async for``) or
    raise :class:`ConnectionClosed` (``recv``) after :meth:`close`, and raise it, with the
    last error as ``__cause__``, when reconnection gave up.

    ``@client.route(type)`` answers the hub's ``session.call`` on every connection (see
    :meth:`ClientConnection.route`). With ``refresh_token`` each connection keeps its JWT
    fresh (see ``melody.client.refresh``), and a reconnection presents the last token
    refreshed, or a new one from ``refresh_token`` when that one expires within
    ``REFRESH_MARGIN`` seconds, in place of the token in the URL or headers.

    Observability: :attr:`connected` (an ``asyncio.Event`` set while a connection is open),
    :attr:`attempts`, :attr:`failures`, :attr:`reconnects`, :attr:`outages`,
    :attr:`last_error`, :meth:`stats`, and the ``melody.client`` logger (a warning per outage
    and per failed attempt, info on each reconnection).
    """

    def __init__(
        self,
        url: str,
        *,
        subprotocols: Sequence[str] = (),
        headers: Sequence[tuple[str, str]] | Mapping[str, str] = (),
        origin: str | None = None,
        compression: bool = False,
        max_message_size: int = 1 << 20,
        max_queue: int | None = 64,
        open_timeout: float | None = 10.0,
        close_timeout: float = 5.0,
        ping_interval: float | None = None,
        ping_timeout: float | None = None,
        ssl: _ssl.SSLContext | None = None,
        user_agent: str | None = _USER_AGENT,
        refresh_token: RefreshToken | None = None,
        on_connect: OnConnect | None = None,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        backoff_factor: float = 2.0,
        jitter: float = 0.5,
        max_attempts: int | None = None,
        send_timeout: float | None = 10.0,
    ) -> None:
        """Configure; nothing connects until the object is awaited through :func:`connect`
        (or :meth:`start` is awaited). Raises ValueError for invalid settings."""
        _parse_url(url)
        check_seconds("backoff_initial", backoff_initial)
        check_seconds("backoff_max", backoff_max)
        if backoff_max < backoff_initial:
            raise ValueError("backoff_max must be >= backoff_initial")
        check_rate("backoff_factor", backoff_factor, low=1.0, high=1000.0, allow_low=True)
        check_rate("jitter", jitter, low=0.0, high=1.0, allow_low=True)
        if max_attempts is not None:
            check_int("max_attempts", max_attempts, 1, MAX_COUNT)
        if send_timeout is not None:
            check_seconds("send_timeout", send_timeout, allow_zero=True)
        self.url = url
        """The URL connections are opened to."""
        self._options = _make_options(
            subprotocols, headers, origin, compression, max_message_size, max_queue,
            open_timeout, close_timeout, ping_interval, ping_timeout, ssl, user_agent)
        self._on_connect = on_connect
        # Server requests answered on every connection (one dict, shared with each).
        self._routes: Routes = {}
        self._refresh_token = refresh_token
        # The token the next connection presents: the first one, then the last refreshed.
        self._token = find_token(url, self._options.headers)
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._backoff_factor = backoff_factor
        self._jitter = jitter
        self._max_attempts = max_attempts
        self.send_timeout = send_timeout
        """How long :meth:`send` waits for a reconnection before raising."""
        self.connected = asyncio.Event()
        """Set while a connection is open; cleared for each outage."""
        self.attempts = 0
        """Connection attempts made, successful or not."""
        self.failures = 0
        """Attempts that failed."""
        self.reconnects = 0
        """Successful reconnections (the first connection not counted)."""
        self.outages = 0
        """Times an open connection was lost."""
        self.last_error: BaseException | None = None
        """Why the last attempt failed, or None if none has."""
        self._outage_time = 0.0
        self._down_since: float | None = None
        self._conn: ClientConnection | None = None
        self._up = asyncio.Event()  # set while connected, closing or given up: wakes waiters
        self._closing = False
        self._closing_event = asyncio.Event()  # wakes a backoff sleep
        self._gave_up: BaseException | None = None
        self._done = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._random = random.Random()
        # subscribe(): restored on every new connection, from their last position.
        self._subscriptions: dict[str, Subscription] = {}

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("connected" if self.connected.is_set() else "down")
        return f"<ReconnectingClient {self.url} {state} reconnects={self.reconnects}>"

    # -- observability ----------------------------------------------------------------------

    @property
    def connection(self) -> ClientConnection | None:
        """The current (or last) connection; None before the first one."""
        return self._conn

    @property
    def closed(self) -> bool:
        """True after :meth:`close`, or when reconnection gave up."""
        return self._done.is_set()

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol of the current connection."""
        return self._conn.subprotocol if self._conn is not None else None

    @property
    def request_headers(self) -> Headers | None:
        """The upgrade request headers of the current connection."""
        return self._conn.request_headers if self._conn is not None else None

    @property
    def response_headers(self) -> Headers | None:
        """The 101 response headers of the current connection."""
        return self._conn.response_headers if self._conn is not None else None

    @property
    def close_code(self) -> int | None:
        """The close code of the current connection (None while it is open)."""
        return self._conn.close_code if self._conn is not None else None

    @property
    def close_reason(self) -> str | None:
        """The close reason of the current connection (None while it is open)."""
        return self._conn.close_reason if self._conn is not None else None

    def stats(self) -> dict[str, float]:
        """``attempts``, ``failures``, ``reconnects``, ``outages``, ``outage_seconds`` (total
        time disconnected, the current outage included) and ``connected`` (1.0 or 0.0)."""
        outage = self._outage_time
        if self._down_since is not None:
            outage += time.monotonic() - self._down_since
        return {
            "attempts": self.attempts,
            "failures": self.failures,
            "reconnects": self.reconnects,
            "outages": self.outages,
            "outage_seconds": outage,
            "connected": 1.0 if self.connected.is_set() else 0.0,
        }

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> ReconnectingClient:
        """Connect for the first time, retrying like a reconnection; return ``self``.

        The first attempt is immediate. Raises the last attempt's error (``OSError``,
        ``TimeoutError``, :class:`HandshakeError`...) when it is not worth retrying or
        ``max_attempts`` attempts failed. RuntimeError if started already.
        """
        if self._supervisor is not None or self._conn is not None:
            raise RuntimeError("this ReconnectingClient was started already")
        conn = await self._establish(first=True)
        self._install(conn)
        logger.info("connected to %s", self.url)
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())
        return self

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Stop reconnecting (a backoff sleep or an attempt in progress is cancelled) and
        close the current connection like :meth:`ClientConnection.close`. Idempotent."""
        if self._closing:
            await self._done.wait()
            return
        self._closing = True
        self._closing_event.set()
        self._up.set()
        supervisor = self._supervisor
        if supervisor is not None and not supervisor.done():
            supervisor.cancel()
            await asyncio.wait([supervisor])
        try:
            if self._conn is not None:
                await self._conn.close(code, reason)
        finally:
            self.connected.clear()
            self._end_outage()
            for sub in self._subscriptions.values():
                sub.close(self._closed_error())
            self._subscriptions.clear()
            self._done.set()
        logger.info("closed the connection to %s", self.url)

    async def wait_closed(self) -> None:
        """Wait until :meth:`close` finished or reconnection gave up."""
        await self._done.wait()

    def _install(self, conn: ClientConnection) -> None:
        self._conn = conn
        conn.link.when_down(self._connection_down)
        self._end_outage()
        self.connected.set()
        self._up.set()
        if not conn.open:  # it dropped already (e.g. inside on_connect's last await)
            self._connection_down(conn)

    def _end_outage(self) -> None:
        if self._down_since is not None:
            self._outage_time += time.monotonic() - self._down_since
            self._down_since = None

    def _connection_down(self, conn: ClientConnection) -> None:
        # Called synchronously by the connection as soon as it stops being open.
        if conn is not self._conn or self._closing:
            return
        self.connected.clear()
        self._up.clear()
        self.outages += 1
        self._down_since = time.monotonic()

    async def _supervise(self) -> None:
        while True:
            conn = self._conn
            assert conn is not None
            await conn.link.wait_down()
            if self._closing:
                return
            logger.warning("connection to %s lost (close code %s%s); reconnecting", self.url,
                           conn.close_code, f" {conn.close_reason!r}" if conn.close_reason else "")
            try:
                fresh = await self._establish(first=False)
            except Exception as exc:
                if not self._closing:
                    self._give_up(exc)
                return
            self.reconnects += 1
            outage = (time.monotonic() - self._down_since
                      if self._down_since is not None else 0.0)
            self._install(fresh)
            logger.info("reconnected to %s after %.3f s", self.url, outage)

    def _give_up(self, exc: BaseException) -> None:
        logger.error("giving up reconnecting to %s after %d failed attempts: %r",
                     self.url, self.failures, exc)
        self._gave_up = exc
        self.last_error = exc
        self.connected.clear()
        self._up.set()
        self._done.set()

    async def _establish(self, *, first: bool) -> ClientConnection:
        failed = 0
        delay = self._backoff_initial
        while True:
            if failed or not first:
                pause = delay * (1.0 - self._jitter * self._random.random())
                delay = min(delay * self._backoff_factor, self._backoff_max)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._closing_event.wait(), pause)
            if self._closing:
                raise self._closed_error()
            self.attempts += 1
            try:
                url, options = await self._with_fresh_token()
                conn = await _open_connection(url, options, routes=self._routes,
                                              refresh_token=self._refresh_token)
                if self._closing:  # close() came while connecting (start() is not cancelled)
                    await conn.close()
                    raise self._closed_error()
                await self._run_on_connect(conn)
                await self._resubscribe(conn)
            except Exception as exc:
                if self._closing:
                    raise
                failed += 1
                self.failures += 1
                self.last_error = exc
                give_up = not _retryable(exc) or (
                    self._max_attempts is not None and failed >= self._max_attempts)
                logger.warning("attempt %d to connect to %s failed: %r%s", failed, self.url,
                               exc, "" if give_up else "; retrying")
                if give_up:
                    raise
                continue
            return conn

    async def _resubscribe(self, conn: ClientConnection) -> None:
        # Every subscription on the new connection, from where it stopped. A refusal ends
        # that subscription (its iteration raises it); a connection error retries the whole.
        for sub in list(self._subscriptions.values()):
            try:
                await conn.attach(sub, self._options.open_timeout)
            except RequestError as exc:
                logger.warning("resubscribing to %r refused: %s", sub.topic, exc)
                self._subscriptions.pop(sub.topic, None)
                sub.close(exc)
                continue
            sub.resubscribes += 1
            logger.info("resubscribed to %r (recovered=%s, offset=%s)", sub.topic,
                        sub.recovered, sub.offset)
            await _notify(sub)

    async def subscribe(self, topic: str, *, recover: bool = True, max_queue: int = 10_000,
                        on_resubscribe: Callable[[Subscription], Any] | None = None,
                        timeout: float | None = 10.0) -> Subscription:
        """Subscribe to ``topic`` (see :meth:`ClientConnection.subscribe`) for as long as this
        client lives: after every reconnect the subscription is restored by itself and, for
        a topic with history and ``recover`` on, resumed from the last publication it
        delivered (what was published meanwhile comes first, exactly once). After each
        restore ``sub.recovered`` tells whether that worked and ``on_resubscribe(sub)`` is
        called (the place to refetch state when it did not). Waits for a connection like
        :meth:`send`."""
        if topic in self._subscriptions:
            raise ValueError(f"already subscribed to {topic!r}")
        sub = Subscription(topic, recover=recover, max_queue=max_queue)
        sub.on_resubscribe = on_resubscribe
        self._subscriptions[topic] = sub
        try:
            conn = await self._connection_for_send()
            await conn.attach(sub, timeout)
        except BaseException:
            self._subscriptions.pop(topic, None)
            raise
        return sub

    async def unsubscribe(self, topic: str, *, timeout: float | None = 10.0) -> bool:
        """End the subscription to ``topic`` (here and on the hub)."""
        sub = self._subscriptions.pop(topic, None)
        if sub is not None:
            sub.close(StopAsyncIteration())
        conn = await self._connection_for_send()
        return await conn.unsubscribe(topic, timeout=timeout)

    async def _with_fresh_token(self) -> tuple[str, Any]:
        # The URL and options for the next connection: with refresh_token, the last token a
        # connection refreshed to, or a new one if that expires within the refresh margin
        # (after a long outage), in place of the first token.
        first = find_token(self.url, self._options.headers)
        token = self._token
        last = self._conn.token if self._conn is not None else None
        if last is not None:
            token = last
        if self._refresh_token is None or token is None or first is None:
            return self.url, self._options
        exp = token_expiry(token)
        if exp is not None and exp - time.time() < REFRESH_MARGIN:
            token = await fetch_token(self._refresh_token)
        self._token = token
        if token == first:
            return self.url, self._options
        headers = tuple((n, v.replace(first, token)) for n, v in self._options.headers)
        return self.url.replace(first, token), dataclasses.replace(self._options,
                                                                   headers=headers)

    def route(self, type: str) -> Callable[[_F], _F]:
        """:meth:`ClientConnection.route`, on every connection this client makes."""
        def register(fn: _F) -> _F:
            self._routes[type] = fn
            return fn

        return register

    async def _run_on_connect(self, conn: ClientConnection) -> None:
        callback = self._on_connect
        if callback is None:
            return
        try:
            result = callback(conn)
            if inspect.isawaitable(result):
                await result
        except BaseException as exc:
            if isinstance(exc, Exception):
                logger.warning("on_connect failed for %s: %r", self.url, exc)
                await conn.close(CLOSE_INTERNAL_ERROR, "on_connect failed")
            else:
                conn.link.abort()
            raise

    def _closed_error(self) -> ConnectionClosed:
        if self._gave_up is not None:
            error = ConnectionClosed(CLOSE_ABNORMAL, f"reconnection gave up: {self._gave_up!r}")
            error.__cause__ = self._gave_up
            return error
        conn = self._conn
        code = conn.close_code if conn is not None and conn.close_code is not None else 1000
        reason = conn.close_reason or "" if conn is not None else ""
        return ConnectionClosed(code, reason)

    async def _open_connection_now(self) -> ClientConnection:
        while True:
            if self._closing or self._gave_up is not None:
                raise self._closed_error()
            conn = self._conn
            if conn is not None and conn.open:
                return conn
            await self._up.wait()

    async def _connection_for_send(self) -> ClientConnection:
        conn = self._conn
        if conn is not None and conn.open and not self._closing:
            return conn  # the fast path: no task, no timer
        if self.send_timeout is None:
            return await self._open_connection_now()
        try:
            return await asyncio.wait_for(self._open_connection_now(), self.send_timeout)
        except TimeoutError:
            error = ConnectionClosed(
                CLOSE_ABNORMAL, f"not connected: no reconnection within {self.send_timeout} s")
            error.__cause__ = self.last_error
            raise error from None

    # -- the connection interface -----------------------------------------------------------

    async def send(self, message: str) -> None:
        """Send a text message on the current connection, waiting for one if there is none.

        Raises :class:`ConnectionClosed` after :meth:`close`, when reconnection gave up, when
        no connection came within ``send_timeout``, or when the connection dropped while the
        message waited for the transport (it may or may not have arrived). TypeError for a
        non-``str``.
        """
        if not isinstance(message, str):
            raise TypeError(f"send() takes a str, not {type(message).__name__}: "
                            "use send_binary() for bytes")
        conn = await self._connection_for_send()
        await conn.send(message)

    async def send_binary(self, data: bytes | bytearray | memoryview) -> None:
        """Send a binary message; waits and raises like :meth:`send`."""
        if isinstance(data, str):
            raise TypeError("send_binary() takes bytes: use send() for str")
        conn = await self._connection_for_send()
        await conn.send_binary(data)

    async def ping(self, payload: bytes | str = b"", *, timeout: float | None = None) -> float:
        """:meth:`ClientConnection.ping` on the current connection (waiting like :meth:`send`
        for one)."""
        conn = await self._connection_for_send()
        return await conn.ping(payload, timeout=timeout)

    async def request(self, type: str, data: Any = None, *,
                      timeout: float | None = 10.0) -> Any:
        """:meth:`ClientConnection.request` on the current connection (waiting like
        :meth:`send` for one). Not retried: when the connection drops before the reply,
        raises :class:`ConnectionClosed` (the handler may or may not have run)."""
        conn = await self._connection_for_send()
        return await conn.request(type, data, timeout=timeout)

    async def recv(self) -> str | bytes:
        """The next message, from whichever connection is current; waits across outages.

        Messages a dropped connection had received are returned before the next
        connection's. Raises :class:`ConnectionClosed` after :meth:`close` or when
        reconnection gave up; RuntimeError if another task is already waiting in ``recv``.
        """
        while True:
            conn = self._conn
            if conn is None or (not conn.queued and not conn.open):
                conn = await self._open_connection_now()
            try:
                return await conn.recv()
            except ConnectionClosed:
                if self._closing or self._gave_up is not None:
                    raise self._closed_error() from None
                # An outage: wait for the next connection.

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        """Every message across reconnections; ends after :meth:`close`, raises
        :class:`ConnectionClosed` when reconnection gave up."""
        while True:
            try:
                message = await self.recv()
            except ConnectionClosed:
                if self._gave_up is None:
                    return
                raise
            yield message


async def _notify(sub: Subscription) -> None:
    callback = sub.on_resubscribe
    if callback is None:
        return
    try:
        result = callback(sub)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("on_resubscribe for %r failed", sub.topic)
