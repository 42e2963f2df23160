"""permessage-deflate (RFC 7692) over zlib's C API.

:class:`Deflater` and :class:`Inflater` turn one whole message into its compressed payload and
back (section 7.2). The negotiation (section 7.1) is in ``melody._core.extensions``.
"""

import sys
from typing import Self

from typing_extensions import disjoint_base

if sys.version_info >= (3, 12):
    from collections.abc import Buffer
else:
    from typing_extensions import Buffer

__all__ = ["Deflater", "Inflater"]

@disjoint_base
class Deflater:
    """Compresses whole messages for permessage-deflate (RFC 7692 section 7.2.1).

    ``window_bits`` (9..15) is the LZ77 window the peer agreed to accept; 8 raises ValueError
    because zlib cannot compress with a 256-byte window (madler/zlib#171).
    ``level`` is zlib's (-1 default, 0 none .. 9 best), ``mem_level`` its memory/speed trade-off
    (1..9): the state costs about ``2**(window_bits + 2) + 2**(mem_level + 9)`` bytes.

    With ``no_context_takeover`` each message is compressed on its own, so one message's output
    is valid for every peer that agreed to the same or a larger window and to no context
    takeover on the sending side: a broadcast can compress once.

    The zlib state is made by the first non-empty message, not by the constructor, so an idle
    Deflater costs a few dozen bytes. With context takeover it then stays until the Deflater
    is freed; with ``no_context_takeover`` the compiled core borrows a reset stream from a
    small pool shared by the process for each message (the pure-Python core makes one per
    message), so it holds none between messages. See ``allocated``.

    Raises ValueError for out-of-range arguments.
    """

    @property
    def window_bits(self) -> int:
        """Base-2 logarithm of the LZ77 window (9..15)."""
    @property
    def no_context_takeover(self) -> bool:
        """True when the stream is reset after every message."""
    @property
    def level(self) -> int:
        """zlib compression level (-1..9)."""
    @property
    def mem_level(self) -> int:
        """zlib memLevel (1..9)."""
    @property
    def allocated(self) -> bool:
        """True while this Deflater holds zlib state: from its first non-empty message on with
        context takeover, never between messages with ``no_context_takeover``."""
    def __new__(
        cls,
        window_bits: int = 15,
        no_context_takeover: bool = False,
        level: int = 6,
        mem_level: int = 8,
    ) -> Self: ...
    def compress(self, data: Buffer) -> bytes:
        """Compress one whole message; returns its permessage-deflate payload.

        The payload is zlib's sync-flushed output with the trailing ``00 00 ff ff`` removed
        (7.2.1); an empty message becomes ``b"\\x00"`` (7.2.3.6). ``data`` is any C-contiguous
        bytes-like object; BufferError for a non-contiguous one, TypeError for anything else.
        Inputs of 64 KiB or more are compressed with the GIL released; RuntimeError if another
        thread is compressing with the same Deflater at that moment. MemoryError if zlib
        cannot allocate its state (made by the first message, see the class docstring).
        """

@disjoint_base
class Inflater:
    """Decompresses whole messages for permessage-deflate (RFC 7692 section 7.2.2).

    ``window_bits`` (8..15) is the LZ77 window the peer agreed to stay within (8 is inflated
    with 9, which accepts every 8-bit stream and those older zlib made when asked for 8).
    With ``no_context_takeover`` the window is dropped after each message.

    After any exception the stream is reset: with context takeover a later message referring
    to the lost window fails, so the connection should be closed.

    As with :class:`Deflater`, the zlib state (about 7 KiB, plus the window once a message has
    been inflated) is made by the first non-empty message and, with ``no_context_takeover``,
    held only during each message. See ``allocated``.
    """

    @property
    def window_bits(self) -> int:
        """Base-2 logarithm of the LZ77 window the peer compresses with (8..15)."""
    @property
    def no_context_takeover(self) -> bool:
        """True when the window is dropped after every message."""
    @property
    def allocated(self) -> bool:
        """True while this Inflater holds zlib state: from its first non-empty message on with
        context takeover, never between messages with ``no_context_takeover``."""
    def __new__(cls, window_bits: int = 15, no_context_takeover: bool = False) -> Self: ...
    def decompress_region(self, buf: bytearray, start: int, length: int, max_size: int) -> bytes:
        """``decompress`` of ``buf[start:start + length]`` (ValueError if outside ``buf``)."""
    def decompress(self, data: Buffer, max_size: int) -> bytes:
        """Decompress one whole message (all its frames' payloads concatenated).

        ``00 00 ff ff`` is appended (7.2.2); blocks after one with BFINAL set are read too
        (7.2.3.4), though past 8 such blocks each must come with 256 input bytes (every one
        copies the window twice). A zero-length payload is an empty message. Raises
        OverflowError as soon as the output would exceed ``max_size`` bytes
        (memory stays near ``max_size`` whatever the input: a deflate bomb costs no more),
        ValueError("invalid compressed data: ...") for corrupt data, a message that does not
        end at a block boundary or too many final blocks, ValueError for a negative
        ``max_size``. Pass ``sys.maxsize`` for no limit. Large inputs and outputs are inflated
        with the GIL released.
        """
