"""permessage-deflate (RFC 7692) over the standard library's ``zlib`` module.

The pure-Python twin of the compiled ``deflate`` module, which drives zlib's C API directly.
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

import dataclasses
import operator
import re
import sys
import zlib
from collections import deque
from collections.abc import Iterable
from typing import Any

from melody._core._pure._buffer import simple_view

__all__ = [
    "EXTENSION_NAME",
    "DeflateParams",
    "Deflater",
    "Inflater",
    "accept_response",
    "build_offer",
    "negotiate",
    "parse_extensions",
]

EXTENSION_NAME = "permessage-deflate"

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
        if window_bits == 8:
            raise ValueError(
                "window_bits=8 cannot be honoured: zlib compresses with 9 when asked for 8")
        if not 9 <= window_bits <= 15:
            raise ValueError(f"window_bits must be between 9 and 15, not {window_bits}")
        if not -1 <= level <= 9:
            raise ValueError(f"level must be between -1 and 9, not {level}")
        if not 1 <= mem_level <= 9:
            raise ValueError(f"mem_level must be between 1 and 9, not {mem_level}")
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
        if not 8 <= window_bits <= 15:
            raise ValueError(f"window_bits must be between 8 and 15, not {window_bits}")
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


# --- Negotiation (RFC 7692 section 7.1, grammar of RFC 6455 section 9.1) ---------------------

_TCHAR = frozenset(
    "!#$%&'*+-.^_`|~0123456789"
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_WINDOW_BITS = ("8", "9", "10", "11", "12", "13", "14", "15")


def _skip_ows(s: str, i: int) -> int:
    n = len(s)
    while i < n and (s[i] == " " or s[i] == "\t"):
        i += 1
    return i


def _token(s: str, i: int, what: str) -> tuple[str, int]:
    n, start = len(s), i
    while i < n and s[i] in _TCHAR:
        i += 1
    if i == start:
        found = repr(s[i]) if i < n else "end of header"
        raise ValueError(f"expected {what} at position {i}, found {found}")
    return s[start:i], i


def _is_token(s: str) -> bool:
    if not s:
        return False
    return all(c in _TCHAR for c in s)


def _quoted(s: str, i: int) -> tuple[str, int]:
    # RFC 7230 3.2.6: quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE
    n, start = len(s), i
    chars: list[str] = []
    i += 1
    while i < n:
        c = s[i]
        if c == '"':
            return "".join(chars), i + 1
        if c == "\\":
            i += 1
            if i == n:
                break
            c = s[i]
            o = ord(c)
            if not (c == "\t" or 0x20 <= o <= 0x7E or 0x80 <= o <= 0xFF):
                raise ValueError(f"invalid quoted-pair at position {i}")
        else:
            o = ord(c)
            if not (c == "\t" or c == " " or c == "!" or 0x23 <= o <= 0x5B
                    or 0x5D <= o <= 0x7E or 0x80 <= o <= 0xFF):
                raise ValueError(f"invalid character {c!r} in quoted string at position {i}")
        chars.append(c)
        i += 1
    raise ValueError(f"unterminated quoted string at position {start}")


def _parse_value(s: str, out: list[tuple[str, list[tuple[str, str | None]]]]) -> None:
    i, n, before = 0, len(s), len(out)
    while True:
        i = _skip_ows(s, i)
        if i == n:
            break
        if s[i] == ",":
            # RFC 7230 section 7: empty list elements are allowed and ignored.
            i += 1
            continue
        name, i = _token(s, i, "extension name")
        params: list[tuple[str, str | None]] = []
        i = _skip_ows(s, i)
        while i < n and s[i] == ";":
            i = _skip_ows(s, i + 1)
            pname, i = _token(s, i, "parameter name")
            i = _skip_ows(s, i)
            pvalue: str | None = None
            if i < n and s[i] == "=":
                i = _skip_ows(s, i + 1)
                if i < n and s[i] == '"':
                    pvalue, i = _quoted(s, i)
                    # RFC 6455 9.1: an unquoted value must be a token, and so must be a
                    # quoted one once unescaped.
                    if not _is_token(pvalue):
                        raise ValueError(f"quoted value {pvalue!r} of {pname} is not a token")
                else:
                    pvalue, i = _token(s, i, f"value of {pname}")
                i = _skip_ows(s, i)
            params.append((pname, pvalue))
        if i < n:
            if s[i] != ",":
                raise ValueError(f"unexpected {s[i]!r} at position {i}")
            i += 1
        out.append((name, params))
    if len(out) == before:
        raise ValueError("no extension in header value")


def parse_extensions(
    header_values: str | Iterable[str],
) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """Parse ``Sec-WebSocket-Extensions`` values (RFC 6455 section 9.1).

    Each value (one header line; a single ``str`` is one line) is a comma-separated list of
    ``name; param; param=value; param="quoted value"``. Returns ``[(name, [(param, value or
    None), ...]), ...]`` in order, quoted values unescaped. Raises ValueError on any syntax
    error.
    """
    out: list[tuple[str, list[tuple[str, str | None]]]] = []
    if isinstance(header_values, str):
        header_values = [header_values]
    for value in header_values:
        if not isinstance(value, str):
            raise ValueError(f"header value must be str, not {type(value).__name__}")
        _parse_value(value, out)
    return out


def _read_params(
    params: list[tuple[str, str | None]], request: bool
) -> tuple[bool, bool, int | None, int | bool | None]:
    # Returns (server_no_context_takeover, client_no_context_takeover, server_max_window_bits,
    # client_max_window_bits); the bits are None when absent, and client_max_window_bits is
    # True for the valueless form only an offer may use (7.1.2.2).
    seen: set[str] = set()
    snct = cnct = False
    sbits: int | None = None
    cbits: int | bool | None = None
    for name, value in params:
        if name in seen:
            raise ValueError(f"duplicate parameter {name}")
        seen.add(name)
        if name == "server_no_context_takeover" or name == "client_no_context_takeover":
            if value is not None:
                raise ValueError(f"{name} takes no value")
            if name == "server_no_context_takeover":
                snct = True
            else:
                cnct = True
        elif name == "server_max_window_bits" or name == "client_max_window_bits":
            if value is None:
                if name == "client_max_window_bits" and request:
                    cbits = True
                    continue
                raise ValueError(f"{name} needs a value")
            # 7.1.2: a decimal integer from 8 to 15 without leading zeros.
            if value not in _WINDOW_BITS:
                raise ValueError(f"invalid {name} value {value!r}")
            if name == "server_max_window_bits":
                sbits = int(value)
            else:
                cbits = int(value)
        else:
            raise ValueError(f"unknown parameter {name}")
    return snct, cnct, sbits, cbits


def _check_bits(name: str, value: object, low: int) -> None:
    if type(value) is not int or not low <= value <= 15:
        raise ValueError(f"{name} must be an int between {low} and 15, not {value!r}")


@dataclasses.dataclass(frozen=True)
class DeflateParams:
    """The agreed permessage-deflate parameters of one connection (RFC 7692 section 7.1).

    ``server_*`` apply to what the server compresses, ``client_*`` to what the client
    compresses. Window bits are 8..15 (a side cannot compress with 8, see :class:`Deflater`;
    the negotiation functions never agree to that). ``echo_server_max_window_bits`` records
    that the offer carried ``server_max_window_bits``, which the response must then repeat even
    at 15 (7.1.2.1); it takes no part in ``==``. Raises ValueError on out-of-range values.
    """

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int = 15
    client_max_window_bits: int = 15
    # How the response is spelled, not what was agreed: left out of == and hash.
    echo_server_max_window_bits: bool = dataclasses.field(default=False, compare=False)

    def __post_init__(self) -> None:
        _check_bits("server_max_window_bits", self.server_max_window_bits, 8)
        _check_bits("client_max_window_bits", self.client_max_window_bits, 8)

    def response_header(self) -> str:
        """The ``Sec-WebSocket-Extensions`` value a server sends to accept with these values.

        ``client_max_window_bits`` is sent only below 15 (:func:`negotiate` lowers it only when
        the offer allowed it); ``server_max_window_bits`` below 15 or when echoed.
        """
        parts = [EXTENSION_NAME]
        if self.server_no_context_takeover:
            parts.append("server_no_context_takeover")
        if self.client_no_context_takeover:
            parts.append("client_no_context_takeover")
        if self.server_max_window_bits != 15 or self.echo_server_max_window_bits:
            parts.append(f"server_max_window_bits={self.server_max_window_bits}")
        if self.client_max_window_bits != 15:
            parts.append(f"client_max_window_bits={self.client_max_window_bits}")
        return "; ".join(parts)

    def server_deflater(self, level: int = 6, mem_level: int = 8) -> Deflater:
        """A :class:`Deflater` for the server's outgoing messages."""
        return Deflater(self.server_max_window_bits, self.server_no_context_takeover, level,
                        mem_level)

    def server_inflater(self) -> Inflater:
        """An :class:`Inflater` for the messages the server receives."""
        return Inflater(self.client_max_window_bits, self.client_no_context_takeover)

    def client_deflater(self, level: int = 6, mem_level: int = 8) -> Deflater:
        """A :class:`Deflater` for the client's outgoing messages."""
        return Deflater(self.client_max_window_bits, self.client_no_context_takeover, level,
                        mem_level)

    def client_inflater(self) -> Inflater:
        """An :class:`Inflater` for the messages the client receives."""
        return Inflater(self.server_max_window_bits, self.server_no_context_takeover)


