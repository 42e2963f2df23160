"""One WebSocket connection as the application sees it (Go melody's ``Session``)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from melody._core.constants import SEND_CLOSED, SEND_DROPPED, STATE_OPEN
from melody._hubstate import SessionLink, state_of
from melody.errors import (
    CLOSE_NORMAL,
    KeyNotFound,
    MessageBufferFull,
    SessionClosed,
    check_close_code,
)

if TYPE_CHECKING:
    from melody._core.protocol import WebSocketProtocol
    from melody._hubstate import HubState
    from melody.handshake import Request
    from melody.hub import Melody

__all__ = ["Session"]

_Address = Any  # (host, port) for TCP, (host, port, flow, scope) for IPv6, or None


class Session(SessionLink):
    """A connected client: write to it, close it, keep per-connection data in its keys.

    Sessions are made by the hub when an upgrade is accepted; applications receive them in their
    handlers and never construct one. Writing never blocks: a message goes to the socket at once
    or waits in a queue bounded by ``Config.message_buffer_size`` (then it is dropped and
    ``MessageBufferFull`` is reported to ``handle_error``).
    """

    # The hub's bookkeeping for the session (its connection ``proto``, the handler calls waiting
    # their turn, its topics) is the base class's slots, in this same object: one allocation per
    # connection, not two (measured: 56 bytes per idle connection).
    __slots__ = (
        "__weakref__",
        "_id",
        "_keys",
        "_state",
        "local_addr",
        "remote_addr",
        "request",
        "subprotocol",
    )

    request: Request
    subprotocol: str | None
    remote_addr: _Address
    local_addr: _Address

    def __init__(
        self,
        hub: Melody,
        proto: WebSocketProtocol,
        request: Request,
        keys: dict[str, Any] | None = None,
        subprotocol: str | None = None,
        user: str | None = None,
    ) -> None:
        SessionLink.__init__(self, proto)
        self._state: HubState = state_of(hub)
        # Made on first read of ``id``: a connection whose id is never asked for (no log
        # record, no presence) holds this 8-byte slot, not a ~65-byte string.
        self._id: str | None = None
        # Set before the session is registered; the hub indexes it when it registers.
        user = _check_user(user)
        if user is not None:
            self.extra().user = user
        #: The upgrade request: ``path``, ``query``, ``query_params``, ``headers``.
        self.request = request
        #: The subprotocol agreed in the handshake, or None.
        self.subprotocol = subprotocol
        transport = proto.transport
        #: The peer's address as the socket reports it (``(host, port)`` for TCP).
        self.remote_addr = transport.get_extra_info("peername") if transport else None
        #: This end's address.
        self.local_addr = transport.get_extra_info("sockname") if transport else None
        self._keys: dict[str, Any] | None = dict(keys) if keys else None

    # -- identity --------------------------------------------------------------------------------

    @property
    def id(self) -> str:
        """A unique, stable string naming this session (16 URL-safe characters, 96 random
        bits): the ``session_id`` of log records, safe to show to clients and to use across
        nodes. Made on first read (one ``secrets.token_urlsafe`` call), then kept."""
        session_id = self._id
        if session_id is None:
            session_id = self._id = secrets.token_urlsafe(12)
        return session_id

    @property
    def user(self) -> str | None:
        """The user this session belongs to, or None: what ``hub.send_to_user`` and
        ``hub.disconnect_user`` look for.

        Set by a handshake middleware (``handshake.user = ...``; ``JWTAuth`` sets the token's
        ``sub``) or by the application at any time (``session.user = "alice"`` in
        ``handle_connect`` or in a login route). A user may have many sessions (tabs,
        devices, nodes). Raises TypeError for a value that is not a str or None.
        """
        extras = self.extras
        return extras.user if extras is not None else None

    @user.setter
    def user(self, value: str | None) -> None:
        value = _check_user(value)
        old = self.user
        if value is not None or self.extras is not None:
            self.extra().user = value
        if old != value:
            self._state.user_changed(self, old, value)

    # -- server-to-client requests ---------------------------------------------------------------

    async def call(self, type: str, data: Any = None, *, timeout: float | None = 10.0) -> Any:
        """Ask the client: send ``{"type": type, "id": "s<n>", "data": data}`` and return the
        ``data`` of its reply ``{"id": "s<n>", "ok": true, "data": ...}``.

        The mirror of a client's request to a route (docs/protocol.md, "Server-to-client
        requests"): melody's client answers with ``@conn.route(type)``. The hub takes the
        reply out of the message stream before any handler or route, so an async handler
        of this same session may await it. Needs a codec with the JSON envelope
        (``Melody(codec=melody.codecs.JSON)``, or a msgpack one); RuntimeError otherwise.

        Raises :class:`~melody.errors.RequestError` with the client's text for an
        ``"ok": false`` reply, :class:`~melody.errors.AckTimeout` when no reply came within
        ``timeout`` seconds (None: wait until the session ends), ``SessionClosed`` when the
        session is closed or ends first (pending calls are failed at disconnect, never
        kept), :class:`~melody.errors.TooManyCalls` when ``Config.max_pending_calls`` calls
        already wait, TypeError when ``data`` cannot be encoded. A reply arriving after the
        timeout is dropped and counted in ``hub.stats()["late_replies"]``.
        """
        return await self._state.call_client(self, type, data, timeout)

    # -- writing ---------------------------------------------------------------------------------

    def write(self, msg: str) -> None:
        """Send a text message.

        Raises ``SessionClosed`` if the session is closed or closing. If the peer is not reading
        and the queue is full the message is dropped and ``MessageBufferFull`` goes to
        ``handle_error`` (Go semantics: the write itself does not fail).
        """
        status = self.proto.send_text(msg)
        if status >= SEND_DROPPED:
            self._failed_write(status)
            if status == SEND_DROPPED:
                return
        if self._state.on_sent_text is not None:
            self._state.sent(self, msg, False)

    def write_json(self, obj: Any) -> None:
        """Send ``obj`` as JSON text: the hub's text codec, else ``melody.codecs.JSON`` (orjson).

        Raises TypeError when ``obj`` cannot be encoded; otherwise as :meth:`write`.
        """
        self.write(self._state.json_text(obj))

    def write_binary(self, msg: bytes | bytearray | memoryview) -> None:
        """Send a binary message; errors as for :meth:`write`."""
        status = self.proto.send_binary(msg)
        if status >= SEND_DROPPED:
            self._failed_write(status)
            if status == SEND_DROPPED:
                return
        if self._state.on_sent_binary is not None:
            self._state.sent(self, bytes(msg), True)

    def _failed_write(self, status: int) -> None:
        if status == SEND_CLOSED:
            raise SessionClosed("session is closed")
        if status == SEND_DROPPED:
            self._state.report(self, MessageBufferFull("message buffer full: message dropped"))
        else:  # SEND_DROPPED_OLDEST: this message was queued, the oldest queued one dropped
            self._state.report(self, MessageBufferFull(
                "message buffer full: oldest queued message dropped"))

    def ping(self, payload: bytes = b"") -> None:
        """Send a ping now (the hub also pings every ``ping_period``). Raises ``SessionClosed``."""
        if self.proto.send_ping(payload) == SEND_CLOSED:
            raise SessionClosed("session is closed")

    def close(self) -> None:
        """Close with 1000 (normal closure). Raises ``SessionClosed`` if already closed."""
        self.close_with_msg(CLOSE_NORMAL, "")

    def close_with_msg(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Start the closing handshake with ``code`` and ``reason``.

        A close frame holds at most 123 bytes of reason: a longer one is cut at a code point
        boundary (so the peer still gets valid UTF-8), not refused, since reasons often carry
        error text of unknown length.

        The session stays in ``sessions()`` until the peer answers (or ``close_timeout``
        passes); ``handle_disconnect`` runs then. Raises ``SessionClosed`` if already closed,
        ``ValueError`` for a code that may not be sent (RFC 6455 7.4).
        """
        check_close_code(code)
        if self.is_closed:
            raise SessionClosed("session is closed")
        self.proto.close(code, reason)

    def abort(self) -> None:
        """Drop the connection at once, without a closing handshake."""
        self.proto.abort()

    @property
    def connected_at(self) -> float:
        """When the session opened (Unix seconds, the server's clock)."""
        return float(self.proto.opened_at)

    @property
    def is_closed(self) -> bool:
        """True once the session is closing or closed: writes then raise ``SessionClosed``."""
        return self.proto.state != STATE_OPEN

    @property
    def close_code(self) -> int:
        """The close code of the connection once it is closed (1006 if TCP dropped), else 0."""
        return int(self.proto.close_code)

    @property
    def close_reason(self) -> str:
        """The close reason once the session is closed."""
        return str(self.proto.close_reason)

    @property
    def queued(self) -> int:
        """Messages waiting because the peer is not reading (0 for a healthy peer)."""
        return int(self.proto.queued)

    @property
    def queued_bytes(self) -> int:
        """Bytes of the messages in :attr:`queued`."""
        return int(self.proto.queued_bytes)

    def has_id(self, session_id: str) -> bool:
        """Whether ``session_id`` is this session's :attr:`id`, without making one: a session
        whose id was never read cannot have been named by anyone (what the HTTP API's
        ``disconnect`` looks sessions up with)."""
        return self._id is not None and self._id == session_id

    @property
    def dropped(self) -> int:
        """Messages dropped for this session because its queue was full."""
        return int(self.proto.dropped)

    # -- keys (Go: Set, Get, MustGet, UnSet; plus mapping access) --------------------------------

    @property
    def topics(self) -> frozenset[str]:
        """The topics this session is subscribed to (``hub.subscribe``)."""
        return frozenset(self.subscribed or ())

    @property
    def keys(self) -> dict[str, Any]:
        """The session's key-value store (created on first use)."""
        if self._keys is None:
            self._keys = {}
        return self._keys

    def set(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key``."""
        self.keys[key] = value

    def get(self, key: str, default: Any = None) -> Any:
        """The value under ``key``, or ``default``."""
        return self._keys.get(key, default) if self._keys else default

    def must_get(self, key: str) -> Any:
        """The value under ``key``; raises ``KeyNotFound`` (a ``KeyError``) if absent."""
        if self._keys is None or key not in self._keys:
            raise KeyNotFound(key)
        return self._keys[key]

    def unset(self, key: str) -> None:
        """Remove ``key`` if present."""
        if self._keys:
            self._keys.pop(key, None)

    def __getitem__(self, key: str) -> Any:
        return self.must_get(key)

    def __setitem__(self, key: str, value: Any) -> None:
        self.keys[key] = value

    def __delitem__(self, key: str) -> None:
        if self._keys is None or key not in self._keys:
            raise KeyNotFound(key)
        del self._keys[key]

    def __contains__(self, key: object) -> bool:
        return bool(self._keys) and key in self._keys  # type: ignore[operator]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys or ())

    def __repr__(self) -> str:
        state = "closed" if self.is_closed else "open"
        return f"<Session {self.id} {self.remote_addr} {self.request.path!r} {state}>"


def _check_user(user: Any) -> str | None:
    if user is not None and not isinstance(user, str):
        raise TypeError(f"session.user is a str or None, not {type(user).__name__}")
    return user
