"""The server connection over an asyncio (or uvloop) transport.

:class:`ProtocolCore` is the sans-I/O :class:`~melody._core.connection.Connection` plus a
transport: it reads the HTTP upgrade request, hands it to the hub (``Dispatch.on_request``) and,
after :meth:`ProtocolCore.accept`, parses frames and calls the hub's handlers directly.
:class:`WebSocketProtocol` is what a server's protocol factory returns.
"""

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from typing_extensions import disjoint_base

from melody._core.connection import Connection
from melody._core.deflate import Deflater, Inflater

_P = TypeVar("_P", bound=ProtocolCore)

@disjoint_base
class Dispatch:
    """What a server's connections call into: the hub's handlers and limits, shared by all.

    The handlers receive the ``session`` given to :meth:`ProtocolCore.accept` (None before it),
    except ``on_request`` and ``on_disconnect``, which receive the protocol. ``on_pong``,
    ``on_close``, ``on_protocol_error`` and ``on_timeout`` may be None (not called); the others
    are always called and must be set before the first connection arrives (a missing
    ``on_text``/``on_binary`` is reported to ``on_handler_error`` as a TypeError).
    """

    loop: asyncio.AbstractEventLoop | None
    """The event loop the timers run on; set before the first connection arrives."""
    on_request: Callable[[Any, bytes], object] | None
    """``fn(protocol, head)``: the HTTP request head arrived; call accept or reject."""
    on_text: Callable[[Any, str], object] | None
    """``fn(session, text)``: a text message arrived."""
    on_binary: Callable[[Any, bytes], object] | None
    """``fn(session, data)``: a binary message arrived."""
    on_pong: Callable[[Any], object] | None
    """``fn(session)``: a pong arrived."""
    on_close: Callable[[Any, int, str], object] | None
    """``fn(session, code, reason)``: the peer sent a close frame (our reply is written)."""
    on_protocol_error: Callable[[Any, int, str], object] | None
    """``fn(session, code, reason)``: the peer broke the protocol; the connection failed."""
    on_disconnect: Callable[[Any], object] | None
    """``fn(protocol)``: an accepted connection's TCP connection ended."""
    on_timeout: Callable[[Any, str], object] | None
    """``fn(session, kind)``: the peer read nothing for ``write_wait`` (``kind="write"``)."""
    on_handler_error: Callable[[Any, Exception], object] | None
    """``fn(session, exc)``: a handler raised ``exc``; it is reported, never re-raised."""
    write_wait: float
    """Seconds a peer may leave our writes unread before it is aborted (default 10)."""
    close_timeout: float
    """Seconds to wait for the peer's close reply before dropping TCP (default 5)."""
    handshake_timeout: float
    """Seconds from TCP accept to a decided upgrade before the socket is aborted (default 10)."""
    max_header_size: int
    """Largest HTTP request head in bytes; larger gets a 431 (default 16384)."""
    max_message_size: int
    """Largest message payload in bytes; larger fails with 1009 (default 1 MiB)."""
    queue_limit: int
    """Data frames queued for a peer that is not reading before more are dropped (default 256)."""
    write_buffer_high: int
    """The transport's high-water mark in bytes, above which frames queue (default 65536)."""
    read_buffer_size: int
    """The smallest private read buffer of a connection (default 16384)."""
    queue_bytes_limit: int
    """Bytes queued for a peer that is not reading before messages overflow (default 16 MiB)."""
    overflow_policy: int
    """0: drop the newest message, 1: drop the oldest queued one, 2: close the session (1008)."""
    direct_writes: bool
    """Write a connection's first frame of a loop iteration at once, the rest together at the
    end of the iteration (default True: a lone reply leaves without waiting, a burst costs at
    most two writes). False: every frame waits for the end of the iteration (one write)."""
    messages_in: int
    bytes_in: int
    messages_out: int
    bytes_out: int
    frames_dropped: int
    broadcasts: int
    connects: int
    disconnects: int
    writes: int
    messages_rate_limited: int
    requests_too_large: int
    handshake_timeouts: int
    """Counters kept by the compiled core (``writes``: transport write calls made)."""
    rate_limited: bool
    """Whether the per-session inbound rate limit is on."""
    rate_messages: float
    burst_messages: float
    rate_bytes: float
    burst_bytes: float
    """Token-bucket refill rates (per second) and sizes, for messages and bytes."""
    rate_close: bool
    """Close the session with 1008 when over the limit (else drop the message)."""
    on_rate_limit: Callable[[Any, int], object] | None
    """Called with (session, message size) for each message over the limit."""

    def __init__(self) -> None: ...
    def flush(self) -> None:
        """Write what every connection gathered during this loop iteration, one write each."""
    def stats(self) -> dict[str, int]:
        """The counters as a dict."""

