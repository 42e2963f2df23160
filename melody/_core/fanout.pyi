"""The broadcast loop: one message to many connections, framed once.

A server frame is never masked, so the frame built for the first recipient is the very bytes
object written to every other one; with permessage-deflate and no context takeover, one
compressed frame per window size. Nothing here waits for a slow reader.
"""

import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from melody._core.protocol import ProtocolCore

if sys.version_info >= (3, 12):
    from collections.abc import Buffer
else:
    from typing_extensions import Buffer

_P = TypeVar("_P", bound=ProtocolCore)

def broadcast_text(
    protocols: Iterable[_P],
    text: str,
    exclude: ProtocolCore | None = None,
    predicate: Callable[[Any], object] | None = None,
    recipients: list[_P] | None = None,
) -> tuple[int, list[_P] | None]:
    """Send ``text`` to every open protocol in ``protocols``.

    Pass a snapshot (a list), not a collection a handler may change meanwhile. ``exclude`` is
    one protocol to skip; ``predicate(session)`` picks the recipients. Returns ``(sent,
    dropped)``: how many took the frame (written or queued), and None or the protocols whose
    queue was full (the message was dropped for them, and counted in their ``dropped``).
    When ``recipients`` is a list, the protocols that took the frame are appended to it.
    Costs one frame build in all (one compression per window size, or one per recipient
    with context takeover). Raises TypeError for an element that is not a ProtocolCore.
    """

def broadcast_binary(
    protocols: Iterable[_P],
    data: Buffer,
    exclude: ProtocolCore | None = None,
    predicate: Callable[[Any], object] | None = None,
    recipients: list[_P] | None = None,
) -> tuple[int, list[_P] | None]:
    """:func:`broadcast_text` for a binary message (any C-contiguous bytes-like object)."""
