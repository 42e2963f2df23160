"""One client connection: :class:`ClientConnection` over an ``asyncio.BufferedProtocol``.

The opening handshake, the bounded receive queue, sending with backpressure, pings, requests
and the closing handshake; :func:`_open_connection` makes one ready to use. :class:`ClientLink`
(``conn.link``, package-internal) is what the opener and the reconnecting client do with a
connection that its users do not: open it, watch it go down, abort it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import ssl as _ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any, TypeVar, cast

import orjson

from melody._core.connection import Connection
from melody._core.constants import STATE_OPEN
from melody._core.extensions import accept_response, build_offer
from melody._core.frames import is_valid_close_code
from melody.client.answering import Routes, answer, server_request
from melody.client.options import _Options, _parse_url
from melody.client.refresh import RefreshToken, find_token, keep_fresh
from melody.client.subscription import Publication, Subscription
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

__all__ = ["ClientConnection"]

# Gap repairs in flight (a reference keeps each task alive until it is done).
_REPAIRS: set[asyncio.Task[None]] = set()

_F = TypeVar("_F", bound=Callable[..., Any])

# The whole package logs under the one name the documentation gives.
logger = logging.getLogger("melody.client")

# A response head larger than this is not a WebSocket server's answer.
_MAX_HEAD = 16384
# How much of a refusal's body is awaited and quoted in the HandshakeError.
_MAX_BODY = 4096
# Close codes after which ``async for`` ends quietly (RFC 6455 7.4.1: normal, going away, and
# "no status code", which is what a bare close frame means).
_OK_CODES = frozenset((1000, 1001, 1005))


def _tokens(values: Sequence[str]) -> list[str]:
    """The comma-separated tokens of header values, stripped (RFC 7230 section 7 lists)."""
    return [token.strip() for value in values for token in value.split(",") if token.strip()]


class _Protocol(asyncio.BufferedProtocol):
    """What the transport sees: a thin adapter that passes each event to the handler its
    :class:`ClientConnection` gave for it."""

    __slots__ = ("_buffer", "_lost", "_made", "_pause", "_resume", "_updated")

    def __init__(
        self,
        made: Callable[[asyncio.BaseTransport], None],
        buffer: Callable[[], memoryview],
        updated: Callable[[int], None],
        lost: Callable[[Exception | None], None],
        pause: Callable[[], None],
        resume: Callable[[], None],
    ) -> None:
        self._made = made
        self._buffer = buffer
        self._updated = updated
        self._lost = lost
        self._pause = pause
        self._resume = resume

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._made(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self._updated(nbytes)

    def eof_received(self) -> bool:
        # The server half-closed: nothing more can arrive, so close our side too (False).
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)

    def pause_writing(self) -> None:
        self._pause()

    def resume_writing(self) -> None:
        self._resume()


class ClientLink:
    """What the package does with a :class:`ClientConnection` that its users do not: open it,
    learn when it stops being open, drop it. Package-internal, not exported.

    One per connection, made with it (``conn.link``). The opener and
    :class:`~melody.client.reconnecting.ReconnectingClient` use these names, never the
    connection's private ones; :meth:`open` and :meth:`abort` are the handlers the
    connection lent it, the moment it went down is this object's own state.
    """

    __slots__ = ("_abort", "_down", "_on_down", "_open", "connection")

    def __init__(
        self,
        connection: ClientConnection,
        loop: asyncio.AbstractEventLoop,
        open: Callable[[str, int, _ssl.SSLContext | None], Coroutine[Any, Any, None]],
        abort: Callable[[], None],
    ) -> None:
        #: The connection this is the link of.
        self.connection = connection
        self._down: asyncio.Future[None] = loop.create_future()
        self._on_down: Callable[[ClientConnection], None] | None = None
        self._open = open
        self._abort = abort

    async def open(self, host: str, port: int, ssl: _ssl.SSLContext | None) -> None:
        """TCP (and TLS, when ``ssl`` is given) connect to ``host``:``port``, send the upgrade
        request, wait for the 101, start the keepalive pings; within ``open_timeout``. On any
        failure the connection is aborted and the error raised (see :func:`melody.connect`)."""
        await self._open(host, port, ssl)

    def abort(self) -> None:
        """Drop the TCP connection now, without a closing handshake (nothing once closed)."""
        self._abort()

    def when_down(self, callback: Callable[[ClientConnection], None]) -> None:
        """Call ``callback(connection)`` synchronously the moment the connection stops being
        open (either side starts the closing handshake, it fails, or TCP drops). One callback:
        a later one replaces it. Not called for a connection that is down already: check
        ``connection.open`` after registering."""
        self._on_down = callback

    async def wait_down(self) -> None:
        """Return once the connection stopped being open (at once if it has). Never raises;
        cancelling the wait leaves the connection alone."""
        await asyncio.shield(self._down)

    def mark_down(self) -> None:
        """The connection calls this each time it finds itself no longer open; only the first
        call counts."""
        if not self._down.done():
            self._down.set_result(None)
            callback = self._on_down
            if callback is not None:
                callback(self.connection)


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
        "_answering",
        "_buffer_view",
        "_bytes_in",
        "_close_code",
        "_close_reason",
        "_close_timer",
        "_closed_future",
        "_conn",
        "_drain_waiters",
        "_error",
        "_body",
        "_body_want",
        "_head",
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
        "_pings",
        "_pings_sent",
        "_pongs_received",
        "_protocol",
        "_queue",
        "_queue_peak",
        "_read_pauses",
        "_reading_paused",
        "_refresh_task",
        "_refresh_token",
        "_refusal",
        "_recv_waiter",
        "_remote_address",
        "_request",
        "_request_headers",
        "_request_seq",
        "_requests",
        "_reply_hooks",
        "_response_headers",
        "_subscriptions",
        "_own_subscriptions",
        "_routes",
        "_subprotocol",
        "_transport",
        "_write_pauses",
        "_writing_paused",
        "link",
        "token",
        "url",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, url: str, options: _Options, key: str,
                 offer: str | None, request: bytes, *, routes: Routes | None = None,
                 refresh_token: RefreshToken | None = None) -> None:
        self._loop = loop
        self.url = url
        """The URL this connection was opened to."""
        self.token: str | None = find_token(url, options.headers)
        """The JWT in force: the one the connection opened with (``Authorization: Bearer``
        or ``?token=``), then the last one a refresh sent (see ``refresh_token``)."""
        # Server requests answered here (route type -> handler): shared with a
        # ReconnectingClient, which hands the same dict to each of its connections.
        self._routes = routes
        self._answering: set[asyncio.Task[None]] = set()
        self._refresh_token = refresh_token
        self._refresh_task: asyncio.Task[None] | None = None
        self._options = options
        self._key = key
        self._offer = offer
        self._request = request
        self._conn = Connection(is_server=False, max_message_size=options.max_message_size)
        self._protocol = _Protocol(
            self._connection_made, self._get_buffer, self._buffer_updated,
            self._connection_lost, self._pause_writing, self._resume_writing)
        self._transport: asyncio.Transport | None = None
        self._opened: asyncio.Future[None] = loop.create_future()
        self._closed_future: asyncio.Future[None] = loop.create_future()
        # What the opener and ReconnectingClient use of this connection: package-internal,
        # see ClientLink.
        self.link = ClientLink(self, loop, self._open, self._abort)
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
        # Reading: the view the last get_buffer handed out. Bytes the queue has no room for yet
        # stay in the core, unparsed (see _parse_held).
        self._buffer_view: memoryview | None = None
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
        # Called with a reply's data as it is read, before anything after it (subscribe).
        self._reply_hooks: dict[int, Callable[[Any], None]] = {}
        self._request_seq = 0
        # subscribe(): the topics whose publications go to a Subscription, not to recv().
        self._subscriptions: dict[str, Subscription] = {}
        # Subscriptions this connection ends with it (a ReconnectingClient's outlive it).
        self._own_subscriptions: set[str] = set()

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
        if self._conn.stalled and len(queue) <= self._low_water:
            # Half the queue is free: parse what fits of what was read, maybe read again.
            # Waiting for half (not one) lets one parse and one read serve many messages.
            self._parse_held()
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
        # Read straight into the core's buffer; it parses the bytes in place.
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
        conn = self._conn
        # The core delivers no more messages than the queue has room for: it stops before the
        # first one that does not fit and holds the bytes from there on.
        conn.message_budget = self._room()
        conn.buffer_updated(nbytes)
        # On a bare Connection the events of buffer_updated come with the next receive_data.
        self._events(conn.receive_data(b""))
        self._parse_held()

    def _room(self) -> int:
        """The message budget the core gets: the queue's free room, -1 when it is unbounded."""
        max_queue = self._max_queue
        return -1 if max_queue is None else max_queue - len(self._queue)

    def _parse_held(self) -> None:
        """Parse what the core holds for want of room, as far as the queue has room now; pause
        reading while it still holds a message, resume once it holds none.

        Parsing goes on while there is room: a reply to :meth:`request` is taken out of the
        stream, so a message's budget may come back unused.
        """
        conn = self._conn
        while conn.stalled and not self._lost:
            room = self._room()
            if room == 0:
                break
            conn.message_budget = room
            self._events(conn.receive_data(b""))
        self._update_reading()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or self._lost:
            return
        pause = self._conn.stalled
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
                if (self._subscriptions and kind == "text"
                        and message.startswith('{"type":"publish"')
                        and self._take_publication(message)):
                    continue
                # A request from the server starts with '{"type":' (melody writes the type
                # first): parsed only when this connection has routes.
                if (self._routes and kind == "text" and message.startswith('{"type":')
                        and self._take_server_request(message)):
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
        return await self._send_request(type, data, timeout, None)

    async def _send_request(self, type: str, data: Any, timeout: float | None,
                       on_reply: Callable[[Any], None] | None) -> Any:
        self._request_seq += 1
        msg_id = self._request_seq
        text = orjson.dumps({"type": type, "id": msg_id, "data": data}).decode("utf-8")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._requests[msg_id] = future
        if on_reply is not None:
            self._reply_hooks[msg_id] = on_reply
        try:
            await self.send(text)
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._requests.pop(msg_id, None)
            self._reply_hooks.pop(msg_id, None)

    # -- topics ---------------------------------------------------------------------------------

    async def subscribe(self, topic: str, *, recover: bool = True, offset: int | None = None,
                        epoch: str | None = None, max_queue: int = 10_000,
                        timeout: float | None = 10.0) -> Subscription:
        """Subscribe to ``topic`` through the hub's JSON router (``hub.authorize``); return
        the :class:`~melody.client.subscription.Subscription` its publications go to
        (``async for pub in sub``; they no longer reach :meth:`recv`).

        For a topic with history (``hub.configure_topic``), ``offset`` and ``epoch`` (from an
        earlier subscription's ``sub.offset``/``sub.epoch``) ask for what was published since:
        it comes first, then the live stream, and ``sub.recovered`` says whether all of it
        could be recovered. Raises :class:`~melody.errors.RequestError` when the hub refuses
        (``"forbidden"``, a topic limit), TimeoutError, ValueError for a topic this connection
        is subscribed to already.
        """
        if topic in self._subscriptions:
            raise ValueError(f"already subscribed to {topic!r}")
        sub = Subscription(topic, recover=recover, offset=offset, epoch=epoch,
                           max_queue=max_queue)
        self._own_subscriptions.add(topic)
        try:
            await self.attach(sub, timeout)
        except BaseException:
            self._own_subscriptions.discard(topic)
            raise
        return sub

    async def attach(self, sub: Subscription, timeout: float | None = 10.0) -> None:
        """Subscribe ``sub`` (made by this connection's or a ``ReconnectingClient``'s
        ``subscribe``) on this connection, from its position."""
        self._subscriptions[sub.topic] = sub
        sub.repair = lambda: self._repair(sub)
        try:
            await self._send_request("subscribe", sub.position(), timeout, sub.subscribed)
        except BaseException:
            if self._subscriptions.get(sub.topic) is sub:
                del self._subscriptions[sub.topic]
            raise

    def _repair(self, sub: Subscription) -> None:
        # A gap in a subscription's offsets: resubscribe from its position (the hub answers
        # with what is missing; the subscription holds what arrives meanwhile).
        async def resubscribe() -> None:
            try:
                await self._send_request("subscribe", sub.position(), self._options.open_timeout,
                                         sub.subscribed)
            except Exception as exc:
                logger.warning("%s: recovering %r after a gap failed: %r", self.url, sub.topic,
                               exc)
                sub.subscribed({"recovered": False, "epoch": sub.epoch})

        if self.open:
            task = self._loop.create_task(resubscribe())
            _REPAIRS.add(task)
            task.add_done_callback(_REPAIRS.discard)

    async def unsubscribe(self, topic: str, *, timeout: float | None = 10.0) -> bool:
        """Stop receiving ``topic``: its subscription's iteration ends once drained. Returns
        what the hub answered (whether anything changed)."""
        sub = self._subscriptions.pop(topic, None)
        self._own_subscriptions.discard(topic)
        if sub is not None:
            sub.close(StopAsyncIteration())
        return bool(await self.request("unsubscribe", topic, timeout=timeout))

    def _take_publication(self, text: str) -> bool:
        """Hand a publication to its topic's subscription; False when no subscription of
        this connection takes it (it then goes to recv())."""
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(message, dict):
            return False
        topic = message.get("topic")
        sub = self._subscriptions.get(topic) if isinstance(topic, str) else None
        if sub is None:
            return False
        offset = message.get("offset")
        sub.feed(Publication(sub.topic, message.get("data"),
                             offset if type(offset) is int else None))
        return True

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
            hook = self._reply_hooks.pop(msg_id, None)
            if hook is not None:
                try:
                    hook(reply.get("data"))
                except Exception as exc:
                    future.set_exception(exc)
                    return True
            future.set_result(reply.get("data"))
        else:
            future.set_exception(RequestError(str(reply.get("error"))))
        return True

    def route(self, type: str) -> Callable[[_F], _F]:
        """Decorator: ``fn(data)`` answers the hub's ``session.call(type, data)``.

        Its return value (awaited for ``async def``) is the reply's data; raising
        :class:`~melody.errors.RequestError` answers ``ok: false`` with its text, any other
        exception ``"internal error"`` (and is logged). Each request runs in its own task, so
        a slow handler holds up neither ``recv`` nor other requests. Requests whose type has
        no route are left in the stream for :meth:`recv`. Wire format: docs/protocol.md,
        "Server-to-client requests".
        """
        def register(fn: _F) -> _F:
            if self._routes is None:
                self._routes = {}
            self._routes[type] = fn
            return fn

        return register

    def _take_server_request(self, text: str) -> bool:
        routes = self._routes
        assert routes is not None
        found = server_request(text, routes)
        if found is None:
            return False
        fn, msg_id, data = found
        task = self._loop.create_task(answer(self, fn, msg_id, data))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)
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
        if not is_valid_close_code(code):
            raise ValueError(f"close code {code} may not be sent (RFC 6455 7.4)")
        if len(reason.encode("utf-8")) > 123:
            raise ValueError("a close reason holds at most 123 UTF-8 bytes")
        conn = self._conn
        if not self._lost and conn.state == STATE_OPEN:
            conn.send_close(code, reason)
            self._local_close = True
            self.link.mark_down()
            self._write(conn.data_to_send())
            # Nothing more is delivered, so the core holds nothing back for want of room: read
            # on, whatever the queue, to find the reply.
            self._events(conn.receive_data(b""))
            self._update_reading()
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
        self.link.mark_down()
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
        self.link.mark_down()
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
        self.link.mark_down()
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

    # -- opening ----------------------------------------------------------------------------

    async def _open(self, host: str, port: int, ssl: _ssl.SSLContext | None) -> None:
        # ClientLink.open: connect, handshake within open_timeout (abort on any failure), then
        # the keepalive.
        options = self._options
        loop = self._loop

        async def opening() -> None:
            transport, _ = await loop.create_connection(
                lambda: self._protocol, host, port, ssl=ssl,
                server_hostname=host if ssl is not None else None)
            transport.write(self._request)
            await self._opened

        try:
            if options.open_timeout is None:
                await opening()
            else:
                await asyncio.wait_for(opening(), options.open_timeout)
        except TimeoutError:
            self._abort()
            raise TimeoutError(f"opening handshake with {self.url} not done within "
                               f"{options.open_timeout} s") from None
        except BaseException:
            self._abort()
            raise
        if options.ping_interval is not None:
            self._keepalive_task = loop.create_task(self._keepalive(
                options.ping_interval, options.ping_timeout or options.ping_interval))
        if self._refresh_token is not None:
            self._refresh_task = loop.create_task(keep_fresh(self, self._refresh_token))

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
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            self._refresh_task = None
        for task in self._answering:
            task.cancel()
        self.link.mark_down()
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
        self._reply_hooks.clear()
        for topic in self._own_subscriptions:
            sub = self._subscriptions.get(topic)
            if sub is not None:
                sub.close(self._closed_error())
        self._own_subscriptions.clear()
        self._subscriptions.clear()
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
            self._conn.message_budget = self._room()
            self._events(self._conn.receive_data(rest))
            self._parse_held()

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


async def _open_connection(url: str, options: _Options, *, routes: Routes | None = None,
                           refresh_token: RefreshToken | None = None) -> ClientConnection:
    """TCP (and TLS) connect, opening handshake, keepalive: a ready ClientConnection (that
    answers ``routes`` and keeps its token fresh with ``refresh_token``)."""
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
    client = ClientConnection(asyncio.get_running_loop(), url, options, key, offer, request,
                              routes=routes, refresh_token=refresh_token)
    await client.link.open(target.host, target.port, context)
    return client
