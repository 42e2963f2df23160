"""Building WebSocket frames (RFC 6455 section 5.2), and the close-code rule.

Server frames are unmasked, so one built frame is the same bytes for every recipient: the hub
builds a broadcast once and hands the same object to every transport. Client frames are masked
with a fresh key each (section 5.3), drawn from the OS's CSPRNG in batches because
``os.urandom`` per frame would cost a system call per message.

One source for both builds: compiled with ``frames.pxd`` (C types for the hot functions) and
run as it is where no compiled engine exists.
"""

from __future__ import annotations

import operator
import os
import struct
from typing import Any

from .constants import FIN_BIT, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RSV1_BIT
from .mask import mask
from .views import flat

__all__ = [
    "OP_CONT", "OP_TEXT", "OP_BINARY", "OP_CLOSE", "OP_PING", "OP_PONG",
    "build_frame", "build_close_frame", "close_reason", "encode_frame", "encode_close",
    "parse_close",
    "is_valid_close_code",
]  # fmt: skip

_INT_MAX = (1 << 31) - 1

# 4 KiB of key material: 1024 masked frames per os.urandom call.
_KEY_POOL_SIZE = 4096
_key_pool = b""
_key_pos = _KEY_POOL_SIZE

_head2 = struct.Struct("!BB").pack
_head4 = struct.Struct("!BBH").pack
_head10 = struct.Struct("!BBQ").pack
# The 2-byte headers of unmasked frames up to 125 bytes, per first byte, made on first use: a
# short frame is then one concatenation (one allocation and copy), as in C.
_short_heads: list[Any] = [None] * 256


def fresh_mask_key() -> bytes:
    """Four bytes of fresh key material from the pool (refilled from ``os.urandom``)."""
    global _key_pool, _key_pos
    pos = _key_pos
    if pos + 4 > _KEY_POOL_SIZE:
        _key_pool = os.urandom(_KEY_POOL_SIZE)
        pos = 0
    _key_pos = pos + 4
    return _key_pool[pos:pos + 4]


def _short_head(first_byte: int, length: int) -> bytes:
    heads = _short_heads[first_byte]
    if heads is None:
        heads = _short_heads[first_byte] = [_head2(first_byte, n) for n in range(126)]
    head: bytes = heads[length]
    return head


def build_frame(first_byte: int, payload: Any, masked: bool) -> bytes:
    """One frame: ``first_byte`` is FIN|RSV|opcode; ``payload`` is ``bytes`` or a flat byte
    view, copied once into the new bytes object. ``masked`` frames get a fresh random key."""
    frame: bytes
    n = len(payload)
    if not masked and n < 126:
        frame = _short_head(first_byte, n) + payload
        return frame
    mask_bit = 0x80 if masked else 0
    if n > 65535:
        head = _head10(first_byte, mask_bit | 127, n)
    elif n > 125:
        head = _head4(first_byte, mask_bit | 126, n)
    else:
        head = _head2(first_byte, mask_bit | n)
    if masked:
        key = fresh_mask_key()
        return head + key + mask(payload, key)
    frame = head + payload
    return frame


def close_reason(reason: Any) -> bytes:
    """A close reason (str or bytes) as the UTF-8 a close frame carries: cut to 123 bytes (the
    125-byte control payload less the code) on a code point boundary, so that the peer never
    sees invalid UTF-8 (1007)."""
    if not reason:
        return b""
    encoded = reason.encode("utf-8") if isinstance(reason, str) else bytes(reason)
    if len(encoded) > 123:
        encoded = encoded[:123].decode("utf-8", "ignore").encode("utf-8")
    return encoded


def build_close_frame(code: int, reason: Any, masked: bool) -> bytes:
    """A close frame with ``code`` (0: no status, an empty payload) and ``close_reason(reason)``."""
    if not code:
        return build_frame(FIN_BIT | OP_CLOSE, b"", masked)
    return build_frame(FIN_BIT | OP_CLOSE, _head2((code >> 8) & 0xFF, code & 0xFF)
                       + close_reason(reason), masked)


def _c_int(value: Any) -> int:
    # What a C ``int`` argument takes: anything with __index__ that fits.
    number = value if type(value) is int else operator.index(value)
    if not -_INT_MAX - 1 <= number <= _INT_MAX:
        raise OverflowError("value too large to convert to int")
    return number


def encode_frame(opcode: int, payload: Any = b"", *, fin: bool = True, rsv1: bool = False,
                 mask: bool = False) -> bytes:
    """Build one frame. ``payload`` is any bytes-like object; ``mask`` picks a fresh key."""
    opcode = _c_int(opcode)
    if opcode < 0 or opcode > 15:
        raise ValueError("opcode must be 0..15")
    first = opcode
    if fin:
        first |= FIN_BIT
    if rsv1:
        first |= RSV1_BIT
    return build_frame(first, payload if type(payload) is bytes else flat(payload), bool(mask))


def encode_close(code: int = 1000, reason: str | bytes = "", *, mask: bool = False) -> bytes:
    """Build a close frame; ``code=0`` sends none (an empty close payload)."""
    code = _c_int(code)
    if code and not (0 <= code <= 65535):
        raise ValueError("close code out of range")
    return build_close_frame(code, reason, bool(mask))


def is_valid_close_code(code: int) -> bool:
    """True for the codes a peer may send in a close frame (RFC 6455 7.4, IANA registry).

    The one place of this rule: the connection checks received close frames with it, and the
    session, the client and the metrics check the codes they send or name with it. 1004-1006
    and 1015 are reserved and never sent; 1012-1014 are registered with IANA since; 3000-4999
    are for libraries and applications.
    """
    code = operator.index(code)
    return (1000 <= code <= 1003) or (1007 <= code <= 1014) or (3000 <= code <= 4999)


def parse_close(payload: Any) -> tuple[int, str]:
    """Split a close payload into ``(code, reason)``; ``(1005, "")`` when it carries none.

    Raises ValueError for a 1-byte payload, an invalid code or a reason that is not UTF-8.
    """
    data = bytes(payload)
    if len(data) == 0:
        return 1005, ""
    if len(data) == 1:
        raise ValueError("close payload of 1 byte")
    code = (data[0] << 8) | data[1]
    if not is_valid_close_code(code):
        raise ValueError(f"invalid close code {code}")
    return code, data[2:].decode("utf-8")