def negotiate(
    header_values: str | Iterable[str],
    *,
    server_no_context_takeover: bool = False,
    client_no_context_takeover: bool = False,
    server_max_window_bits: int = 15,
    client_max_window_bits: int = 15,
) -> DeflateParams | None:
    """Accept the first permessage-deflate offer the server can honour (RFC 7692 7.1).

    ``header_values`` are the request's ``Sec-WebSocket-Extensions`` lines. The keyword
    arguments are the server's wishes: a ``*_no_context_takeover`` set here is always sent, a
    window below 15 is sent where the offer allows it. An offer with unknown, duplicated or
    invalid parameters, or demanding ``server_max_window_bits=8``, is skipped. Returns None when
    no offer is acceptable or the header does not parse; raises ValueError for invalid
    settings (server window 9..15, client window 8..15).
    """
    _check_bits("server_max_window_bits", server_max_window_bits, 9)
    _check_bits("client_max_window_bits", client_max_window_bits, 8)
    try:
        offers = parse_extensions(header_values)
    except ValueError:
        return None
    for name, params in offers:
        if name != EXTENSION_NAME:
            continue
        try:
            snct, cnct, sbits, cbits = _read_params(params, True)
        except ValueError:
            continue
        if sbits == 8:
            # zlib cannot compress with a 256-byte window (see Deflater).
            continue
        if cbits is None:
            # The client did not say it understands client_max_window_bits: the response must
            # not carry it, and the client may use the full window.
            cbits = 15
        elif cbits is True:
            cbits = client_max_window_bits
        else:
            cbits = min(cbits, client_max_window_bits)
        return DeflateParams(
            server_no_context_takeover=snct or bool(server_no_context_takeover),
            client_no_context_takeover=cnct or bool(client_no_context_takeover),
            server_max_window_bits=(server_max_window_bits if sbits is None
                                    else min(sbits, server_max_window_bits)),
            client_max_window_bits=cbits,
            echo_server_max_window_bits=sbits is not None,
        )
    return None