@disjoint_base
class ProtocolCore(Connection):
    """One server connection. Created by the server's protocol factory, one per socket."""

    transport: asyncio.Transport | None
    """The socket's transport; None before ``connection_made`` and after ``connection_lost``."""
    dispatch: Dispatch
    """The handlers and limits this connection uses."""
    session: Any
    """What :meth:`accept` was given (the public ``Session``), passed to the handlers."""
    reads: int
    """Reads so far (each ``buffer_updated``): the heartbeat's sign of life."""
    reads_seen: int
    """``reads`` when the heartbeat last looked."""
    last_active: float
    """Loop time of the last sign of life the heartbeat saw."""
    last_ping: float
    """Loop time of the last heartbeat ping."""
    dropped: int
    """Data frames dropped because the queue was full."""

    def __init__(self, dispatch: Dispatch) -> None: ...
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start reading the upgrade request; the handshake timer starts now."""
    def connection_lost(self, exc: BaseException | None) -> None:
        """The socket closed: cancel the timers, report the disconnect (close_code 1006 if
        none was exchanged)."""
    def eof_received(self) -> bool:
        """The peer half-closed: returns False so that the transport closes our side too."""
    def pause_writing(self) -> None:
        """The transport is over its high-water mark: queue frames, start the write timer."""
    def resume_writing(self) -> None:
        """The transport drained: write the queued frames (and close if a close was pending)."""
    def _handshake_timeout(self) -> None:
        """Timer callback: abort a connection whose upgrade was not decided in time."""
    def _write_timeout(self) -> None:
        """Timer callback: abort a peer that read nothing for ``write_wait``."""
    def _close_timeout(self) -> None:
        """Timer callback: abort a peer that did not answer our close in ``close_timeout``."""
    def accept(
        self,
        response: bytes,
        session: Any,
        inflater: Inflater | None = None,
        deflater: Deflater | None = None,
        compress_min_size: int = 0,
    ) -> bool:
        """Finish the upgrade: write the 101 ``response``, attach ``session``, open.

        ``inflater``/``deflater`` turn on permessage-deflate. Returns False (and does nothing)
        unless the upgrade is being decided and the transport is still there.
        """
    def start(self) -> None:
        """Begin delivering frames once the hub registered the session (resumes reading and
        parses what arrived meanwhile; a no-op inside the read callback)."""
    def reject(self, response: bytes) -> None:
        """Refuse the upgrade: write ``response`` (an HTTP error) and close the connection."""
    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; drop TCP if the peer does not answer in
        ``close_timeout``. Before the upgrade, closes the socket at once."""
    def abort(self) -> None:
        """Drop the TCP connection at once, without a close handshake."""
    @property
    def queued(self) -> int:
        """Frames waiting for the peer to read (beyond the transport's own buffer)."""
    @property
    def queued_bytes(self) -> int:
        """Bytes of the frames in :attr:`queued`."""
    @property
    def writing_paused(self) -> bool:
        """True while the transport is over its high-water mark."""

class WebSocketProtocol(ProtocolCore, asyncio.BufferedProtocol):
    """``ProtocolCore`` seen by asyncio and uvloop as a BufferedProtocol (no ``__dict__``)."""

    __slots__ = ()

def heartbeat(protocols: list[_P], now: float, ping_period: float, pong_wait: float) -> list[_P]:
    """Ping the open connections due for it; return those silent for longer than ``pong_wait``.

    Any read counts as a sign of life. A connection is due a ping ``ping_period`` seconds after
    the last; ``now`` is the loop's time. The dead ones are not pinged, only returned.
    Raises TypeError if ``protocols`` is not a list or holds anything but ProtocolCore objects.
    """
