"""The WebSocket client: :func:`connect`, on the same sans-I/O core as the hub.

A connection is a ``Connection(is_server=False)`` from ``melody._core.connection`` (compiled, or
its pure-Python twin: frames are masked with a fresh random key each, text is checked for UTF-8
as it arrives, permessage-deflate runs in zlib) behind an ``asyncio.BufferedProtocol``: the
socket is read straight into the core's buffer, with no copy while the application keeps up.
Works on asyncio's loops and on uvloop.

::

    import asyncio
    import melody

    async def main() -> None:
        async with melody.connect("ws://127.0.0.1:5000/chat", compression=True) as conn:
            await conn.send("hello")
            async for msg in conn:          # ends when the server closes with 1000/1001
                print(msg)

    asyncio.run(main())

Backpressure both ways: ``await conn.send(...)`` returns as soon as the frame is handed to the
transport and waits only while the transport's buffer is over its high-water mark (the server is
not reading). Received messages wait in a queue of at most ``max_queue`` messages; when it is
full the client stops reading the socket, so a fast server meets TCP flow control instead of
growing the client's memory.

Reconnecting mode returns a :class:`ReconnectingClient`: the same methods, over a connection
that is re-established after every outage with exponential backoff and jitter; ``on_connect``
runs again after each (re)connection, before anything else is sent on it::

    async def resubscribe(conn: melody.ClientConnection) -> None:
        await conn.send('{"subscribe": "prices"}')

    async with melody.connect(url, reconnect=True, on_connect=resubscribe) as client:
        async for msg in client:            # continues across outages; ends on close()
            handle(msg)                     # client.reconnects, client.stats() tell the story

Everything that goes wrong is named: :class:`melody.errors.HandshakeError` (refused or invalid
opening handshake, with the HTTP status), :class:`melody.errors.ConnectionClosed` (code and
reason of the close), ``OSError`` (no TCP connection), ``TimeoutError`` (a bounded wait expired).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import logging
import os
import random
import ssl as _ssl
import sys
import time
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar, cast, overload
from urllib.parse import quote, unquote, urlsplit

import orjson

from melody._core.connection import STATE_OPEN, Connection
from melody._core.deflate import accept_response, build_offer
from melody.errors import (
    CLOSE_ABNORMAL,
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    ConnectionClosed,
    HandshakeError,
    InvalidPayload,
    MessageTooBig,
    ProtocolError,
    RequestError,
)
from melody.handshake import (
    Headers,
    accept_key,
    build_client_request,
    parse_request,
    parse_response_head,
)
from melody.limits import MAX_COUNT, MAX_MESSAGE_SIZE, check_int, check_rate, check_seconds

__all__ = [
    "ClientConnection",
    "Connect",
    "ReconnectingClient",
    "connect",
]

logger = logging.getLogger("melody.client")

OnConnect = Callable[["ClientConnection"], "Awaitable[None] | None"]
"""``on_connect(conn)``: a plain function or a coroutine function, run after each connection."""

# A response head larger than this is not a WebSocket server's answer.
_MAX_HEAD = 16384
# How much of a refusal's body is awaited and quoted in the HandshakeError.
_MAX_BODY = 4096
# Close codes after which ``async for`` ends quietly (RFC 6455 7.4.1: normal, going away, and
# "no status code", which is what a bare close frame means).
_OK_CODES = frozenset((1000, 1001, 1005))
# Headers the handshake computes itself; passing them in ``headers`` is refused.
_RESERVED_HEADERS = frozenset((
    "host", "upgrade", "connection", "sec-websocket-key", "sec-websocket-version",
    "sec-websocket-protocol", "sec-websocket-extensions", "origin",
))
_DEFAULT_PORTS = {"ws": 80, "wss": 443}
_USER_AGENT = f"melody Python/{sys.version_info[0]}.{sys.version_info[1]}"


# -- options -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    secure: bool
    host: str
    port: int
    host_header: str
    resource: str
    authorization: str | None


def _parse_url(url: str) -> _Target:
    """Split a ``ws://`` / ``wss://`` URL (RFC 6455 section 3); ValueError when it is not one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid WebSocket URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"{url!r} is not a ws:// or wss:// URL")
    if parts.fragment or url.endswith("#"):
        raise ValueError(f"{url!r}: a WebSocket URL has no fragment (RFC 6455 section 3)")
    host = parts.hostname
    if not host:
        raise ValueError(f"{url!r} has no host")
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    default_port = _DEFAULT_PORTS[scheme]
    if port is None:
        port = default_port
    host_header = f"[{host}]" if ":" in host else host
    if port != default_port:
        host_header += f":{port}"
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    # Percent-encode what may not appear in a request-target (non-ASCII, spaces), keeping the
    # escapes and delimiters the caller wrote.
    resource = quote(resource, safe="/?&=%:@!$'()*+,;-._~")
    authorization = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(credentials.encode("utf-8")).decode("ascii")
    return _Target(scheme == "wss", host, port, host_header, resource, authorization)


@dataclass(frozen=True)
class _Options:
    subprotocols: tuple[str, ...]
    headers: tuple[tuple[str, str], ...]
    origin: str | None
    compression: bool
    max_message_size: int
    max_queue: int | None
    open_timeout: float | None
    close_timeout: float
    ping_interval: float | None
    ping_timeout: float | None
    ssl: _ssl.SSLContext | None
    user_agent: str | None