def build_offer(
    *,
    client_no_context_takeover: bool = False,
    server_no_context_takeover: bool = False,
    client_max_window_bits: int | bool | None = True,
    server_max_window_bits: int | None = None,
) -> str:
    """The ``Sec-WebSocket-Extensions`` value a client sends to offer permessage-deflate.

    ``client_max_window_bits``: True offers the valueless parameter (the server may then
    choose a window), an int 9..15 a limit, None or False nothing. ``server_max_window_bits``:
    None, or an int 8..15 the server must stay within. Raises ValueError otherwise.
    """
    parts = [EXTENSION_NAME]
    if server_no_context_takeover:
        parts.append("server_no_context_takeover")
    if client_no_context_takeover:
        parts.append("client_no_context_takeover")
    if server_max_window_bits is not None:
        _check_bits("server_max_window_bits", server_max_window_bits, 8)
        parts.append(f"server_max_window_bits={server_max_window_bits}")
    if client_max_window_bits is True:
        parts.append("client_max_window_bits")
    elif client_max_window_bits is not None and client_max_window_bits is not False:
        _check_bits("client_max_window_bits", client_max_window_bits, 9)
        parts.append(f"client_max_window_bits={client_max_window_bits}")
    return "; ".join(parts)


def _accept_one(
    response: tuple[bool, bool, int | None, int | bool | None],
    offer: list[tuple[str, str | None]],
) -> DeflateParams:
    snct, cnct, sbits, cbits = response
    o_snct, o_cnct, o_sbits, o_cbits = _read_params(offer, True)
    if o_snct and not snct:
        raise ValueError("server_no_context_takeover was requested but not granted")
    if o_sbits is not None:
        if sbits is None:
            raise ValueError("server_max_window_bits was requested but not granted")
        if sbits > o_sbits:
            raise ValueError(f"server_max_window_bits={sbits} exceeds the requested {o_sbits}")
    if cbits is None:
        # Without a response value the client keeps its own hint, or the full window.
        cbits = o_cbits if o_cbits is not None and o_cbits is not True else 15
    elif o_cbits is None:
        raise ValueError("client_max_window_bits was not offered")
    elif o_cbits is not True and cbits > o_cbits:
        raise ValueError(f"client_max_window_bits={cbits} exceeds the offered {o_cbits}")
    if cbits == 8:
        raise ValueError("client_max_window_bits=8 cannot be honoured by zlib")
    return DeflateParams(
        server_no_context_takeover=snct,
        client_no_context_takeover=cnct or o_cnct,
        server_max_window_bits=15 if sbits is None else sbits,
        client_max_window_bits=int(cbits),
        echo_server_max_window_bits=sbits is not None,
    )


def accept_response(header_value: str | Iterable[str], *, offered: str) -> DeflateParams:
    """Check a server's ``Sec-WebSocket-Extensions`` response against the client's offer.

    ``offered`` is the value :func:`build_offer` returned (several comma-separated offers are
    allowed; the response must fit one of them). Returns the agreed :class:`DeflateParams`;
    raises ValueError when the response is malformed, names anything but one
    permessage-deflate, or grants what was not offered (the client must then fail the
    connection, RFC 7692 section 5).
    """
    response = parse_extensions(header_value)
    if len(response) != 1 or response[0][0] != EXTENSION_NAME:
        raise ValueError(f"expected one {EXTENSION_NAME} in the response, got {header_value!r}")
    granted = _read_params(response[0][1], False)
    offers = [params for name, params in parse_extensions(offered) if name == EXTENSION_NAME]
    if not offers:
        raise ValueError(f"{EXTENSION_NAME} was not offered")
    error: ValueError | None = None
    for params in offers:
        try:
            return _accept_one(granted, params)
        except ValueError as exc:
            if error is None:
                error = exc
    assert error is not None
    raise error
