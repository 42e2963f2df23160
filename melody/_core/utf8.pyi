"""Incremental UTF-8 validation (RFC 3629) for text messages that arrive in pieces."""

import sys

if sys.version_info >= (3, 12):
    from collections.abc import Buffer
else:
    from typing_extensions import Buffer

from typing_extensions import disjoint_base

@disjoint_base
class Utf8Validator:
    """Validate one text message fed in pieces; ``reset`` before the next message."""

    def feed_region(self, buf: bytearray, start: int, length: int) -> bool:
        """``feed`` for ``buf[start:start + length]`` (ValueError if outside ``buf``)."""

    def feed(self, data: Buffer) -> bool:
        """Validate the next piece; False from the first byte that cannot be valid UTF-8 on."""

    def complete(self) -> bool:
        """True when the text fed so far is complete, valid UTF-8."""

    def reset(self) -> None:
        """Forget everything fed so far, ready for the next message."""

    @property
    def consumed(self) -> int:
        """Bytes accepted since the last reset; once invalid, the index of the first bad byte."""

def validate(data: Buffer) -> bool:
    """True if ``data`` is complete, valid UTF-8 (what strict ``bytes.decode`` accepts)."""

def decode_region(buf: bytearray, start: int, length: int) -> str:
    """``buf[start:start + length]`` as strict UTF-8 (UnicodeDecodeError if invalid)."""
