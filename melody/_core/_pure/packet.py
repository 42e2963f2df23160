"""The binary Packet (``melody.codecs.Packet``): parse and build, bytes in and bytes out.

The pure-Python twin of the compiled ``packet`` module (layout in ``packet.pxd``): a 14-byte
big-endian header (magic u16, version u8, flags u8, command u16, id u32, length u32), then the
payload. The length field is a check against the WebSocket message's own length, never trusted
to find the end.
"""

from __future__ import annotations

import struct
from typing import Any

from melody._core._pure._buffer import simple_view

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
_HEADER = struct.Struct(">HBBHII")

_REASONS = {
    PACKET_TRUNCATED: "truncated packet: shorter than its 14-byte header",
    PACKET_BAD_MAGIC: "wrong magic number",
    PACKET_BAD_VERSION: "unknown packet version",
    PACKET_LENGTH_MISMATCH: "payload length field disagrees with the message length",
}


class PacketError(ValueError):
    """Bytes that are not a valid packet; ``status`` is one of the ``PACKET_*`` failures."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _check_range(name: str, value: int, limit: int) -> None:
    if not 0 <= value <= limit:
        raise ValueError(f"{name} must be in 0..{limit:#x}, not {value!r}")


def build(command: int, payload: Any = b"", msg_id: int = 0, flags: int = 0,
          magic: int = DEFAULT_MAGIC) -> bytes:
    """One packet as ``bytes``: the header, then ``payload`` (any bytes-like object)."""
    _check_range("command", command, 0xFFFF)
    _check_range("flags", flags, 0xFF)
    _check_range("magic", magic, 0xFFFF)
    _check_range("msg_id", msg_id, _MAX_LENGTH)
    view = simple_view(payload)
    if len(view) > _MAX_LENGTH:
        raise ValueError("payload longer than 4 GiB - 1")
    return _HEADER.pack(magic, PACKET_VERSION, flags, command, msg_id, len(view)) + view


def parse(data: Any, magic: int = DEFAULT_MAGIC) -> tuple[int, int, int, bytes]:
    """Split one packet: ``(command, msg_id, flags, payload)``; PacketError when invalid."""
    view = simple_view(data)
    length = len(view)
    if length < HEADER_SIZE:
        raise PacketError(PACKET_TRUNCATED, _REASONS[PACKET_TRUNCATED])
    got_magic, version, flags, command, msg_id, declared = _HEADER.unpack_from(view)
    if got_magic != magic:
        raise PacketError(PACKET_BAD_MAGIC, _REASONS[PACKET_BAD_MAGIC]
                          + f" ({got_magic:#06x}, expected {magic:#06x})")
    if version != PACKET_VERSION:
        raise PacketError(PACKET_BAD_VERSION, _REASONS[PACKET_BAD_VERSION] + f" ({version})")
    if declared != length - HEADER_SIZE:
        raise PacketError(PACKET_LENGTH_MISMATCH, _REASONS[PACKET_LENGTH_MISMATCH]
                          + f" (header says {declared}, message holds {length - HEADER_SIZE})")
    return command, msg_id, flags, bytes(view[HEADER_SIZE:])
