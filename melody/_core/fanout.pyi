"""The broadcast loop: one message to many connections, framed once.

A server frame is never masked, so the frame built for the first recipient is the very bytes
object written to every other one; with permessage-deflate and no context takeover, one
compressed frame per window size. Recipients live in ``Group``s walked in C. Nothing here waits
for a slow reader.
"""

import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from typing_extensions import disjoint_base

from melody._core.protocol import ProtocolCore

if sys.version_info >= (3, 12):
    from collections.abc import Buffer
else:
    from typing_extensions import Buffer

_P = TypeVar("_P", bound=ProtocolCore)

def broadcast_text(
    protocols: list[_P],
    text: str,
    exclude: ProtocolCore | None = None,
    predicate: Callable[[Any], object] | None = None,
    recipients: list[_P] | None = None,
) -> tuple[int, list[_P] | None]:
    """Send ``text`` to every open protocol in the list ``protocols``.

    ``exclude`` is one protocol to skip; ``predicate(session)`` picks the recipients (the list
    is then copied first, as the predicate is user code). Returns ``(sent, dropped)``: how many
    took the frame (written or queued), and None or the protocols whose queue overflowed (the
    message, or their oldest queued one, was dropped, or the session closed, per the
    overflow policy). Costs one frame build in all (one compression per window size, or one
    per recipient with context takeover). When ``recipients`` is a list, the protocols that
    took the frame are appended to it. Raises TypeError for an element that is not a
    ProtocolCore.
    """

def broadcast_binary(
    protocols: list[_P],
    data: Buffer,
    exclude: ProtocolCore | None = None,
    predicate: Callable[[Any], object] | None = None,
    recipients: list[_P] | None = None,
) -> tuple[int, list[_P] | None]:
    """:func:`broadcast_text` for a binary message (any C-contiguous bytes-like object)."""

@disjoint_base
class Group:
    """A set of connections kept as an array: O(1) add and remove, a C loop to send to all."""

    def add(self, p: ProtocolCore) -> bool:
        """Add ``p``; False if it was already a member."""
    def discard(self, p: ProtocolCore) -> bool:
        """Remove ``p``; False if it was not a member."""
    def __contains__(self, p: object, /) -> bool: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Any]:
        """Iterate over a snapshot of the members."""
    def members(self) -> list[Any]:
        """A snapshot list of the members."""
    def broadcast_text(
        self,
        text: str,
        exclude: ProtocolCore | None = None,
        predicate: Callable[[Any], object] | None = None,
        recipients: list[Any] | None = None,
    ) -> tuple[int, list[Any] | None]:
        """:func:`broadcast_text` to the members."""
    def broadcast_binary(
        self,
        data: Buffer,
        exclude: ProtocolCore | None = None,
        predicate: Callable[[Any], object] | None = None,
        recipients: list[Any] | None = None,
    ) -> tuple[int, list[Any] | None]:
        """:func:`broadcast_binary` to the members."""
