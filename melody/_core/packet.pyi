"""The binary Packet (``melody.codecs.Packet``): parse and build, bytes in and bytes out.

Layout (big-endian): magic u16, version u8, flags u8, command u16, id u32, length u32, payload.
"""

import sys
from typing import Final

if sys.version_info >= (3, 12):
    from collections.abc import Buffer
else:
    from typing_extensions import Buffer

__all__ = [
    "HEADER_SIZE",
    "PACKET_VERSION",
    "DEFAULT_MAGIC",
    "FLAG_REPLY",
    "FLAG_ERROR",
    "PACKET_TRUNCATED",
    "PACKET_BAD_MAGIC",
    "PACKET_BAD_VERSION",
    "PACKET_LENGTH_MISMATCH",
    "PacketError",
    "build",
    "parse",
]

HEADER_SIZE: Final = 14
"""Bytes before the payload."""
PACKET_VERSION: Final = 1
"""The only version this build reads and writes."""
DEFAULT_MAGIC: Final = 0x4D45
"""``b"ME"``: the magic number when none is chosen."""
FLAG_REPLY: Final = 0x01
"""The packet answers the request with the same id."""
FLAG_ERROR: Final = 0x02
"""A reply whose payload is an error message (UTF-8)."""
PACKET_TRUNCATED: Final = 1
"""Fewer bytes than the header."""
PACKET_BAD_MAGIC: Final = 2
"""The magic number is not the expected one."""
PACKET_BAD_VERSION: Final = 3
"""The version byte is not ``PACKET_VERSION``."""
PACKET_LENGTH_MISMATCH: Final = 4
"""The length field disagrees with the message length."""

class PacketError(ValueError):
    """Bytes that are not a valid packet; ``status`` is one of the ``PACKET_*`` failures."""

    status: int
    def __init__(self, status: int, message: str) -> None: ...

def build(
    command: int,
    payload: Buffer = b"",
    msg_id: int = 0,
    flags: int = 0,
    magic: int = 0x4D45,
) -> bytes:
    """One packet as ``bytes``: the header, then ``payload``.

    Raises ValueError for a field out of its range, TypeError for a payload that is not
    bytes-like.
    """

def parse(data: Buffer, magic: int = 0x4D45) -> tuple[int, int, int, bytes]:
    """Split one packet: ``(command, msg_id, flags, payload)``.

    Raises PacketError for a truncated packet, a wrong magic, an unknown version or a length
    field that disagrees with ``len(data)``.
    """
