"""Hub configuration: one dataclass, validated when it is made.

Field names and meanings follow Go melody's ``Config`` (``WriteWait``, ``PongWait``, ``PingPeriod``,
``MaxMessageSize``, ``MessageBufferSize``, ``ConcurrentMessageHandling``); durations are seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from melody.limits import (
    MAX_BUFFER_BYTES,
    MAX_COUNT,
    MAX_MESSAGE_SIZE,
    check_int,
    check_rate,
    check_seconds,
)

__all__ = ["Config", "Compression", "RateLimit", "OVERFLOW_POLICIES"]

#: The values of ``Config.overflow_policy``, in the order the compiled core numbers them.
OVERFLOW_POLICIES = ("drop_newest", "drop_oldest", "close")


@dataclass(frozen=True)
class Compression:
    """permessage-deflate (RFC 7692) settings, used when ``Config.compression`` enables it.

    ``server_no_context_takeover`` defaults to True: the server then compresses every message on
    its own, so a broadcast compresses a message *once* and writes the same frame to every
    recipient (with context takeover each connection's compressor has its own history and a
    broadcast would cost one compression per recipient). Set it to False to trade CPU for ratio.

    Memory: a session holds no zlib state until its first compressed message (an idle session
    costs +0.7 KiB over no compression, measured by ``bench/deflate_memory.py``). With
    ``server_no_context_takeover`` (the default) the server's compressor is lent per message
    from a small per-process pool, so none is held between messages. A direction with context
    takeover keeps its state once used: the inflater (``client_no_context_takeover=False``, the
    default) about 7 KiB plus ``2**client_max_window_bits`` bytes (39 KiB at 15); the deflater
    (``server_no_context_takeover=False``) ``2**(server_max_window_bits + 2) + 2**17`` bytes
    (256 KiB at 15). Lower the window bits or set the ``*_no_context_takeover`` flags to bound it.
    """

    server_no_context_takeover: bool = True
    client_no_context_takeover: bool = False
    server_max_window_bits: int = 15
    client_max_window_bits: int = 15
    level: int = 6
    #: Messages shorter than this are sent uncompressed (deflate's framing costs more than it
    #: saves on them).
    min_size: int = 64

    def __post_init__(self) -> None:
        # zlib cannot deflate with 8 window bits, hence 9 on the side the server compresses.
        check_int("server_max_window_bits", self.server_max_window_bits, 9, 15)
        check_int("client_max_window_bits", self.client_max_window_bits, 8, 15)
        check_int("level", self.level, 0, 9)
        check_int("min_size", self.min_size, 0, MAX_MESSAGE_SIZE)
        for name in ("server_no_context_takeover", "client_no_context_takeover"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False")


@dataclass(frozen=True)
class RateLimit:
    """Per-session inbound rate limit: token buckets for messages and for bytes.

    A session may send ``burst_messages`` messages (``burst_bytes`` bytes) at once, refilled at
    ``messages_per_second`` (``bytes_per_second``). A message over the limit is dropped
    (``policy="drop"``: not delivered, reported to ``handle_error`` as ``RateLimited``) or
    closes the session with 1008 (``policy="close"``). Counted in ``hub.stats()`` as
    ``messages_rate_limited``. The check is a few C operations per message.
    """

    messages_per_second: float = 100.0
    burst_messages: float = 200.0
    #: Bytes refilled per second; None for no byte limit.
    bytes_per_second: float | None = None
    #: Bytes allowed at once; defaults to twice ``bytes_per_second``. A message larger than
    #: this can never pass: keep it at least ``Config.max_message_size``.
    burst_bytes: float | None = None
    policy: str = "drop"

    def __post_init__(self) -> None:
        check_rate("messages_per_second", self.messages_per_second, high=float(MAX_COUNT))
        check_rate("burst_messages", self.burst_messages, low=1.0, high=float(MAX_COUNT),
                   allow_low=True)
        if self.bytes_per_second is not None:
            check_rate("bytes_per_second", self.bytes_per_second, high=float(MAX_BUFFER_BYTES))
        if self.burst_bytes is not None:
            check_rate("burst_bytes", self.burst_bytes, low=1.0, high=float(MAX_BUFFER_BYTES),
                       allow_low=True)
        if self.policy not in ("drop", "close"):
            raise ValueError(f"policy must be 'drop' or 'close', got {self.policy!r}")


@dataclass(frozen=True)
class Config:
    """How a :class:`melody.Melody` hub treats its sessions. Every field has a working default.

    Raises ``ValueError`` at construction when a value is out of range or the timing fields
    contradict each other (``ping_period`` must be shorter than ``pong_wait``).
    """

    #: Seconds a write may stay blocked on a peer that reads nothing before the session is closed
    #: as a slow reader (Go: ``WriteWait``, 10 s).
    write_wait: float = 10.0
    #: Seconds without anything from the peer (a pong or any other frame) before the session is
    #: closed as dead (Go: ``PongWait``, 60 s; Go only counts pongs, melody counts any traffic).
    pong_wait: float = 60.0
    #: Seconds between server pings; must be less than ``pong_wait`` (Go: ``PingPeriod``, 54 s).
    ping_period: float = 54.0
    #: Largest message accepted, in bytes, after reassembly and decompression; a larger one closes
    #: the session with 1009. Go's default is 512 B, which real chat and JSON payloads trip over
    #: constantly (its most reported surprise); 1 MiB matches the websockets library and still
    #: bounds memory per connection.
    max_message_size: int = 1 << 20
    #: Outbound messages queued per session while the peer is not reading; one more is dropped and
    #: reported as ``MessageBufferFull`` (Go: ``MessageBufferSize``, 256).
    message_buffer_size: int = 256
    #: Bytes that may wait in one session's queue; past this a message overflows as above.
    message_buffer_bytes: int = 16 << 20
    #: What an overflowing queue does: ``"drop_newest"`` (Go melody: the new message is
    #: dropped), ``"drop_oldest"`` (the oldest queued message makes room; sessions compressing
    #: with context takeover drop the newest instead, as dropping a sent-order frame would
    #: corrupt their stream) or ``"close"`` (the session is closed with 1008, as the gorilla
    #: chat hub does with slow consumers). Every drop is counted and reported to
    #: ``handle_error`` as ``MessageBufferFull``.
    overflow_policy: str = "drop_newest"
    #: Run async message handlers of one session concurrently instead of one after the other.
    concurrent_message_handling: bool = False
    #: With ``concurrent_message_handling``, how many handler tasks one session may have running
    #: at once; at the bound the session's socket stops being read (TCP pushes back on the
    #: peer) until half of them finished, exactly as the sequential mode pauses on
    #: ``message_buffer_size`` pending messages. Nothing is dropped.
    max_concurrent_handlers: int = 64
    #: Topics one session may be subscribed to at once; one more is refused
    #: (``hub.subscribe`` raises ``TopicLimitExceeded``, a route's subscribe answers with an
    #: error) and counted in ``stats()["subscriptions_refused"]``. A chat app never meets it;
    #: a client subscribing in a loop does.
    max_topics_per_session: int = 1000
    #: Longest topic name, in UTF-8 bytes; a longer one is refused as above. A topic name is
    #: held by the hub and, with a backplane, sent to the broker.
    max_topic_length: int = 256
    #: ``session.call`` requests one session may have waiting for the client's reply; one
    #: more raises ``TooManyCalls`` without sending anything. Each pending call holds a
    #: future and a dict entry until its reply, its timeout or the session's end.
    max_pending_calls: int = 64
    #: Per-session inbound rate limit (:class:`RateLimit`); None for none.
    rate_limit: RateLimit | None = None
    #: permessage-deflate: False (off), True (the :class:`Compression` defaults) or a
    #: :class:`Compression`.
    compression: bool | Compression = False
    #: Largest HTTP upgrade request head (request line plus headers) accepted, in bytes; a larger
    #: one gets 431 and is closed.
    max_header_size: int = 16 * 1024
    #: Seconds a client has to send its complete upgrade request; then it is disconnected. The
    #: same bound applies to the server's decision once the request is read (the ``hub.use``
    #: middleware chain, an async ``handle_upgrade`` or ``handle_http``): at the deadline the
    #: decision is cancelled, its cleanups run (a ``ConnectionLimit`` slot comes back) and the
    #: client gets 504, counted as ``upgrade_deadline_exceeded``.
    handshake_timeout: float = 10.0
    #: Seconds to wait for the peer's close frame after sending ours before dropping TCP.
    close_timeout: float = 5.0
    #: Subprotocols the server speaks, in its order of preference.
    subprotocols: Sequence[str] = ()
    #: Origins allowed to connect. ``None`` (the default, as in Go melody) allows any origin;
    #: browsers send cookies cross-site, so a hub that authenticates by cookie should list its
    #: origins (entries like ``"https://app.example.com"``, ``"https://*.example.com"``, ``"*"``,
    #: or ``"same-origin"``). Refused upgrades get 403.
    allowed_origins: Sequence[str] | None = None
    #: Request paths on which an upgrade is accepted; ``None`` accepts any path (the session's
    #: ``request.path`` tells which). Others get 404.
    paths: Sequence[str] | None = None
    #: Transport write-buffer size (bytes) above which a session counts as not reading and its
    #: messages go to the bounded queue instead of the socket.
    write_buffer_high: int = 64 * 1024
    #: Size of each connection's first read buffer; it grows for larger frames and shrinks back.
    read_buffer_size: int = 16 * 1024
    #: Write a session's first frame of an event-loop iteration to the socket at once (a lone
    #: reply or a lone broadcast leaves without waiting for the iteration to end); the frames
    #: that follow in the same iteration leave together in one write at its end, and while
    #: broadcasts come in bursts (several in one iteration) every broadcast frame waits for
    #: that one write. False defers every frame to that one write: one system call per session
    #: per iteration instead of up to two.
    direct_writes: bool = True
    _compression: Compression | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        # Every bound is checked here, upper ones too (see melody.limits): no value reaches the
        # compiled core that its arithmetic cannot hold.
        timings = ("write_wait", "pong_wait", "ping_period", "handshake_timeout", "close_timeout")
        for name in timings:
            check_seconds(name, getattr(self, name))
        if self.ping_period >= self.pong_wait:
            raise ValueError(
                f"ping_period ({self.ping_period}) must be less than pong_wait ({self.pong_wait}):"
                " otherwise a healthy peer is dropped before it is pinged"
            )
        check_int("max_message_size", self.max_message_size, 1, MAX_MESSAGE_SIZE)
        check_int("message_buffer_size", self.message_buffer_size, 1, MAX_COUNT)
        check_int("message_buffer_bytes", self.message_buffer_bytes, 1, MAX_BUFFER_BYTES)
        check_int("max_concurrent_handlers", self.max_concurrent_handlers, 1, MAX_COUNT)
        check_int("max_topics_per_session", self.max_topics_per_session, 1, MAX_COUNT)
        check_int("max_topic_length", self.max_topic_length, 1, MAX_MESSAGE_SIZE)
        check_int("max_pending_calls", self.max_pending_calls, 1, MAX_COUNT)
        if self.overflow_policy not in OVERFLOW_POLICIES:
            raise ValueError(
                f"overflow_policy must be one of {', '.join(OVERFLOW_POLICIES)},"
                f" got {self.overflow_policy!r}")
        check_int("max_header_size", self.max_header_size, 256, MAX_MESSAGE_SIZE)
        check_int("write_buffer_high", self.write_buffer_high, 1024, MAX_BUFFER_BYTES)
        check_int("read_buffer_size", self.read_buffer_size, 1024, MAX_MESSAGE_SIZE)
        for name in ("concurrent_message_handling", "direct_writes"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False")
        if isinstance(self.subprotocols, str):
            raise ValueError("subprotocols must be a sequence of names, not one string")
        if isinstance(self.allowed_origins, str):
            raise ValueError("allowed_origins must be a sequence of origins, not one string")
        if self.compression is True:
            object.__setattr__(self, "_compression", Compression())
        elif isinstance(self.compression, Compression):
            object.__setattr__(self, "_compression", self.compression)
        elif self.compression is not False:
            raise ValueError("compression must be True, False or a melody.Compression")

    @property
    def compression_settings(self) -> Compression | None:
        """The permessage-deflate settings in force, or None when compression is off."""
        return self._compression
