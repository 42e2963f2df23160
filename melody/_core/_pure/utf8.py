"""Incremental UTF-8 validation (RFC 3629) for text messages that arrive in pieces.

The pure-Python twin of the compiled ``utf8`` module: the same verdicts at the same byte. The
work is CPython's own strict decoder run incrementally (``codecs.utf_8_decode`` with
``final=False``), which judges every byte it is given except one case: it holds back a piece
ending in ``ED A0``..``ED BF`` (the start of an encoded surrogate, never valid) so that an
error handler could see the whole sequence. RFC 6455 section 8.1 wants that failed at once, as
the compiled validator does, so that case is judged here.
"""

from __future__ import annotations

import codecs
from typing import Any

from melody._core._pure._buffer import simple_view

__all__ = ["Utf8Validator", "validate"]

_decode = codecs.utf_8_decode


class Utf8Validator:
    """Validate one text message fed in pieces; ``reset`` before the next message.

    ``feed`` returns False from the first byte that cannot continue valid UTF-8 on, and
    ``complete`` says whether the text fed so far ends on a code point boundary.
    """

    __slots__ = ("_consumed", "_open", "_rejected")

    def __init__(self) -> None:
        # The bytes of a code point still open at the end of the last piece (at most 3).
        self._open = b""
        self._rejected = False
        self._consumed = 0

    def feed(self, data: Any) -> bool:
        """Validate the next piece of the message (any C-contiguous bytes-like object).

        Returns False once the text can no longer be valid UTF-8, and keeps returning False
        until ``reset``. A piece may end inside a code point. Raises ``TypeError`` if ``data``
        is not bytes-like.
        """
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
        """Return True when the text fed so far is complete, valid UTF-8.

        False while a code point is still open or after the text was found invalid.
        """
        return not self._rejected and not self._open

    def reset(self) -> None:
        """Forget everything fed so far, ready for the next message."""
        self._open = b""
        self._rejected = False
        self._consumed = 0

    @property
    def consumed(self) -> int:
        """Bytes fed and accepted since the last reset.

        Once the text is invalid this is the index (from the start of the message) of the
        first byte that made it so, for error reports.
        """
        return self._consumed


def validate(data: Any) -> bool:
    """Return True if ``data`` (any C-contiguous bytes-like object) is complete, valid UTF-8.

    Accepts exactly what strict ``bytes.decode("utf-8")`` accepts. Raises ``TypeError`` if
    ``data`` is not bytes-like.
    """
    if type(data) is not bytes:
        data = simple_view(data)
    try:
        _decode(data, "strict", True)
    except UnicodeDecodeError:
        return False
    return True
