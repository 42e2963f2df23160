"""The interpreted version of the ``deflate`` kernel: permessage-deflate over Python's ``zlib``.

``deflate.pyx`` drives zlib's C API directly; this is what runs where it is not compiled.
Both link the same zlib, so compressed payloads are byte for byte the same; three things the
C API gives and ``zlib`` does not are rebuilt here:

* Bounded inflation: ``decompress(data, max_length)`` stops at ``max_size + 1`` output bytes,
  so a deflate bomb costs no more memory than the limit.
* A stream that goes on after a block with BFINAL set (7.2.3.4) is restarted with the last
  window of output as its dictionary; the window is kept here (``inflateGetDictionary`` is not
  exposed).
* Whether a message ends on a block boundary (``data_type`` bit 7 in C) is asked of a copy of
  the stream: fed an empty final block, a stream waiting for a block header ends at once with
  the expected output; one inside a block does not.

Level 0 is the exception to "compressed by zlib": zlib's stored-block splitting depends on how
much output room each call has, which Python's ``zlib`` does not let us choose, so stored
blocks are framed here exactly as zlib frames them in the compiled module's single call.
"""

from __future__ import annotations

import operator
import re
import sys
import zlib
from collections import deque
from typing import Any

from .views import flat as simple_view
from .zlib_params import check_deflater, check_inflater

__all__ = ["Deflater", "Inflater"]

# Section 7.2.1: a sync flush ends with an empty stored block whose last four octets are these;
# the sender strips them and the receiver (7.2.2) puts them back.
_TAIL = b"\x00\x00\xff\xff"
# Section 7.2.3.6: an empty message is sent as one empty stored block's header byte.
_EMPTY_PAYLOAD = b"\x00"

# Each block with BFINAL set costs a restart that copies the window twice (up to 64 KiB);
# a message of back-to-back empty final blocks (2 bytes each) would make that a CPU bomb.
# Past a few per message, each restart must be paid for with this many input bytes.
_FREE_RESTARTS = 8
_BYTES_PER_RESTART = 256
# Input is fed to zlib in pieces of this size: at a final block, zlib copies the rest of the
# input it was given into ``unused_data``, so the piece bounds what a restart costs.
_FEED = 16384
# The largest stored block (zlib's MAX_STORED).
_MAX_STORED = 65535

# The "stream" of a level-0 Deflater: its stored blocks are framed by Deflater._store.
_STORED = object()

_ZLIB_ERROR = re.compile(r"Error (-?\d+) while (?:de)?compressing data(?:: (.*))?\Z", re.S)


def _zlib_message(exc: zlib.error) -> str:
    match = _ZLIB_ERROR.match(str(exc))
    if match is None:
        return str(exc)
    return match.group(2) or f"zlib error {match.group(1)}"


def _fixed_block_probe(pending_ones: int, literals: bytes) -> bytes:
    # A final block with fixed Huffman codes (3.2.6 of RFC 1951) holding ``literals``, without
    # the first ``pending_ones`` header bits (1, 1): a stream stopped at a block header may
    # hold up to two bits of the last byte it read, and only 1-bits can be left there (three
    # would have been read as a header).
    bits = [1, 1, 0][pending_ones:]
    for byte in literals:
        code, width = (0x30 + byte, 8) if byte < 144 else (0x190 + byte - 144, 9)
        bits += [(code >> (width - 1 - i)) & 1 for i in range(width)]
    bits += [0] * 7  # end of block (symbol 256: seven 0-bits)
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        out[i >> 3] |= bit << (i & 7)
    return bytes(out)


_PROBE_TEXT = b"ok"
_PROBES = tuple(_fixed_block_probe(k, _PROBE_TEXT) for k in range(3))


def _at_block_boundary(stream: Any) -> bool:
    for probe in _PROBES:
        copy = stream.copy()
        try:
            out = copy.decompress(probe)
        except zlib.error:
            continue
        if copy.eof and out == _PROBE_TEXT and not copy.unused_data:
            return True
    return False


def _c_int(value: Any) -> int:
    # What Cython's ``int`` and ``Py_ssize_t`` arguments take: anything with __index__.
    return operator.index(value)


