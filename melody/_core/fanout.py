"""The broadcast loop: one message to many connections, framed once.

A server frame is never masked, so the frame built for the first recipient is the very bytes
object handed to every other one. With permessage-deflate the same holds for connections that
agreed to ``server_no_context_takeover`` (each message is compressed on its own): one compressed
frame per window size. Only connections with context takeover need a compression each.

Recipients live in a ``Group``: an array of connections with an index for O(1) add and remove
(swap with the last). The hub keeps one group for all its sessions and one per topic, so a
broadcast or a publish walks exactly its recipients, compiled to a C loop with no Python call
per recipient unless a Python filter was given.

Each recipient gets ``send_shared(frame, opcode, payload)``: the shared frame for a socket, and
the message itself for a consumer that is not one (a ``ForeignConnection``: the ASGI adapter
hands the payload to its ASGI server as it is, without parsing the frame back).

Nothing here waits: a recipient whose queue is full has the message dropped (or its oldest
queued message, or is closed, by the hub's overflow policy) and is returned to the caller,
which reports it (Go melody's ErrMessageBufferFull); a slow reader never slows the others.

One source for both builds: ``fanout.pxd`` types the loop for the compiled module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from .constants import ADMIT_OK, ADMIT_REFUSED, FIN_BIT, OP_BINARY, OP_TEXT, SEND_CLOSED, STATE_OPEN
from .frames import build_frame
from .protocol import ProtocolCore
from .views import flat

__all__ = ["Group", "broadcast_binary", "broadcast_text"]

Predicate = Callable[[Any], object]


def _send_all(protocols: list[Any], opcode: int, data: Any, payload: Any, exclude: Any,
              predicate: Predicate | None, recipients: list[Any] | None
              ) -> tuple[int, list[Any] | None]:
    # ``data``: the message's bytes (what frames are built from); ``payload``: the message as
    # the caller gave it (str or bytes-like), for recipients that take messages, not frames.
    plain: bytes | None = None
    shared: dict[int, bytes] | None = None
    dropped: list[Any] | None = None
    frame: bytes | None
    sent = 0
    length = len(data)
    # The size is read on every step: nothing in this loop runs user code when no predicate is
    # given, but a list that shrank must never be read past its end.
    i = 0
    while i < len(protocols):
        p = protocols[i]
        i += 1
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
            frame = shared.get(deflater.window_bits)
            if frame is None:
                frame = p.frame_message(opcode, data)
                shared[deflater.window_bits] = frame
        else:
            frame = p.frame_message(opcode, data)
        if p.send_shared(frame, opcode, payload) != SEND_CLOSED:
            sent += 1
            if recipients is not None:
                recipients.append(p)
    return sent, dropped


def _send_text(protocols: list[Any], text: str, exclude: Any, predicate: Predicate | None,
               recipients: list[Any] | None) -> tuple[int, list[Any] | None]:
    if type(text) is not str:
        raise TypeError(f"Argument 'text' has incorrect type (expected str, "
                        f"got {type(text).__name__})")
    return _send_all(protocols, OP_TEXT, text.encode("utf-8"), text, exclude, predicate,
                     recipients)


def _send_binary(protocols: list[Any], data: Any, exclude: Any, predicate: Predicate | None,
                 recipients: list[Any] | None) -> tuple[int, list[Any] | None]:
    return _send_all(protocols, OP_BINARY, data if type(data) is bytes else flat(data), data,
                     exclude, predicate, recipients)


def _check_list(value: Any) -> None:
    if type(value) is not list:
        raise TypeError(f"Argument 'protocols' has incorrect type (expected list, "
                        f"got {type(value).__name__})")


def broadcast_text(protocols: list[Any], text: str, exclude: Any = None,
                   predicate: Predicate | None = None, recipients: list[Any] | None = None
                   ) -> tuple[int, list[Any] | None]:
    """Send ``text`` to every open protocol in the list ``protocols``.

    ``exclude`` is one protocol to skip; ``predicate(session)`` filters. Returns
    ``(sent, dropped)``: how many took the frame, and None or the protocols whose queue
    overflowed (the message, or their oldest one, was dropped). When ``recipients`` is a list,
    the protocols that took the frame are appended to it.
    """
    _check_list(protocols)
    if predicate is not None:
        protocols = list(protocols)  # the filter is user code: it may change the list
    return _send_text(protocols, text, exclude, predicate, recipients)


def broadcast_binary(protocols: list[Any], data: Any, exclude: Any = None,
                     predicate: Predicate | None = None, recipients: list[Any] | None = None
                     ) -> tuple[int, list[Any] | None]:
    """``broadcast_text`` for a binary message (any bytes-like object)."""
    _check_list(protocols)
    if predicate is not None:
        protocols = list(protocols)
    return _send_binary(protocols, data, exclude, predicate, recipients)


def _check_protocol(p: Any) -> None:
    if not isinstance(p, ProtocolCore):
        raise TypeError(f"Argument 'p' has incorrect type (expected "
                        f"{ProtocolCore.__module__}.ProtocolCore, got {type(p).__name__})")


class Group:
    """A set of connections kept as an array: O(1) add and remove, one loop to send to all.

    The hub has one for all its sessions and one per topic. Iterating gives a snapshot.
    """

    def __init__(self) -> None:
        self._members: list[Any] = []
        self._index: dict[Any, int] = {}

    def add(self, p: Any) -> bool:
        """Add ``p``; False if it was already a member."""
        _check_protocol(p)
        if p in self._index:
            return False
        self._index[p] = len(self._members)
        self._members.append(p)
        return True

    def discard(self, p: Any) -> bool:
        """Remove ``p`` (the last member takes its place); False if it was not a member."""
        _check_protocol(p)
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

    def broadcast_text(self, text: str, exclude: Any = None, predicate: Predicate | None = None,
                       recipients: list[Any] | None = None) -> tuple[int, list[Any] | None]:
        """:func:`broadcast_text` to the members."""
        members = self._members if predicate is None else list(self._members)
        return _send_text(members, text, exclude, predicate, recipients)

    def broadcast_binary(self, data: Any, exclude: Any = None, predicate: Predicate | None = None,
                         recipients: list[Any] | None = None) -> tuple[int, list[Any] | None]:
        """:func:`broadcast_binary` to the members."""
        members = self._members if predicate is None else list(self._members)
        return _send_binary(members, data, exclude, predicate, recipients)