def _make_options(
    subprotocols: Sequence[str],
    headers: Sequence[tuple[str, str]] | Mapping[str, str],
    origin: str | None,
    compression: bool,
    max_message_size: int,
    max_queue: int | None,
    open_timeout: float | None,
    close_timeout: float,
    ping_interval: float | None,
    ping_timeout: float | None,
    ssl: _ssl.SSLContext | None,
    user_agent: str | None,
) -> _Options:
    if isinstance(subprotocols, str):
        raise TypeError("subprotocols is a sequence of names, not one string")
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    for name, _ in pairs:
        if name.lower() in _RESERVED_HEADERS:
            raise ValueError(f"header {name!r} is set by the handshake; use the matching "
                             "argument (subprotocols, compression, origin) instead")
    # Upper bounds too (melody.limits): a max_message_size near 2**63 is not "no limit", it
    # is arithmetic that wraps.
    check_int("max_message_size", max_message_size, 1, MAX_MESSAGE_SIZE)
    if max_queue is not None:
        check_int("max_queue", max_queue, 1, MAX_COUNT)
    if open_timeout is not None:
        check_seconds("open_timeout", open_timeout)
    check_seconds("close_timeout", close_timeout)
    if ping_interval is not None:
        check_seconds("ping_interval", ping_interval)
    if ping_timeout is not None:
        check_seconds("ping_timeout", ping_timeout)
    return _Options(tuple(subprotocols), tuple((str(n), str(v)) for n, v in pairs), origin,
                    bool(compression), max_message_size, max_queue, open_timeout,
                    close_timeout, ping_interval, ping_timeout, ssl, user_agent)


