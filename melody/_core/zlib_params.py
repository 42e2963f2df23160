"""The compression parameters a Deflater and an Inflater accept: one check for both builds.

Plain Python, never compiled: the C kernel (``deflate.pyx``) and its interpreted version
(``deflate.py``) call it once per object they construct.
"""

from __future__ import annotations

__all__ = ["check_deflater", "check_inflater"]


def check_deflater(window_bits: int, level: int, mem_level: int) -> None:
    """Raise ValueError unless zlib can compress with these (RFC 7692's windows, 9..15)."""
    if window_bits == 8:
        raise ValueError(
            "window_bits=8 cannot be honoured: zlib compresses with 9 when asked for 8")
    if not 9 <= window_bits <= 15:
        raise ValueError(f"window_bits must be between 9 and 15, not {window_bits}")
    if not -1 <= level <= 9:
        raise ValueError(f"level must be between -1 and 9, not {level}")
    if not 1 <= mem_level <= 9:
        raise ValueError(f"mem_level must be between 1 and 9, not {mem_level}")


def check_inflater(window_bits: int) -> None:
    """Raise ValueError unless a peer may compress with this window (8..15)."""
    if not 8 <= window_bits <= 15:
        raise ValueError(f"window_bits must be between 8 and 15, not {window_bits}")