class Deflater:
    """Compresses whole messages for permessage-deflate (RFC 7692 section 7.2.1).

    ``window_bits`` (9..15) is the LZ77 window the peer agreed to accept; 8 is refused with
    ValueError because zlib cannot compress with a 256-byte window (madler/zlib#171).
    ``level`` is zlib's (-1 default, 0 none .. 9 best), ``mem_level`` its memory/speed
    trade-off (1..9). With ``no_context_takeover`` each message is compressed on its own, so one
    message's output is valid for every peer that agreed to the same or a larger window and to
    no context takeover on the sending side: a broadcast can compress once.

    The zlib state is made by the first non-empty message, not here; with context takeover it
    then stays, with ``no_context_takeover`` it is dropped after each message (``allocated``).
    The compiled core lends a reset stream from a pool instead of making one per message;
    Python's ``zlib`` cannot reset a compressor, so here each message makes its own.
    """

    __slots__ = (
        "_busy",
        "_level",
        "_mem_level",
        "_no_context_takeover",
        "_stream",
        "_window_bits",
    )

    def __init__(
        self,
        window_bits: int = 15,
        no_context_takeover: bool = False,
        level: int = 6,
        mem_level: int = 8,
    ) -> None:
        window_bits, level, mem_level = _c_int(window_bits), _c_int(level), _c_int(mem_level)
        check_deflater(window_bits, level, mem_level)
        self._window_bits = window_bits
        self._no_context_takeover = bool(no_context_takeover)
        self._level = level
        self._mem_level = mem_level
        self._busy = False
        self._stream: Any = None

    def _new_stream(self) -> Any:
        if self._level == 0:
            return _STORED
        # A negative wbits asks for raw deflate: no zlib header or checksum (7.2.1).
        return zlib.compressobj(self._level, zlib.DEFLATED, -self._window_bits,
                                self._mem_level, zlib.Z_DEFAULT_STRATEGY)

    @property
    def window_bits(self) -> int:
        """Base-2 logarithm of the LZ77 window (9..15)."""
        return self._window_bits

    @property
    def no_context_takeover(self) -> bool:
        """True when the stream is reset after every message."""
        return self._no_context_takeover

    @property
    def level(self) -> int:
        """zlib compression level (-1..9)."""
        return self._level

    @property
    def mem_level(self) -> int:
        """zlib memLevel (1..9)."""
        return self._mem_level

    @property
    def allocated(self) -> bool:
        """True while this Deflater holds a zlib stream (see the class docstring)."""
        return self._stream is not None

    def __repr__(self) -> str:
        return (f"Deflater(window_bits={self._window_bits}, "
                f"no_context_takeover={self._no_context_takeover}, level={self._level}, "
                f"mem_level={self._mem_level})")

    def compress(self, data: Any) -> bytes:
        """Compress one whole message; returns its permessage-deflate payload.

        ``data`` is any C-contiguous bytes-like object. Raises BufferError for a
        non-contiguous buffer, TypeError for anything else, RuntimeError if another thread
        is compressing with this Deflater at the same moment.
        """
        if type(data) is not bytes:
            data = simple_view(data)
        if len(data) == 0:
            # Nothing touches the stream, so the window and the sync point are as they were.
            return _EMPTY_PAYLOAD
        if self._busy:
            raise RuntimeError("Deflater used by two threads at once")
        self._busy = True
        try:
            stream = self._stream
            if stream is None:
                stream = self._stream = self._new_stream()
            if stream is _STORED:
                out = self._store(data)
            else:
                out = stream.compress(data) + stream.flush(zlib.Z_SYNC_FLUSH)
            if not out.endswith(_TAIL):
                raise RuntimeError("zlib's sync flush did not end with 00 00 ff ff")
            if self._no_context_takeover:
                self._stream = None
            return out[:-4]
        except BaseException:
            # Whatever was half-compressed is unusable; the next message starts afresh.
            self._stream = None
            raise
        finally:
            self._busy = False

    @staticmethod
    def _store(data: Any) -> bytes:
        # zlib's deflate_stored given the whole message and room for all of its output in one
        # Z_SYNC_FLUSH call: stored blocks of at most 65535 bytes straight from the input, then
        # the flush's empty stored block. A stream at level 0 is byte-aligned between messages,
        # so every block header is the single byte 00.
        parts = []
        view = memoryview(data)
        for start in range(0, len(view), _MAX_STORED):
            chunk = view[start : start + _MAX_STORED]
            n = len(chunk)
            parts.append(bytes((0, n & 0xFF, n >> 8, ~n & 0xFF, (~n >> 8) & 0xFF)))
            parts.append(chunk.tobytes())
        parts.append(b"\x00" + _TAIL)
        return b"".join(parts)


