"""Named errors and the RFC 6455 close codes.

Go melody exposes ``ErrClosed``, ``ErrSessionClosed``, ``ErrMessageBufferFull`` ... as sentinel
values; Python spells them as exception classes so that they can be raised *and* compared
(``isinstance(err, MessageBufferFull)``). Every error that concerns a connection carries the close
code the hub sent or would send for it.
"""

from __future__ import annotations

from melody._core.frames import is_valid_close_code

__all__ = [
    "CLOSE_NORMAL",
    "CLOSE_GOING_AWAY",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_UNSUPPORTED_DATA",
    "CLOSE_NO_STATUS",
    "CLOSE_ABNORMAL",
    "CLOSE_INVALID_PAYLOAD",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_MANDATORY_EXTENSION",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_SERVICE_RESTART",
    "CLOSE_TRY_AGAIN_LATER",
    "CLOSE_TLS_HANDSHAKE",
    "CLOSE_TOKEN_EXPIRED",
    "MelodyError",
    "HubClosed",
    "SessionClosed",
    "MessageBufferFull",
    "KeyNotFound",
    "ProtocolError",
    "InvalidPayload",
    "MessageTooBig",
    "PongTimeout",
    "WriteTimeout",
    "HandshakeError",
    "HandshakeTimeout",
    "RateLimited",
    "TopicLimitExceeded",
    "BackplaneError",
    "ConnectionClosed",
    "DecodeError",
    "InvalidJSON",
    "UnsupportedData",
    "InvalidPacket",
    "BadMagic",
    "UnsupportedVersion",
    "LengthMismatch",
    "RequestError",
    "AckTimeout",
    "TooManyCalls",
    "ConfigError",
]

# RFC 6455 section 7.4.1, and the IANA registry for 1012-1014.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_NO_STATUS = 1005  # never sent on the wire: "the close frame carried no code"
CLOSE_ABNORMAL = 1006  # never sent on the wire: "the TCP connection dropped without a close"
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_MANDATORY_EXTENSION = 1010
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_TLS_HANDSHAKE = 1015  # never sent on the wire

# melody's own codes, in the 4000-4999 range RFC 6455 7.4.2 leaves to applications.
#: ``melody.middleware.JWTAuth``: the session's token expired and no fresh one came in time
#: (a ``refresh`` message, see docs/protocol.md). A client should get a new token and
#: reconnect.
CLOSE_TOKEN_EXPIRED = 4001


class MelodyError(Exception):
    """Base class of every error melody raises or reports to ``handle_error``."""


class HubClosed(MelodyError):
    """The hub was closed (``Melody.close``); it accepts no sessions and sends nothing."""


class SessionClosed(MelodyError):
    """A write or close was attempted on a session that is already closed."""


class MessageBufferFull(MelodyError):
    """A session's outbound queue held ``Config.message_buffer_size`` messages: one was dropped.

    Reported to ``handle_error`` (Go melody's ``ErrMessageBufferFull``); the session stays open.
    """


class KeyNotFound(MelodyError, KeyError):
    """``Session.must_get`` was asked for a key the session does not hold."""


