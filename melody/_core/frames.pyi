"""Building WebSocket frames (RFC 6455 section 5.2).

Server frames are unmasked, so one built frame is the same bytes for every recipient. Client
frames are masked with a fresh key each (section 5.3), drawn from the OS's CSPRNG in batches.
"""

import sys
from typing import Final

if sys.version_info >= (3, 12):
    from collections.abc import Buffer
else:
    from typing_extensions import Buffer

__all__ = [
    "OP_CONT",
    "OP_TEXT",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "encode_frame",
    "encode_close",
    "parse_close",
    "is_valid_close_code",
]

OP_CONT: Final = 0x0
"""Continuation frame: the next fragment of a text or binary message (section 5.4)."""
OP_TEXT: Final = 0x1
"""Text frame: the payload is UTF-8 (section 5.6)."""
OP_BINARY: Final = 0x2
"""Binary frame."""
OP_CLOSE: Final = 0x8
"""Close control frame (section 5.5.1)."""
OP_PING: Final = 0x9
"""Ping control frame (section 5.5.2)."""
OP_PONG: Final = 0xA
"""Pong control frame (section 5.5.3)."""

def encode_frame(
    opcode: int,
    payload: Buffer = b"",
    *,
    fin: bool = True,
    rsv1: bool = False,
    mask: bool = False,
) -> bytes:
    """Build one frame with the shortest length encoding (7, 16 or 64 bits).

    ``payload`` is any C-contiguous bytes-like object, copied once. ``fin`` sets FIN (the last
    frame of a message), ``rsv1`` marks a compressed first frame (RFC 7692), ``mask`` masks the
    payload with a fresh random key (client to server). No rule is checked beyond the opcode's
    range: a control frame over 125 bytes or a fragmented one is built as asked (for tests).
    Raises ValueError for an opcode outside 0..15, TypeError if ``payload`` is not bytes-like.
    """

def encode_close(code: int = 1000, reason: str | bytes = "", *, mask: bool = False) -> bytes:
    """Build a close frame carrying ``code`` and ``reason``.

    ``code=0`` sends no status at all (an empty close payload, received as 1005). The reason is
    UTF-8 encoded and cut on a code point boundary to fit the 125-byte control payload (123
    bytes after the code). The code is not checked against section 7.4: a test may send any.
    Raises ValueError for a code outside 0..65535.
    """

def parse_close(payload: Buffer) -> tuple[int, str]:
    """Split a received close payload into ``(code, reason)``; ``(1005, "")`` when empty.

    Raises ValueError for a 1-byte payload or a code a peer may not send (see
    :func:`is_valid_close_code`), UnicodeDecodeError (a ValueError) for a reason that is not
    UTF-8.
    """

def is_valid_close_code(code: int) -> bool:
    """True for the codes a peer may send in a close frame (RFC 6455 7.4, IANA registry).

    That is 1000-1003, 1007-1014 and 3000-4999; 1004-1006 and 1015 are reserved and never sent.
    """