class Inflater:
    """Decompresses whole messages for permessage-deflate (RFC 7692 section 7.2.2).

    ``window_bits`` (8..15) is the LZ77 window the peer agreed to stay within; 8 is inflated
    with a 512-byte window (older zlib compressed with 9 when asked for 8, and the larger window
    accepts every valid 8-bit stream too). With ``no_context_takeover`` the window is dropped
    after each message. After any exception the stream is reset; with context takeover a later
    message that refers back to the lost window fails loudly, so the connection should be
    closed. As with :class:`Deflater`, the zlib state is made by the first non-empty message
    and, with ``no_context_takeover``, dropped after each one (``allocated``).
    """

    __slots__ = (
        "_busy",
        "_history",
        "_history_len",
        "_no_context_takeover",
        "_stream",
        "_wbits",
        "_window_bits",
        "_wsize",
    )

    def __init__(self, window_bits: int = 15, no_context_takeover: bool = False) -> None:
        window_bits = _c_int(window_bits)
        check_inflater(window_bits)
        self._window_bits = window_bits
        self._no_context_takeover = bool(no_context_takeover)
        self._wbits = window_bits if window_bits > 8 else 9
        self._wsize = 1 << self._wbits
        self._busy = False
        # The output since the stream was last reset, the oldest pieces dropped once the rest
        # covers the window: what zlib's inflateGetDictionary would return, for restarts.
        self._history: deque[bytes] = deque()
        self._history_len = 0
        self._stream: Any = None

    @property
    def window_bits(self) -> int:
        """Base-2 logarithm of the LZ77 window the peer compresses with (8..15)."""
        return self._window_bits

    @property
    def no_context_takeover(self) -> bool:
        """True when the window is dropped after every message."""
        return self._no_context_takeover

    @property
    def allocated(self) -> bool:
        """True while this Inflater holds a zlib stream (see the class docstring)."""
        return self._stream is not None

    def __repr__(self) -> str:
        return (f"Inflater(window_bits={self._window_bits}, "
                f"no_context_takeover={self._no_context_takeover})")

    def _reset(self) -> None:
        self._stream = None
        self._history.clear()
        self._history_len = 0

    def _remember(self, piece: bytes) -> None:
        history = self._history
        history.append(piece)
        self._history_len += len(piece)
        wsize = self._wsize
        while self._history_len - len(history[0]) >= wsize:
            self._history_len -= len(history.popleft())

    def _restart_keep_window(self) -> None:
        # zlib stops at a block with BFINAL set, but RFC 7692 lets more blocks follow
        # (7.2.3.4) and lets later data refer back past it: start a new raw stream with the
        # old window as its dictionary.
        window = b"".join(self._history)[-self._wsize :]
        if window:
            self._stream = zlib.decompressobj(-self._wbits, zdict=window)
            self._history.clear()
            self._history.append(window)
            self._history_len = len(window)
        else:
            self._stream = zlib.decompressobj(-self._wbits)

    def decompress(self, data: Any, max_size: int) -> bytes:
        """Decompress one whole message (all its frames' payloads concatenated).

        Raises OverflowError as soon as the output would exceed ``max_size`` bytes (memory use
        stays near ``max_size`` whatever the input), ValueError for corrupt data, a message
        that does not end at a block boundary, or more BFINAL blocks than its size pays for.
        Pass ``sys.maxsize`` for no limit.
        """
        if type(data) is not bytes:
            data = simple_view(data)
        max_size = _c_int(max_size)
        if max_size < 0:
            raise ValueError(f"max_size must be >= 0, not {max_size}")
        if self._busy:
            raise RuntimeError("Inflater used by two threads at once")
        length = len(data)
        if length == 0:
            # Not valid deflate (7.2.3.6 sends 0x00), but some senders flag an empty message
            # as compressed; nothing is fed, so the stream is left exactly as it was.
            return b""
        # Output never grows past max_size + 1 bytes: producing that last byte is how an
        # overlong message is detected, without inflating the rest of it.
        limit = max_size + 1 if max_size < sys.maxsize else max_size
        self._busy = True
        try:
            if self._stream is None:
                self._stream = zlib.decompressobj(-self._wbits)
            out = self._inflate(data, length, max_size, limit)
            if self._no_context_takeover:
                self._reset()
            return out
        except BaseException:
            self._reset()
            raise
        finally:
            self._busy = False

    def decompress_region(self, buf: bytearray, start: int, length: int, max_size: int) -> bytes:
        """``decompress`` of ``buf[start:start + length]``."""
        if start < 0 or length < 0 or length > len(buf) - start:
            raise ValueError(f"region [{start}, {start}+{length}) outside a buffer of "
                             f"{len(buf)} bytes")
        with memoryview(buf) as view:
            return self.decompress(bytes(view[start:start + length]), max_size)

    def _inflate(self, data: Any, length: int, max_size: int, limit: int) -> bytes:
        # The input is the message and then 00 00 ff ff (7.2.2), fed in pieces of _FEED bytes,
        # the tail in the same piece as the end of the message. ``pos`` is how much of it zlib
        # has consumed.
        parts: list[bytes] = []
        produced = 0
        restarts = 0
        view = memoryview(data)
        total = length + len(_TAIL)
        pos = 0
        feed: Any = None
        feed_end = 0
        # True while ``feed`` is the input zlib left unseen last call (``unconsumed_tail``).
        feed_is_tail = False
        while True:
            if feed is None:
                if pos >= total:
                    break
                if length - pos > _FEED:
                    feed = view[pos : pos + _FEED]
                    feed_end = pos + _FEED
                else:
                    feed = view[pos:].tobytes() + _TAIL if pos < length else _TAIL[pos - length :]
                    feed_end = total
            # The compiled core reports OverflowError when zlib makes more than max_size bytes
            # before any error, and Python's zlib.error discards the output of the call that
            # failed. So each call stops one byte short of the limit, where an error proves
            # the message was within it; the byte past it is asked for with room for that byte
            # alone, on a stream copied beforehand: if that call fails, the copy says whether
            # the byte came first (Decompress.flush reports output, not errors).
            room = limit - produced
            stream = self._stream
            saved = stream.copy() if room == 1 else None
            want = room - 1 if room > 1 else 1
            try:
                chunk = stream.decompress(feed, want)
            except zlib.error as exc:
                if saved is not None and (saved.flush() if feed_is_tail
                                          else _output_before_error(saved, feed)):
                    raise OverflowError(f"decompressed message exceeds {max_size} bytes") from None
                raise ValueError(f"invalid compressed data: {_zlib_message(exc)}") from None
            if chunk:
                produced += len(chunk)
                parts.append(chunk)
                self._remember(chunk)
                if produced > max_size:
                    raise OverflowError(f"decompressed message exceeds {max_size} bytes")
            if stream.eof:
                pos = feed_end - len(stream.unused_data)
                if pos > length:
                    raise ValueError(
                        "invalid compressed data: final block ends inside 00 00 ff ff")
                restarts += 1
                if (restarts > _FREE_RESTARTS
                        and (restarts - _FREE_RESTARTS) * _BYTES_PER_RESTART > pos):
                    raise ValueError("invalid compressed data: too many final blocks")
                rest = stream.unused_data
                self._restart_keep_window()
                if pos == length:
                    # The message ended with a BFINAL block and nothing after it: complete.
                    return b"".join(parts)
                feed = rest
                feed_is_tail = False
                continue
            if room > 1 and len(chunk) == want:
                # One byte short of the limit: what zlib kept (input, or output it had no room
                # for) goes round again, with room for one byte.
                feed = stream.unconsumed_tail
                feed_is_tail = True
                continue
            pos = feed_end
            feed = None
            feed_is_tail = False
        # The appended empty stored block must have closed the message: else it was truncated
        # or kept its own 00 00 ff ff, and with context takeover the next message would be read
        # from the middle of a block.
        if not _at_block_boundary(self._stream):
            raise ValueError("invalid compressed data: message does not end at a block boundary")
        return b"".join(parts)


def _output_before_error(stream: Any, feed: Any) -> bool:
    # ``stream`` (a copy) is at the message's size limit and new input ``feed`` makes it fail:
    # was there one more byte of output before the failure (the compiled core then reports the
    # size)? Fed a byte at a time, zlib shows output made before the input byte that fails.
    # Output made within that very byte, just before an error found in the rest of its bits,
    # stays unknown and counts as none: only there does the pure core say "invalid data"
    # (1007) where the compiled one says "too big" (1009), and only when the limit falls
    # exactly where a new piece of input (every 16 KiB) or a new final-block stream begins.
    for i in range(len(feed)):
        try:
            if stream.decompress(feed[i : i + 1], 1):
                return True
        except zlib.error:
            return False
        if stream.eof:
            return False
    return False