class ProtocolError(MelodyError):
    """The peer broke RFC 6455; the connection was closed with :attr:`code` (1002 by default)."""

    code: int = CLOSE_PROTOCOL_ERROR

    def __init__(self, reason: str = "", code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        if self.reason:
            return f"{self.reason} (close code {self.code})"
        return f"close code {self.code}"


class InvalidPayload(ProtocolError):
    """A text message or close reason was not valid UTF-8 (close code 1007)."""

    code = CLOSE_INVALID_PAYLOAD


class MessageTooBig(ProtocolError):
    """A message exceeded ``Config.max_message_size`` (close code 1009)."""

    code = CLOSE_MESSAGE_TOO_BIG


class PongTimeout(MelodyError):
    """Nothing (no pong, no message) came from the peer within ``Config.pong_wait``: it is dead."""


class WriteTimeout(MelodyError):
    """The peer read nothing for ``Config.write_wait`` while writes were pending: a slow reader."""


class RateLimited(MelodyError):
    """A session sent more than its ``Config.rate_limit`` allows; the message was dropped (or
    the session closed with 1008, by the policy)."""


class BackplaneError(MelodyError):
    """The backplane's broker is unreachable or answered wrongly.

    Reported to ``handle_error`` with session None (rate-limited by the backplane); raised by
    ``cluster_topic_len`` while the broker is down. Any backplane (Redis, NATS, ...) uses it.
    """


class HandshakeError(MelodyError):
    """An upgrade request was refused with an HTTP status (400, 403, 426, ...).

    ``headers`` are sent with the refusal (for example ``Sec-WebSocket-Version: 13`` with 426).
    """

    def __init__(
        self,
        status: int,
        reason: str,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers or []


class HandshakeTimeout(HandshakeError):
    """The server did not decide an upgrade (or an async ``handle_http``) within
    ``Config.handshake_timeout``: the middleware chain or hook was cancelled, its cleanups ran
    and the client got 504. Reported to ``handle_error`` with ``session=None``; counted in
    ``hub.stats()["upgrade_deadline_exceeded"]`` / ``["http_deadline_exceeded"]``."""

    def __init__(self, reason: str) -> None:
        super().__init__(504, reason)


class ConnectionClosed(MelodyError):
    """The connection ended; ``code`` and ``reason`` are what the close handshake carried."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"connection closed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


class DecodeError(MelodyError):
    """A message the hub's codec could not decode (``Melody(codec=...)``).

    Reported to ``handle_error``; then the session is closed with :attr:`code` (1007 by
    default) or, when the codec's ``on_invalid`` is ``"reply"``, answered with an error reply
    and kept open. Counted in ``hub.stats()["decode_errors"]``.
    """

    code: int = CLOSE_INVALID_PAYLOAD

    def __init__(self, reason: str = "", code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        if self.reason:
            return f"{self.reason} (close code {self.code})"
        return f"close code {self.code}"


class InvalidJSON(DecodeError):
    """A message was not valid JSON (close code 1007)."""


class UnsupportedData(DecodeError):
    """A text message reached a binary-only codec such as ``Packet`` (close code 1003)."""

    code = CLOSE_UNSUPPORTED_DATA


class InvalidPacket(DecodeError):
    """A binary message was not a valid ``melody.codecs.Packet`` (base class; 1007)."""


class BadMagic(InvalidPacket):
    """A packet's magic number was not the codec's: the sender speaks another protocol (1002)."""

    code = CLOSE_PROTOCOL_ERROR


class UnsupportedVersion(InvalidPacket):
    """A packet's version byte is not one this build reads (close code 1002)."""

    code = CLOSE_PROTOCOL_ERROR


class LengthMismatch(InvalidPacket):
    """A packet was shorter than its header, or its length field disagreed with the message
    length (close code 1007)."""


class RequestError(MelodyError):
    """Raise in a routed handler to answer the request with ``{"ok": false, "error": str}``.

    Its message goes to the client as is and it is not reported to ``handle_error``; any
    other exception is reported and the client gets ``"internal error"``.
    """


class TopicLimitExceeded(MelodyError, ValueError):
    """A subscription was refused: the session is at ``Config.max_topics_per_session`` topics,
    or the topic name is longer than ``Config.max_topic_length`` UTF-8 bytes. Raised by
    ``hub.subscribe`` (a ``ValueError``, so code that validates input catches it as such); the
    routing layer's ``subscribe`` answers the client with an error reply instead. Counted in
    ``hub.stats()["subscriptions_refused"]``."""


class AckTimeout(MelodyError):
    """A routed async handler ran past its timeout: it was cancelled and the client got the
    error reply ``"timeout"``. Counted in ``hub.stats()["ack_timeouts"]``.

    Also raised by ``session.call`` when the client did not answer within its timeout
    (counted in ``hub.stats()["call_timeouts"]``)."""


class TooManyCalls(MelodyError):
    """``session.call`` was refused: the session already waits for
    ``Config.max_pending_calls`` replies. Nothing was sent; the pending calls go on."""


class ConfigError(MelodyError, ValueError):
    """New settings were refused (``hub.reload``, ``hub.reconfigure``, ``melody serve
    --config``): an unknown key, a wrong type or value, a file that cannot be read or parsed.
    The message says which; nothing was changed."""


def check_close_code(code: int) -> None:
    """Raise ValueError unless ``code`` may be sent in a close frame (RFC 6455 7.4): the one
    check behind ``session.close_with_msg``, ``hub.disconnect_user`` and the publishers'."""
    try:
        valid = is_valid_close_code(code)
    except OverflowError:  # beyond a C int, which no valid code is
        valid = False
    if not valid:
        raise ValueError(f"close code {code} may not be sent")
