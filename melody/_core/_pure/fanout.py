"""The broadcast loop: one message to many connections, framed once.

The pure-Python twin of the compiled ``fanout`` module. A server frame is never masked, so the
frame built for the first recipient is the very bytes object handed to every other one. With
permessage-deflate the same holds for connections that agreed to ``server_no_context_takeover``:
one compressed frame per window size. Only connections with context takeover need a compression
each.

Recipients live in a ``Group``: a list of connections with an index for O(1) add and remove
(swap with the last). Nothing here waits: a recipient whose queue is full has the message
dropped (or its oldest queued message, or is closed, by the hub's overflow policy) and is
returned to the caller, which reports it; a slow reader never slows the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from melody._core._pure._buffer import simple_view
from melody._core._pure.connection import ADMIT_OK, ADMIT_REFUSED, SEND_CLOSED, STATE_OPEN
from melody._core._pure.frames import FIN_BIT, OP_BINARY, OP_TEXT, build_frame
from melody._core._pure.protocol import ProtocolCore

__all__ = ["Group", "broadcast_binary", "broadcast_text"]


def _not_a_protocol(obj: object) -> TypeError:
    kind = type(obj)
    return TypeError(f"Cannot convert {kind.__module__}.{kind.__qualname__} to "
                     f"{ProtocolCore.__module__}.ProtocolCore")


def _send_all(
    protocols: list[Any],
    opcode: int,
    data: Any,
    exclude: Any,
    predicate: Callable[[Any], object] | None,
    recipients: list[Any] | None,
) -> tuple[int, list[Any] | None]:
    plain: bytes | None = None
    shared: dict[int, bytes] | None = None
    dropped: list[Any] | None = None
    sent = 0
    length = len(data)
    # The length is read on every step: the predicate is user code and may change the list
    # (the callers copy it then, but a list that shrank must never be read past its end).
    i = 0
    while i < len(protocols):
        p = protocols[i]
        i += 1
        if not isinstance(p, ProtocolCore):
            raise _not_a_protocol(p)
        if p.state != STATE_OPEN or p is exclude:
            continue
        if predicate is not None and not predicate(p.session):
            continue
        admitted = p.admit()
        if admitted != ADMIT_OK:
            if dropped is None:
                dropped = []
            dropped.append(p)
            if admitted == ADMIT_REFUSED:
                continue
        deflater = p.deflater
        if deflater is None or length < p.compress_min_size:
            if plain is None:
                plain = build_frame(FIN_BIT | opcode, data, False)
            frame = plain
        elif deflater.no_context_takeover:
            if shared is None:
                shared = {}
            cached = shared.get(deflater.window_bits)
            if cached is None:
                cached = shared[deflater.window_bits] = p.frame_message(opcode, data)
            frame = cached
        else:
            frame = p.frame_message(opcode, data)
        if p.send_shared(frame) != SEND_CLOSED:
            sent += 1
            if recipients is not None:
                recipients.append(p)
    return sent, dropped


def _check_list(value: Any, name: str, none_ok: bool) -> None:
    if type(value) is not list and not (none_ok and value is None):
        raise TypeError(f"Argument '{name}' has incorrect type (expected list, "
                        f"got {type(value).__name__})")


def _send_text(
    protocols: list[Any],
    text: str,
    exclude: Any,
    predicate: Callable[[Any], object] | None,
    recipients: list[Any] | None,
) -> tuple[int, list[Any] | None]:
    if type(text) is not str:
        raise TypeError(f"Argument 'text' has incorrect type (expected str, "
                        f"got {type(text).__name__})")
    _check_list(recipients, "recipients", True)
    return _send_all(protocols, OP_TEXT, text.encode("utf-8"), exclude, predicate, recipients)


def _send_binary(
    protocols: list[Any],
    data: Any,
    exclude: Any,
    predicate: Callable[[Any], object] | None,
    recipients: list[Any] | None,
) -> tuple[int, list[Any] | None]:
    _check_list(recipients, "recipients", True)
    if type(data) is bytes:
        return _send_all(protocols, OP_BINARY, data, exclude, predicate, recipients)
    view = simple_view(data)
    try:
        return _send_all(protocols, OP_BINARY, view, exclude, predicate, recipients)
    finally:
        view.release()


def broadcast_text(
    protocols: list[Any],
    text: str,
    exclude: Any = None,
    predicate: Callable[[Any], object] | None = None,
    recipients: list[Any] | None = None,
) -> tuple[int, list[Any] | None]:
    """Send ``text`` to every open protocol in the list ``protocols``.

    ``exclude`` is one protocol to skip; ``predicate(session)`` filters. Returns
    ``(sent, dropped)``: how many took the frame, and None or the protocols whose queue
    overflowed (the message, or their oldest one, was dropped). When ``recipients`` is a list,
    the protocols that took the frame are appended to it.
    """
    _check_list(protocols, "protocols", False)
    if predicate is not None:
        protocols = list(protocols)  # the filter is user code: it may change the list
    return _send_text(protocols, text, exclude, predicate, recipients)


def broadcast_binary(
    protocols: list[Any],
    data: Any,
    exclude: Any = None,
    predicate: Callable[[Any], object] | None = None,
    recipients: list[Any] | None = None,
) -> tuple[int, list[Any] | None]:
    """``broadcast_text`` for a binary message (any bytes-like object)."""
    _check_list(protocols, "protocols", False)
    if predicate is not None:
        protocols = list(protocols)
    return _send_binary(protocols, data, exclude, predicate, recipients)


class Group:
    """A set of connections kept as a list: O(1) add and remove, one loop to send to all.

    The hub has one for all its sessions and one per topic. Iterating gives a snapshot.
    """

    __slots__ = ("_index", "_members")

    def __init__(self) -> None:
        self._members: list[Any] = []
        self._index: dict[Any, int] = {}

    @staticmethod
    def _check(p: Any) -> None:
        if not isinstance(p, ProtocolCore):
            raise TypeError(f"Argument 'p' has incorrect type (expected "
                            f"{ProtocolCore.__module__}.ProtocolCore, got {type(p).__name__})")

    def add(self, p: Any) -> bool:
        """Add ``p``; False if it was already a member."""
        self._check(p)
        if p in self._index:
            return False
        self._index[p] = len(self._members)
        self._members.append(p)
        return True

    def discard(self, p: Any) -> bool:
        """Remove ``p`` (the last member takes its place); False if it was not a member."""
        self._check(p)
        at = self._index.pop(p, None)
        if at is None:
            return False
        last = self._members.pop()
        if last is not p:
            self._members[at] = last
            self._index[last] = at
        return True

    def __contains__(self, p: object) -> bool:
        return p in self._index

    def __len__(self) -> int:
        return len(self._members)

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._members))

    def members(self) -> list[Any]:
        """A snapshot list of the members."""
        return list(self._members)

    def broadcast_text(
        self,
        text: str,
        exclude: Any = None,
        predicate: Callable[[Any], object] | None = None,
        recipients: list[Any] | None = None,
    ) -> tuple[int, list[Any] | None]:
        """:func:`broadcast_text` to the members."""
        members = self._members if predicate is None else list(self._members)
        return _send_text(members, text, exclude, predicate, recipients)

    def broadcast_binary(
        self,
        data: Any,
        exclude: Any = None,
        predicate: Callable[[Any], object] | None = None,
        recipients: list[Any] | None = None,
    ) -> tuple[int, list[Any] | None]:
        """:func:`broadcast_binary` to the members."""
        members = self._members if predicate is None else list(self._members)
        return _send_binary(members, data, exclude, predicate, recipients)
