"""The binary Packet (``melody.codecs.Packet``): parse and build, bytes in and bytes out.

A 14-byte big-endian header (magic u16,
version u8, flags u8, command u16, id u32, length u32) inside one WebSocket binary message. The
frame already delimits the message, so the length field is a check: a length that disagrees
with the frame is refused rather than trusted.

One source for both builds: ``packet.pxd`` types the header checks for the compiled module.
"""

from __future__ import annotations

import operator
import struct
from typing import Any

from .views import flat as simple_view

__all__ = [
    "HEADER_SIZE", "PACKET_VERSION", "DEFAULT_MAGIC", "FLAG_REPLY", "FLAG_ERROR",
    "PACKET_TRUNCATED", "PACKET_BAD_MAGIC", "PACKET_BAD_VERSION", "PACKET_LENGTH_MISMATCH",
    "PacketError", "build", "parse",
]  # fmt: skip

HEADER_SIZE = 14
PACKET_VERSION = 1
DEFAULT_MAGIC = 0x4D45
FLAG_REPLY = 0x01
FLAG_ERROR = 0x02

PACKET_TRUNCATED = 1
PACKET_BAD_MAGIC = 2
PACKET_BAD_VERSION = 3
PACKET_LENGTH_MISMATCH = 4

_MAX_LENGTH = 0xFFFFFFFF
_INT_MAX = (1 << 31) - 1

_header = struct.Struct("!HBBHII")


class PacketError(ValueError):
    """Bytes that are not a valid packet; ``status`` is one of the ``PACKET_*`` failures."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def build_packet(magic: int, flags: int, command: int, msg_id: int, payload: Any) -> bytes:
    """One packet as new bytes; the caller has checked every field's range."""
    head: bytes = _header.pack(magic, PACKET_VERSION, flags, command, msg_id, len(payload))
    return head + payload if len(payload) else head


def check_packet(data: Any, magic: int) -> int:
    """0 when ``data`` is a whole packet with this magic and a known version, else one of the
    PACKET_* failures (the first that applies, in header order)."""
    length = len(data)
    if length < HEADER_SIZE:
        return PACKET_TRUNCATED
    if (data[0] << 8) | data[1] != magic:
        return PACKET_BAD_MAGIC
    if data[2] != PACKET_VERSION:
        return PACKET_BAD_VERSION
    declared = (data[10] << 24) | (data[11] << 16) | (data[12] << 8) | data[13]
    if declared != length - HEADER_SIZE:
        return PACKET_LENGTH_MISMATCH
    return 0


def _check_range(name: str, value: Any, limit: int) -> int:
    if not 0 <= value <= limit:
        raise ValueError(f"{name} must be in 0..{limit:#x}, not {value!r}")
    return int(value)


def build(command: Any, payload: Any = b"", msg_id: Any = 0, flags: Any = 0,
          magic: Any = DEFAULT_MAGIC) -> bytes:
    """One packet as ``bytes``: the header, then ``payload`` (any bytes-like object).

    Copies the payload once. Raises ValueError for a field out of its range (command and
    magic: 16 bits; flags: 8; msg_id: 32; the payload at most 4 GiB - 1), TypeError for a
    payload that is not bytes-like.
    """
    command = _check_range("command", command, 0xFFFF)
    flags = _check_range("flags", flags, 0xFF)
    magic = _check_range("magic", magic, 0xFFFF)
    msg_id = _check_range("msg_id", msg_id, _MAX_LENGTH)
    view = payload if type(payload) is bytes else simple_view(payload)
    if len(view) > _MAX_LENGTH:
        raise ValueError("payload longer than 4 GiB - 1")
    return build_packet(magic, flags, command, msg_id, view)


_REASONS = {
    PACKET_TRUNCATED: "truncated packet: shorter than its 14-byte header",
    PACKET_BAD_MAGIC: "wrong magic number",
    PACKET_BAD_VERSION: "unknown packet version",
    PACKET_LENGTH_MISMATCH: "payload length field disagrees with the message length",
}


def parse(data: Any, magic: int = DEFAULT_MAGIC) -> tuple[int, int, int, bytes]:
    """Split one packet: ``(command, msg_id, flags, payload)``, the payload as new ``bytes``.

    Raises PacketError (its ``status`` one of ``PACKET_*``) for a packet shorter than its
    header, with another magic, an unknown version, or a length field that disagrees with
    ``len(data)``; TypeError for data that is not bytes-like.
    """
    magic = operator.index(magic)
    if not -_INT_MAX - 1 <= magic <= _INT_MAX:
        raise OverflowError("value too large to convert to int")
    buf = data if type(data) is bytes else simple_view(data)
    status = check_packet(buf, magic & 0xFFFFFFFF)
    if status:
        detail = ""
        if status == PACKET_BAD_MAGIC:
            detail = f" ({(buf[0] << 8) | buf[1]:#06x}, expected {magic:#06x})"
        elif status == PACKET_BAD_VERSION:
            detail = f" ({buf[2]})"
        elif status == PACKET_LENGTH_MISMATCH:
            detail = (f" (header says {int.from_bytes(buf[10:14], 'big')}, message holds "
                      f"{len(buf) - HEADER_SIZE})")
        raise PacketError(status, _REASONS[status] + detail)
    _, _, flags, command, msg_id, _ = _header.unpack_from(buf)
    return command, msg_id, flags, bytes(buf[HEADER_SIZE:])