def _sendable_close_code(code: int) -> bool:
    """RFC 6455 7.4: the codes a close frame may carry (what a receiving melody accepts)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def _tokens(values: Sequence[str]) -> list[str]:
    """The comma-separated tokens of header values, stripped (RFC 7230 section 7 lists)."""
    return [token.strip() for value in values for token in value.split(",") if token.strip()]


# -- one connection ------------------------------------------------------------------------------


class _Protocol(asyncio.BufferedProtocol):
    """What the transport sees: every call forwards to the :class:`ClientConnection`."""

    __slots__ = ("_client",)

    def __init__(self, client: ClientConnection) -> None:
        self._client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._client._connection_made(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._client._get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self._client._buffer_updated(nbytes)

    def eof_received(self) -> bool:
        # The server half-closed: nothing more can arrive, so close our side too (False).
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._client._connection_lost(exc)

    def pause_writing(self) -> None:
        self._client._pause_writing()

    def resume_writing(self) -> None:
        self._client._resume_writing()


class ClientConnection:
    """One open client WebSocket connection; made by :func:`connect`, not directly.

    Methods: :meth:`send`, :meth:`send_binary`, :meth:`recv`, ``async for``, :meth:`ping`,
    :meth:`close`, :meth:`wait_closed`, :meth:`stats`. One task at a time may wait in
    :meth:`recv`; sending is safe from any number of tasks (frames are never interleaved:
    each message is framed and handed to the transport in one synchronous step).

    Received messages wait in a queue of at most ``max_queue`` messages. Bytes arriving while
    it is full stay unparsed (at most one read's worth) and the socket is not read until
    :meth:`recv` makes room, so the server feels TCP backpressure. While reading is paused the
    server's pings and close frame wait behind the unread messages too: keep reading.
    """

    __slots__ = (
        "_blocked",
        "_buffer_view",
        "_bytes_in",
        "_close_code",
        "_close_reason",
        "_close_timer",
        "_closed_future",
        "_completes",
        "_conn",
        "_down_callback",
        "_down_future",
        "_drain_waiters",
        "_error",
        "_body",
        "_body_want",
        "_head",
        "_header_tail",
        "_keepalive_task",
        "_key",
        "_local_close",
        "_local_address",
        "_low_water",
        "_loop",
        "_lost",
        "_max_queue",
        "_messages_in",
        "_messages_out",
        "_offer",
        "_opened",
        "_options",
        "_pending",
        "_pending_lo",
        "_pings",
        "_pings_sent",
        "_pongs_received",
        "_protocol",
        "_queue",
        "_queue_peak",
        "_read_pauses",
        "_reading_paused",
        "_refusal",
        "_recv_waiter",
        "_remote_address",
        "_request",
        "_request_headers",
        "_request_seq",
        "_requests",
        "_response_headers",
        "_skip",
        "_subprotocol",
        "_transport",
        "_write_pauses",
        "_writing_paused",
        "url",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, url: str, options: _Options, key: str,
                 offer: str | None, request: bytes) -> None:
        self._loop = loop
        self.url = url
        """The URL this connection was opened to."""
        self._options = options
        self._key = key
        self._offer = offer
        self._request = request
        self._conn = Connection(is_server=False, max_message_size=options.max_message_size)
        self._protocol = _Protocol(self)
        self._transport: asyncio.Transport | None = None
        self._opened: asyncio.Future[None] = loop.create_future()
        self._closed_future: asyncio.Future[None] = loop.create_future()
        self._down_future: asyncio.Future[None] = loop.create_future()
        self._down_callback: Callable[[ClientConnection], None] | None = None
        # Handshake: the response head as it arrives, then the refusal's body, if any.
        self._head: bytearray | None = bytearray()
        self._refusal: HandshakeError | None = None
        self._body = bytearray()
        self._body_want = 0
        self._subprotocol: str | None = None
        self._request_headers: Headers | None = None
        self._response_headers = Headers()
        self._local_address: Any = None
        self._remote_address: Any = None
        # Reading: the view the last get_buffer handed out, bytes read but not parsed yet, and
        # the frame boundaries (see _scan).
        self._buffer_view: memoryview | None = None
        self._pending: bytearray | None = None
        self._pending_lo = 0
        self._skip = 0
        self._completes = False
        self._header_tail = b""
        self._blocked = False
        self._reading_paused = False
        self._queue: deque[str | bytes] = deque()
        self._max_queue = options.max_queue
        self._low_water = (options.max_queue or 0) // 2
        self._recv_waiter: asyncio.Future[None] | None = None
        # Writing.
        self._writing_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._pings: list[tuple[bytes, asyncio.Future[float], float]] = []
        self._keepalive_task: asyncio.Task[None] | None = None
        # Closing.
        self._lost = False
        self._local_close = False
        self._close_code: int | None = None
        self._close_reason: str | None = None
        self._error: BaseException | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        # Counters.
        self._bytes_in = 0
        self._messages_in = 0
        self._messages_out = 0
        self._queue_peak = 0
        self._read_pauses = 0
        self._write_pauses = 0
        self._pings_sent = 0
        self._pongs_received = 0
        # request(): the replies awaited, by id (see _take_reply).
        self._requests: dict[int, asyncio.Future[Any]] = {}
        self._request_seq = 0

    def __repr__(self) -> str:
        state = "open" if self.open else ("closed" if self._lost else "closing")
        return f"<ClientConnection {self.url} {state}>"

    # -- public properties ------------------------------------------------------------------

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server chose among those offered, or None."""
        return self._subprotocol

    @property
    def request_headers(self) -> Headers:
        """The headers of the upgrade request this client sent."""
        if self._request_headers is None:
            self._request_headers = parse_request(self._request).headers
        return self._request_headers

    @property
    def response_headers(self) -> Headers:
        """The headers of the server's 101 response."""
        return self._response_headers

    @property
    def open(self) -> bool:
        """True until the closing handshake starts (either side) or the connection drops."""
        return self._conn.state == STATE_OPEN and not self._lost

    @property
    def closed(self) -> bool:
        """True once the TCP connection is closed. Queued messages can still be received."""
        return self._lost

    @property
    def close_code(self) -> int | None:
        """How the connection ended; None while it has not.

        The code of the server's close frame (which echoes ours after :meth:`close`), the code
        this client failed the connection with (1002, 1007, 1009, 1011 for a keepalive
        timeout), or 1006 when the TCP connection dropped without a close frame.
        """
        return self._close_code

    @property
    def close_reason(self) -> str | None:
        """The reason that goes with :attr:`close_code`; None while the connection is open."""
        return self._close_reason

    @property
    def local_address(self) -> Any:
        """The socket's own address (``transport.get_extra_info("sockname")``)."""
        return self._local_address

    @property
    def remote_address(self) -> Any:
        """The server's address (``transport.get_extra_info("peername")``)."""
        return self._remote_address

    @property
    def queued(self) -> int:
        """Received messages waiting for :meth:`recv` (never more than ``max_queue``)."""
        return len(self._queue)

    def stats(self) -> dict[str, int]:
        """Counters: bytes and messages in, messages out, the receive queue (``queued`` now,
        ``queue_peak`` ever), how often reading paused for a full queue (``read_pauses``) and
        writing for a full transport buffer (``write_pauses``), pings sent and pongs received.
        """
        return {
            "bytes_in": self._bytes_in,
            "messages_in": self._messages_in,
            "messages_out": self._messages_out,
            "queued": len(self._queue),
            "queue_peak": self._queue_peak,
            "read_pauses": self._read_pauses,
            "write_pauses": self._write_pauses,
            "pings_sent": self._pings_sent,
            "pongs_received": self._pongs_received,
        }

    # -- sending ----------------------------------------------------------------------------

    async def send(self, message: str) -> None:
        """Send ``message`` as one text frame (compressed when permessage-deflate was agreed).

        Returns once the frame is with the transport; waits only while the transport buffer is
        over its high-water mark. Raises :class:`ConnectionClosed` once the connection is
        closing or closed (nothing is sent then, or, if it dropped while waiting, the message
        may or may not have arrived), TypeError for a non-``str`` (see :meth:`send_binary`),
        UnicodeEncodeError for a string with lone surrogates.
        """
        if not isinstance(message, str):
            raise TypeError(f"send() takes a str, not {type(message).__name__}: "
                            "use send_binary() for bytes")
        conn = self._conn
        if conn.state != STATE_OPEN or self._lost:
            raise self._closed_error()
        conn.send_text(message)
        self._write(conn.data_to_send())
        self._messages_out += 1
        if self._writing_paused:
            await self._drain()

    async def send_binary(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` (any C-contiguous bytes-like object) as one binary frame.

        Same waiting and errors as :meth:`send`; TypeError for a ``str``.
        """
        if isinstance(data, str):
            raise TypeError("send_binary() takes bytes: use send() for str")
        conn = self._conn
        if conn.state != STATE_OPEN or self._lost:
            raise self._closed_error()
        conn.send_binary(data)
        self._write(conn.data_to_send())
        self._messages_out += 1
        if self._writing_paused:
            await self._drain()

    async def ping(self, payload: bytes | str = b"", *, timeout: float | None = None) -> float:
        """Send a ping; return the round-trip time in seconds once the matching pong arrives.

        A pong answers the ping with its payload and every earlier one (RFC 6455 5.5.3 lets a
        peer answer only the latest). ``payload`` (a ``str`` is sent as UTF-8) holds at most
        125 bytes, else ValueError. Raises TimeoutError when no pong came within ``timeout``
        seconds (None waits for as long as the connection lasts), :class:`ConnectionClosed` when
        the connection is closing or closes first.
        """
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        if len(data) > 125:
            raise ValueError("a ping payload holds at most 125 bytes")
        conn = self._conn
        if conn.state != STATE_OPEN or self._lost:
            raise self._closed_error()
        waiter: asyncio.Future[float] = self._loop.create_future()
        entry = (data, waiter, self._loop.time())
        self._pings.append(entry)
        conn.send_ping(data)
        self._write(conn.data_to_send())
        self._pings_sent += 1
        try:
            if timeout is None:
                return await waiter
            return await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise TimeoutError(f"no pong within {timeout} s") from None
        finally:
            if entry in self._pings:
                self._pings.remove(entry)

    def _write(self, data: bytes) -> None:
        if data and self._transport is not None and not self._lost:
            self._transport.write(data)

    async def _drain(self) -> None:
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._drain_waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._drain_waiters:
                self._drain_waiters.remove(waiter)

    def _pause_writing(self) -> None:
        self._writing_paused = True
        self._write_pauses += 1

    def _resume_writing(self) -> None:
        self._writing_paused = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- receiving --------------------------------------------------------------------------

    async def recv(self) -> str | bytes:
        """The next message: ``str`` for text, ``bytes`` for binary.

        Messages received before the connection closed are all returned first. Then raises
        :class:`ConnectionClosed` with the close code and reason (its ``__cause__`` is the
        :class:`melody.errors.ProtocolError` when this client failed the connection).
        RuntimeError if another task is already waiting in ``recv``.
        """
        queue = self._queue
        if not queue:
            if self._recv_waiter is not None:
                raise RuntimeError("another task is already waiting in recv()")
            while not queue:
                if self._close_code is not None:
                    raise self._closed_error()
                waiter: asyncio.Future[None] = self._loop.create_future()
                self._recv_waiter = waiter
                try:
                    await waiter
                finally:
                    self._recv_waiter = None
        message = queue.popleft()
        if self._blocked and len(queue) <= self._low_water:
            # Half the queue is free: parse what fits of what was read, maybe read again.
            # Waiting for half (not one) lets one parse and one read serve many messages.
            self._feed_pending()
        return message

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        """Every message until the connection closes.

        Ends quietly after :meth:`close` was called or when the server closed with 1000, 1001
        or no code; raises :class:`ConnectionClosed` for any other end (an error code, a
        protocol violation, 1006 for a dropped connection).
        """
        while True:
            try:
                message = await self.recv()
            except ConnectionClosed:
                if self._local_close or (self._close_code in _OK_CODES and self._error is None):
                    return
                raise
            yield message

    def _get_buffer(self) -> memoryview:
        # Read straight into the core's buffer; the bytes are looked at in _buffer_updated
        # before the core parses them.
        view = self._conn.get_buffer(-1)
        self._buffer_view = view
        return view

    def _buffer_updated(self, nbytes: int) -> None:
        view = self._buffer_view
        self._buffer_view = None
        if view is None or self._lost:
            return
        self._bytes_in += nbytes
        if self._head is not None or self._refusal is not None:
            self._handshake_data(bytes(view[:nbytes]))
            return
        if self._pending is not None:
            # Unparsed bytes from earlier reads come first (a read can still arrive after
            # pause_reading on some transports).
            self._pending += view[:nbytes]
            self._feed_pending()
            return
        conn = self._conn
        if conn.state == STATE_OPEN and self._max_queue is not None:
            cut = self._scan(view, 0, nbytes)
        else:
            cut = nbytes
        if cut < nbytes:
            # Kept before the core parses: the read buffer may be the core's shared one.
            self._pending = bytearray(view[cut:nbytes])
            self._pending_lo = 0
        if cut:
            # Zero-copy: the core parses in place the bytes it was read into.
            conn.buffer_updated(cut)
            # On a bare Connection the events of buffer_updated come with the next receive_data.
            self._events(conn.receive_data(b""))
        self._update_reading()

    def _feed_pending(self) -> None:
        """Parse what the queue has room for of the bytes read but not parsed yet."""
        pending = self._pending
        if pending is None or self._lost:
            self._blocked = False
            self._update_reading()
            return
        conn = self._conn
        lo = self._pending_lo
        end = len(pending)
        if conn.state == STATE_OPEN and self._max_queue is not None:
            cut = self._scan(pending, lo, end)
        else:
            cut = end
        if cut > lo:
            self._events(conn.receive_data(memoryview(pending)[lo:cut]))
        if cut == end:
            self._pending = None
            self._pending_lo = 0
        elif cut > 65536 and cut * 2 > end:
            del pending[:cut]  # reads that came while paused: do not keep what is parsed
            self._pending_lo = 0
        else:
            self._pending_lo = cut
        self._update_reading()

    def _scan(self, data: bytearray | memoryview, pos: int, end: int) -> int:
        """How much of ``data[pos:end]`` the core may parse without overfilling the queue.

        Walks the frame headers (never the payloads): a frame with FIN set and a data or
        continuation opcode completes a message. The cut falls before the last byte of the
        first such frame there is no room for, and ``_blocked`` says so. Frame boundaries are
        carried across reads in ``_skip`` (bytes left of the current frame), ``_completes``
        and ``_header_tail`` (the start of a header cut by the end of a read). One cheap pass
        per frame; the core still judges every frame.
        """
        max_queue = self._max_queue
        assert max_queue is not None
        room = max_queue - len(self._queue)
        skip = self._skip
        completes = self._completes
        blocked = False
        while pos < end:
            if skip == 0:
                tail = self._header_tail
                if tail:
                    joined = tail + bytes(data[pos:min(end, pos + 14 - len(tail))])
                    parsed = _frame_extent(joined)
                    if parsed is None:
                        self._header_tail = joined
                        pos = end
                        break
                    self._header_tail = b""
                    skip = parsed[0] - len(tail)
                    completes = parsed[1]
                else:
                    avail = end - pos
                    if avail < 2:
                        self._header_tail = bytes(data[pos:end])
                        pos = end
                        break
                    b1 = data[pos + 1]
                    length = b1 & 0x7F
                    if length < 126:
                        head = 2
                    elif length == 126:
                        if avail < 4:
                            self._header_tail = bytes(data[pos:end])
                            pos = end
                            break
                        length = (data[pos + 2] << 8) | data[pos + 3]
                        head = 4
                    else:
                        if avail < 10:
                            self._header_tail = bytes(data[pos:end])
                            pos = end
                            break
                        length = int.from_bytes(data[pos + 2:pos + 10], "big")
                        head = 10
                    if b1 & 0x80:
                        head += 4
                    skip = head + length
                    completes = (data[pos] & 0x88) == 0x80
            avail = end - pos
            if avail < skip:
                skip -= avail
                pos = end
                break
            if completes:
                if room <= 0:
                    # Everything but the frame's last byte: the core holds the rest, complete
                    # nothing, and the message is delivered when there is room.
                    pos += skip - 1
                    skip = 1
                    blocked = True
                    break
                room -= 1
            pos += skip
            skip = 0
        self._skip = skip
        self._completes = completes
        self._blocked = blocked
        return pos

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or self._lost:
            return
        pause = self._pending is not None and self._blocked
        if pause and not self._reading_paused:
            self._reading_paused = True
            self._read_pauses += 1
            transport.pause_reading()
        elif not pause and self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()

    def _events(self, events: list[Any]) -> None:
        queue = self._queue
        before = len(queue)
        for event in events:
            kind = event[0]
            if kind == "text" or kind == "binary":
                message = event[1]
                # A reply to request() starts with '{"id":' (melody writes the id first): only
                # those are parsed here, and only while a request waits.
                if (self._requests and kind == "text" and message.startswith('{"id":')
                        and self._take_reply(message)):
                    continue
                queue.append(message)
            elif kind == "pong":
                self._on_pong(event[1])
            elif kind == "close":
                self._on_close_frame(event[1], event[2])
            elif kind == "fail":
                self._on_fail(event[1], event[2])
            # "ping": the core queued the pong already; it leaves with data_to_send below.
        count = len(queue) - before
        if count:
            self._messages_in += count
            if len(queue) > self._queue_peak:
                self._queue_peak = len(queue)
            self._wake_receiver()
        self._write(self._conn.data_to_send())

    async def request(self, type: str, data: Any = None, *,
                      timeout: float | None = 10.0) -> Any:
        """Send ``{"type": type, "id": n, "data": data}`` (JSON) and return the reply's data.

        For a hub with ``codec=melody.codecs.JSON`` and routes (``melody.routing``): the reply
        ``{"id": n, "ok": true, "data": ...}`` with this connection's next id is taken out of
        the message stream (``recv`` never sees it). Raises
        :class:`~melody.errors.RequestError` with the server's text for an ``"ok": false``
        reply, TimeoutError when no reply comes within ``timeout`` seconds (None: wait), and
        :class:`ConnectionClosed` when the connection ends first; TypeError when ``data`` is
        not JSON-serializable. Replies are read with the other messages: a full receive queue
        (``max_queue``) delays them until :meth:`recv` makes room.
        """
        self._request_seq += 1
        msg_id = self._request_seq
        text = orjson.dumps({"type": type, "id": msg_id, "data": data}).decode("utf-8")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._requests[msg_id] = future
        try:
            await self.send(text)
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._requests.pop(msg_id, None)

    def _take_reply(self, text: str) -> bool:
        """Resolve the request this text answers; False when it answers none of ours."""
        try:
            reply = orjson.loads(text)
        except orjson.JSONDecodeError:
            return False
        msg_id = reply.get("id") if isinstance(reply, dict) else None
        if type(msg_id) is not int:
            return False
        future = self._requests.pop(msg_id, None)
        if future is None or future.done():
            return False
        if reply.get("ok") is True:
            future.set_result(reply.get("data"))
        else:
            future.set_exception(RequestError(str(reply.get("error"))))
        return True

    def _wake_receiver(self) -> None:
        waiter = self._recv_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_pong(self, payload: bytes) -> None:
        self._pongs_received += 1
        pings = self._pings
        for index, (data, _, _) in enumerate(pings):
            if data == payload:
                now = self._loop.time()
                for _, waiter, sent in pings[:index + 1]:
                    if not waiter.done():
                        waiter.set_result(now - sent)
                del pings[:index + 1]
                return

    # -- closing ----------------------------------------------------------------------------

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Run the closing handshake with ``code`` and ``reason``, then close TCP.

        Waits for the server's close frame and for it to close the TCP connection (RFC 6455
        7.1.1), at most ``close_timeout`` seconds, then drops the connection. Calling it again,
        or after the server closed, just waits for the end. Messages already received stay
        available to :meth:`recv`. Raises ValueError for a code that may not be sent (only
        1000-1003, 1007-1014 and 3000-4999 may) or a reason over 123 UTF-8 bytes.
        """
        if not _sendable_close_code(code):
            raise ValueError(f"close code {code} may not be sent (RFC 6455 7.4)")
        if len(reason.encode("utf-8")) > 123:
            raise ValueError("a close reason holds at most 123 UTF-8 bytes")
        conn = self._conn
        if not self._lost and conn.state == STATE_OPEN:
            conn.send_close(code, reason)
            self._local_close = True
            self._mark_down()
            self._write(conn.data_to_send())
            # Nothing more is delivered: read on, whatever the queue, to find the reply.
            self._feed_pending()
        self._stop_keepalive()
        if self._lost:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._closed_future),
                                   self._options.close_timeout)
        except TimeoutError:
            logger.debug("%s: no close within %s s, dropping the connection", self.url,
                         self._options.close_timeout)
            self._abort()
            await asyncio.shield(self._closed_future)

    async def wait_closed(self) -> None:
        """Wait until the TCP connection is closed (it never raises)."""
        await asyncio.shield(self._closed_future)

    def _on_close_frame(self, code: int, reason: str) -> None:
        # The server closed, or answered our close; the core queued our reply if one was due.
        self._set_close(code, reason)
        self._mark_down()
        self._wake_receiver()
        # RFC 6455 7.1.1: the server closes TCP first; drop it ourselves if it does not.
        self._arm_close_timer()

    def _on_fail(self, code: int, reason: str) -> None:
        # We failed the connection (RFC 6455 7.1.7): the core queued a close with ``code``.
        error: ProtocolError
        if code == MessageTooBig.code:
            error = MessageTooBig(reason)
        elif code == InvalidPayload.code:
            error = InvalidPayload(reason)
        else:
            error = ProtocolError(reason, code)
        logger.debug("%s: failing the connection: %s", self.url, error)
        self._error = error
        self._set_close(code, reason)
        self._mark_down()
        self._wake_receiver()
        self._close_transport_soon()

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection from our side (keepalive timeout): close frame, then TCP."""
        conn = self._conn
        if self._lost:
            return
        if conn.state == STATE_OPEN:
            conn.send_close(code, reason)
            self._write(conn.data_to_send())
        self._set_close(code, reason)
        self._mark_down()
        self._wake_receiver()
        self._close_transport_soon()

    def _close_transport_soon(self) -> None:
        # The close frame is written after the events are handled; transport.close() sends
        # what is buffered first. A server that does not read would stall that: the timer
        # aborts.
        transport = self._transport
        if transport is not None and not self._lost:
            self._loop.call_soon(transport.close)
        self._arm_close_timer()

    def _arm_close_timer(self) -> None:
        if self._close_timer is None and not self._lost:
            self._close_timer = self._loop.call_later(self._options.close_timeout, self._abort)

    def _set_close(self, code: int, reason: str) -> None:
        if self._close_code is None:
            self._close_code = code
            self._close_reason = reason

    def _mark_down(self) -> None:
        """The connection stopped being open: tell whoever watches (ReconnectingClient)."""
        if not self._down_future.done():
            self._down_future.set_result(None)
            callback = self._down_callback
            if callback is not None:
                callback(self)

    def _abort(self) -> None:
        transport = self._transport
        if transport is not None and not self._lost:
            transport.abort()

    def _closed_error(self) -> ConnectionClosed:
        code = self._close_code
        if code is None:
            # Our close frame is out, the reply not in yet.
            code = self._conn.close_code or CLOSE_ABNORMAL
            reason = self._conn.close_reason
        else:
            reason = self._close_reason or ""
        error = ConnectionClosed(code, reason)
        error.__cause__ = self._error
        return error

    def _stop_keepalive(self) -> None:
        task = self._keepalive_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self._keepalive_task = None

    async def _keepalive(self, interval: float, timeout: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if not self.open:
                return
            try:
                await self.ping(os.urandom(4), timeout=timeout)
            except TimeoutError:
                logger.warning("%s: no pong within %s s: failing the connection (1011)",
                               self.url, timeout)
                self._keepalive_task = None
                self._fail(CLOSE_INTERNAL_ERROR, "keepalive ping timeout")
                return
            except ConnectionClosed:
                return

    # -- transport events -------------------------------------------------------------------

    def _connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._transport = cast(asyncio.Transport, transport)
        self._local_address = transport.get_extra_info("sockname")
        self._remote_address = transport.get_extra_info("peername")

    def _connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._buffer_view = None
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if self._head is not None or self._refusal is not None:
            self._handshake_lost(exc)
        if self._close_code is None:
            self._close_code = CLOSE_ABNORMAL
            self._close_reason = ""
            if exc is not None:
                logger.debug("%s: connection lost: %r", self.url, exc)
        self._stop_keepalive()
        self._mark_down()
        self._wake_receiver()
        closed = self._closed_error()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_exception(closed)
        self._drain_waiters = []
        for _, pong_waiter, _ in self._pings:
            if not pong_waiter.done():
                pong_waiter.set_exception(self._closed_error())
        self._pings = []
        for request in self._requests.values():
            if not request.done():
                request.set_exception(self._closed_error())
        self._requests.clear()
        if not self._closed_future.done():
            self._closed_future.set_result(None)

    # -- opening handshake ------------------------------------------------------------------

    def _handshake_data(self, data: bytes) -> None:
        if self._refusal is not None:
            # Collecting the body of a refusal, for its reason.
            self._refusal_body(data)
            return
        head = self._head
        assert head is not None
        start = max(len(head) - 3, 0)
        head += data
        end = head.find(b"\r\n\r\n", start)
        if end < 0:
            if len(head) > _MAX_HEAD:
                self._handshake_failed(HandshakeError(
                    502, f"invalid response from server: head over {_MAX_HEAD} bytes"))
            return
        rest = bytes(head[end + 4:])
        self._head = None
        try:
            self._check_response(bytes(head[:end + 4]), rest)
        except HandshakeError as exc:
            self._handshake_failed(exc)

    def _check_response(self, head: bytes, rest: bytes) -> None:
        status, headers = parse_response_head(head)
        self._response_headers = headers
        if status != 101:
            self._refused(status, headers, rest)
            return
        upgrade = [token.lower() for token in _tokens(headers.get_all("Upgrade"))]
        if upgrade != ["websocket"]:
            raise HandshakeError(502, "101 response without 'Upgrade: websocket'")
        if "upgrade" not in [t.lower() for t in _tokens(headers.get_all("Connection"))]:
            raise HandshakeError(502, "101 response without 'Connection: Upgrade'")
        accept = headers.get_all("Sec-WebSocket-Accept")
        if accept != [accept_key(self._key)]:
            raise HandshakeError(502, "Sec-WebSocket-Accept does not match the key sent "
                                 f"(got {accept!r})")
        protocols = _tokens(headers.get_all("Sec-WebSocket-Protocol"))
        if len(protocols) > 1:
            raise HandshakeError(502, f"server chose several subprotocols: {protocols!r}")
        if protocols:
            if protocols[0] not in self._options.subprotocols:
                raise HandshakeError(502, f"server chose subprotocol {protocols[0]!r}, which "
                                     f"was not offered (offered {self._options.subprotocols!r})")
            self._subprotocol = protocols[0]
        extensions = headers.get_all("Sec-WebSocket-Extensions")
        if extensions:
            if self._offer is None:
                raise HandshakeError(502, f"server enabled extensions that were not offered: "
                                     f"{', '.join(extensions)!r}")
            try:
                params = accept_response(extensions, offered=self._offer)
            except ValueError as exc:
                raise HandshakeError(
                    502, f"invalid permessage-deflate response {', '.join(extensions)!r}: {exc}"
                ) from None
            self._conn.inflater = params.client_inflater()
            self._conn.deflater = params.client_deflater()
        # Open. Frames the server sent right behind its 101 are parsed now.
        if not self._opened.done():
            self._opened.set_result(None)
        if rest:
            self._pending = bytearray(rest)
            self._pending_lo = 0
            self._feed_pending()

    def _refused(self, status: int, headers: Headers, rest: bytes) -> None:
        length_text = headers.get("Content-Length")
        try:
            length = int(length_text) if length_text is not None else 0
        except ValueError:
            length = 0
        self._refusal = HandshakeError(status, "", list(headers.items()))
        self._body_want = min(max(length, 0), _MAX_BODY)
        self._refusal_body(rest)

    def _refusal_body(self, data: bytes) -> None:
        self._body += data
        if len(self._body) >= self._body_want:
            self._refusal_done()

    def _refusal_done(self) -> None:
        refusal = self._refusal
        assert refusal is not None
        self._refusal = None
        text = bytes(self._body[:_MAX_BODY]).decode("utf-8", "replace").strip()
        self._body = bytearray()
        reason = f"server refused the upgrade with HTTP {refusal.status}"
        if text:
            reason += f": {text}"
        self._handshake_failed(HandshakeError(refusal.status, reason, refusal.headers))

    def _handshake_failed(self, error: HandshakeError) -> None:
        self._head = None
        logger.debug("%s: handshake failed: %s", self.url, error)
        if not self._opened.done():
            self._opened.set_exception(error)
        self._abort()

    def _handshake_lost(self, exc: Exception | None) -> None:
        if self._refusal is not None:
            self._refusal_done()  # the server closed before the whole body came: say what did
            return
        self._head = None
        if not self._opened.done():
            error = ConnectionError(
                "connection closed before the server answered the upgrade request")
            error.__cause__ = exc
            self._opened.set_exception(error)


def _frame_extent(header: bytes) -> tuple[int, bool] | None:
    """``(frame length, completes a message)`` from the start of a frame, None if cut short."""
    if len(header) < 2:
        return None
    length = header[1] & 0x7F
    head = 2
    if length == 126:
        if len(header) < 4:
            return None
        length = int.from_bytes(header[2:4], "big")
        head = 4
    elif length == 127:
        if len(header) < 10:
            return None
        length = int.from_bytes(header[2:10], "big")
        head = 10
    if header[1] & 0x80:
        head += 4
    return head + length, (header[0] & 0x88) == 0x80


async def _open_connection(url: str, options: _Options) -> ClientConnection:
    """TCP (and TLS) connect, opening handshake, keepalive: a ready ClientConnection."""
    target = _parse_url(url)
    context = options.ssl
    if target.secure:
        if context is None:
            context = _ssl.create_default_context()
    elif context is not None:
        raise ValueError(f"ssl was given for {url!r}: use a wss:// URL")
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    offer = build_offer() if options.compression else None
    extra = list(options.headers)
    if target.authorization is not None:
        extra.append(("Authorization", target.authorization))
    if options.user_agent is not None:
        extra.append(("User-Agent", options.user_agent))
    request = build_client_request(
        target.host_header, target.resource, key, subprotocols=options.subprotocols,
        extensions=offer, origin=options.origin, extra_headers=extra)
    loop = asyncio.get_running_loop()
    client = ClientConnection(loop, url, options, key, offer, request)

    async def opening() -> None:
        transport, _ = await loop.create_connection(
            lambda: client._protocol, target.host, target.port, ssl=context,
            server_hostname=target.host if context is not None else None)
        transport.write(request)
        await client._opened

    try:
        if options.open_timeout is None:
            await opening()
        else:
            await asyncio.wait_for(opening(), options.open_timeout)
    except TimeoutError:
        client._abort()
        raise TimeoutError(
            f"opening handshake with {url} not done within {options.open_timeout} s") from None
    except BaseException:
        client._abort()
        raise
    if options.ping_interval is not None:
        client._keepalive_task = loop.create_task(client._keepalive(
            options.ping_interval, options.ping_timeout or options.ping_interval))
    return client


# -- reconnecting ---------------------------------------------------------------------------------


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
            self._done.set()
        logger.info("closed the connection to %s", self.url)

    async def wait_closed(self) -> None:
        """Wait until :meth:`close` finished or reconnection gave up."""
        await self._done.wait()

    def _install(self, conn: ClientConnection) -> None:
        self._conn = conn
        conn._down_callback = self._connection_down
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
            await asyncio.shield(conn._down_future)
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
                conn = await _open_connection(self.url, self._options)
                if self._closing:  # close() came while connecting (start() is not cancelled)
                    await conn.close()
                    raise self._closed_error()
                await self._run_on_connect(conn)
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
                conn._abort()
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


# -- connect ---------------------------------------------------------------------------------------

_C = TypeVar("_C", ClientConnection, ReconnectingClient)


class Connect(Generic[_C]):
    """What :func:`connect` returns: await it for the connection, or use ``async with``.

    ``await`` opens the connection (a :class:`ReconnectingClient` can be started only once).
    ``async with`` opens it, gives it to the block and closes it (1000) when the block exits,
    whether normally or by an exception.
    """

    __slots__ = ("_entered", "_opener")

    def __init__(self, opener: Callable[[], Coroutine[Any, Any, _C]]) -> None:
        self._opener: Callable[[], Coroutine[Any, Any, _C]] = opener
        self._entered: _C | None = None

    def __await__(self) -> Generator[Any, None, _C]:
        """Open the connection (see :func:`connect` for what can be raised)."""
        return self._opener().__await__()

    async def __aenter__(self) -> _C:
        """Open the connection for the ``async with`` block."""
        self._entered = await self._opener()
        return self._entered

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        """Close the connection with 1000 (nothing to do if it is closed already)."""
        entered, self._entered = self._entered, None
        if entered is not None:
            await entered.close()


@overload
def connect(
    url: str,
    *,
    subprotocols: Sequence[str] = ...,
    headers: Sequence[tuple[str, str]] | Mapping[str, str] = ...,
    origin: str | None = ...,
    compression: bool = ...,
    max_message_size: int = ...,
    max_queue: int | None = ...,
    open_timeout: float | None = ...,
    close_timeout: float = ...,
    ping_interval: float | None = ...,
    ping_timeout: float | None = ...,
    ssl: _ssl.SSLContext | None = ...,
    user_agent: str | None = ...,
    reconnect: Literal[False] = ...,
) -> Connect[ClientConnection]: ...


@overload
def connect(
    url: str,
    *,
    subprotocols: Sequence[str] = ...,
    headers: Sequence[tuple[str, str]] | Mapping[str, str] = ...,
    origin: str | None = ...,
    compression: bool = ...,
    max_message_size: int = ...,
    max_queue: int | None = ...,
    open_timeout: float | None = ...,
    close_timeout: float = ...,
    ping_interval: float | None = ...,
    ping_timeout: float | None = ...,
    ssl: _ssl.SSLContext | None = ...,
    user_agent: str | None = ...,
    reconnect: Literal[True],
    on_connect: OnConnect | None = ...,
    backoff_initial: float = ...,
    backoff_max: float = ...,
    backoff_factor: float = ...,
    jitter: float = ...,
    max_attempts: int | None = ...,
    send_timeout: float | None = ...,
) -> Connect[ReconnectingClient]: ...


def connect(
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
    reconnect: bool = False,
    on_connect: OnConnect | None = None,
    backoff_initial: float = 0.1,
    backoff_max: float = 10.0,
    backoff_factor: float = 2.0,
    jitter: float = 0.5,
    max_attempts: int | None = None,
    send_timeout: float | None = 10.0,
) -> Connect[ClientConnection] | Connect[ReconnectingClient]:
    """Open a WebSocket connection to ``url`` (``ws://`` or ``wss://``).

    ``await melody.connect(url)`` returns a :class:`ClientConnection`; ``async with
    melody.connect(url) as conn:`` closes it at the end of the block. With ``reconnect=True``
    the result is a :class:`ReconnectingClient` instead.

    - ``subprotocols``: offered in preference order; the server's choice is ``conn.subprotocol``.
    - ``headers``: extra request headers (pairs or a mapping), e.g. ``Authorization``; the
      WebSocket headers, ``Host`` and ``Origin`` are the handshake's own. A ``user:password@``
      in the URL becomes Basic authorization. ``origin``: the ``Origin`` header, if any.
    - ``compression``: offer permessage-deflate (RFC 7692); used if the server accepts.
    - ``max_message_size``: a larger incoming message (compressed or inflated) fails the
      connection with 1009.
    - ``max_queue``: received messages held for :meth:`~ClientConnection.recv` before the
      socket stops being read (None: unbounded).
    - ``open_timeout``: bound on TCP connect, TLS and the opening handshake (None: none).
      ``close_timeout``: bound on the closing handshake.
    - ``ping_interval``: send a keepalive ping this often (None: never); no pong within
      ``ping_timeout`` (default: ``ping_interval``) fails the connection with 1011.
    - ``ssl``: the ``ssl.SSLContext`` for ``wss://`` (default: ``ssl.create_default_context()``).
    - ``user_agent``: the ``User-Agent`` header (None: not sent).
    - ``reconnect`` and the parameters after it: see :class:`ReconnectingClient`.

    Raises, when awaited: ``OSError`` when no TCP (or TLS) connection can be made (e.g.
    ConnectionRefusedError, ``ssl.SSLCertVerificationError``); :class:`HandshakeError` when the
    server refuses the upgrade (``status`` is its HTTP status, ``reason`` quotes its body,
    ``headers`` are its response headers) or answers with an invalid 101 (status 502: wrong
    ``Sec-WebSocket-Accept``, a subprotocol or extension that was not offered...);
    ``ConnectionError`` when the server closes before answering; ``TimeoutError`` after
    ``open_timeout``. Raises ValueError immediately for an invalid URL or setting.
    """
    if reconnect:
        client = ReconnectingClient(
            url, subprotocols=subprotocols, headers=headers, origin=origin,
            compression=compression, max_message_size=max_message_size, max_queue=max_queue,
            open_timeout=open_timeout, close_timeout=close_timeout,
            ping_interval=ping_interval, ping_timeout=ping_timeout, ssl=ssl,
            user_agent=user_agent, on_connect=on_connect, backoff_initial=backoff_initial,
            backoff_max=backoff_max, backoff_factor=backoff_factor, jitter=jitter,
            max_attempts=max_attempts, send_timeout=send_timeout)
        return Connect(client.start)
    if on_connect is not None:
        raise ValueError("on_connect is for reconnect=True")
    _parse_url(url)
    options = _make_options(subprotocols, headers, origin, compression, max_message_size,
                            max_queue, open_timeout, close_timeout, ping_interval,
                            ping_timeout, ssl, user_agent)

    def opener() -> Coroutine[Any, Any, ClientConnection]:
        return _open_connection(url, options)

    return Connect(opener)
