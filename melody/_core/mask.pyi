"""Masking (RFC 6455 section 5.3): XOR a payload with a 4-byte key."""

import sys

if sys.version_info >= (3, 12):
    from collections.abc import Buffer
else:
    from typing_extensions import Buffer

def mask(data: Buffer, key: Buffer) -> bytes:
    """Return ``data`` XOR-ed with the repeating 4-byte ``key`` as new ``bytes``.

    Raises ``ValueError`` if ``key`` is not 4 bytes, ``TypeError`` if an argument is not
    bytes-like, ``BufferError`` if ``data`` is not contiguous.
    """

def mask_into(buffer: Buffer, key: Buffer, offset: int = 0) -> None:
    """XOR the writable ``buffer`` in place, ``offset`` bytes into the mask cycle.

    Raises ``TypeError`` if ``buffer`` is read-only or not bytes-like, ``ValueError`` for a
    key that is not 4 bytes or a negative ``offset``, ``BufferError`` if not contiguous.
    """

def unmask_region(buf: bytearray, start: int, length: int, key_at: int, phase: int) -> int:
    """XOR ``buf[start:start + length]`` in place with the 4-byte key at ``buf[key_at:]``.

    ``phase``: payload bytes unmasked before ``start``. ValueError for a region outside ``buf``.
    """

def region_bytes(buf: bytearray, start: int, length: int) -> bytes:
    """``buf[start:start + length]`` as new ``bytes`` (ValueError if outside ``buf``)."""

def new_buffer(size: int) -> bytearray:
    """A ``bytearray`` of ``size`` bytes, not zeroed (ValueError for a negative size)."""
