"""The interpreted version of the ``utf8`` kernel (``utf8.pyx``); ``utf8.pyi`` documents it.

The work is CPython's own strict decoder run incrementally (``codecs.utf_8_decode`` with
``final=False``), which judges every byte it is given except one case: it holds back a piece
ending in ``ED A0``..``ED BF`` (the start of an encoded surrogate, never valid) so that an
error handler could see the whole sequence. RFC 6455 section 8.1 wants that failed at once, as
the compiled validator does, so that case is judged here.
"""

from __future__ import annotations

import codecs
from typing import Any

from .views import flat as simple_view

__all__ = ["Utf8Validator", "decode_region", "validate"]

_decode = codecs.utf_8_decode


class Utf8Validator:
    """Validate one text message fed in pieces; ``reset`` before the next message."""

    __slots__ = ("_consumed", "_open", "_rejected")

    def __init__(self) -> None:
        # The bytes of a code point still open at the end of the last piece (at most 3).
        self._open = b""
        self._rejected = False
        self._consumed = 0

    def feed_region(self, buf: bytearray, start: int, length: int) -> bool:
        """``feed`` for ``buf[start:start + length]``."""
        if start < 0 or length < 0 or length > len(buf) - start:
            raise ValueError(f"region [{start}, {start}+{length}) outside a buffer of "
                             f"{len(buf)} bytes")
        with memoryview(buf) as view:
            return self.feed(bytes(view[start:start + length]))

    def feed(self, data: Any) -> bool:
        """Validate the next piece of the message (any C-contiguous bytes-like object)."""
        if type(data) is not bytes:
            data = simple_view(data)
        if self._rejected:
            return False
        held = self._open
        text = held + data if held else data
        try:
            _, used = _decode(text, "strict", False)
        except UnicodeDecodeError as exc:
            # An invalid start byte is itself the culprit; otherwise [start, end) is a valid
            # prefix and the byte at ``end`` cannot continue it.
            bad = exc.start if exc.reason == "invalid start byte" else exc.end
            self._rejected = True
            self._open = b""
            self._consumed += bad - len(held)
            return False
        rest = len(text) - used
        if rest:
            tail = bytes(text[used:])
            if rest >= 2 and tail[0] == 0xED and tail[1] >= 0xA0:
                self._rejected = True
                self._open = b""
                self._consumed += used + 1 - len(held)
                return False
            self._open = tail
        elif held:
            self._open = b""
        self._consumed += len(data)
        return True

    def complete(self) -> bool:
        """Return True when the text fed so far is complete, valid UTF-8."""
        return not self._rejected and not self._open

    def reset(self) -> None:
        """Forget everything fed so far, ready for the next message."""
        self._open = b""
        self._rejected = False
        self._consumed = 0

    @property
    def consumed(self) -> int:
        """Bytes fed and accepted since the last reset."""
        return self._consumed


def validate(data: Any) -> bool:
    """Return True if ``data`` (any C-contiguous bytes-like object) is complete, valid UTF-8."""
    if type(data) is not bytes:
        data = simple_view(data)
    try:
        _decode(data, "strict", True)
    except UnicodeDecodeError:
        return False
    return True


def decode_region(buf: bytearray, start: int, length: int) -> str:
    """Interpreted ``utf8.decode_region``: a region of ``buf`` as strict UTF-8."""
    if start < 0 or length < 0 or length > len(buf) - start:
        raise ValueError(f"region [{start}, {start}+{length}) outside a buffer of "
                         f"{len(buf)} bytes")
    with memoryview(buf) as view:
        return str(view[start:start + length], "utf-8")
