"""The frames :class:`~melody.backplane.local.WorkerBus` peers exchange over a Unix socket.

Sans-I/O: bytes in (:class:`FrameDecoder`), ``(kind, body)`` out; the encoders build the bytes.
Every frame is a 4-byte big-endian length (of what follows), one kind byte, then the body:

=========  ===============================================================================
HELLO      slot (2 bytes), node id (16 bytes), protocol version (1 byte): first on a link
MESSAGE    flags (1 byte: bit 0 binary, bit 1 hub-wide), topic length (2 bytes), topic
           (UTF-8, absent when hub-wide), payload
SUBSCRIBE  topic: the sender has subscribers for it now (interest)
UNSUBSCRIBE topic: the sender's last subscriber left
USER       a user envelope (``melody.backplane.base.encode_user_envelope`` and
           ``encode_disconnect_envelope``)
ASK        request id (4 bytes), what (1 byte: 1 topic_len, 2 presence, 3 history, 4 sync),
           since and limit (8 bytes each, signed; -1 for none: history only), topic
ANSWER     request id (4 bytes), the answer (topic_len: the count in ASCII; presence: a JSON
           object session id -> info JSON; history: JSON ``[offset, epoch, [[offset, data],
           ...]]``; sync: empty)
APPEND     to a topic's owner: history_size (4 bytes), history_ttl (8 bytes, a double; NaN
           for none), topic length (2 bytes), topic, data (JSON text)
STREAM     from a topic's owner: offset (8 bytes), topic length (2 bytes), topic, data
=========  ===============================================================================

A message frame is built as a head (length, kind, flags, topic) and the payload apart, so that
the same two objects are written to every interested peer: the payload is never copied per
peer.
"""

from __future__ import annotations

import math
import struct

from melody.backplane.base import NODE_ID_SIZE

__all__ = ["FrameDecoder", "FrameError", "HELLO", "MESSAGE", "SUBSCRIBE", "UNSUBSCRIBE",
           "USER", "ASK", "ANSWER", "APPEND", "STREAM", "ASK_TOPIC_LEN", "ASK_PRESENCE",
           "ASK_HISTORY", "ASK_SYNC", "VERSION", "hello", "message_head", "interest", "user",
           "ask", "answer", "append", "stream", "parse_hello", "parse_message", "parse_ask",
           "parse_answer", "parse_append", "parse_stream"]

HELLO = 1
MESSAGE = 2
SUBSCRIBE = 3
UNSUBSCRIBE = 4
USER = 5
ASK = 6
ANSWER = 7
APPEND = 8
STREAM = 9
_KINDS = frozenset((HELLO, MESSAGE, SUBSCRIBE, UNSUBSCRIBE, USER, ASK, ANSWER, APPEND, STREAM))

ASK_TOPIC_LEN = 1
ASK_PRESENCE = 2
ASK_HISTORY = 3
ASK_SYNC = 4
_ASKS = (ASK_TOPIC_LEN, ASK_PRESENCE, ASK_HISTORY, ASK_SYNC)
_ASK_HEAD = struct.Struct(">IBqq")
_APPEND_HEAD = struct.Struct(">IdH")
_STREAM_HEAD = struct.Struct(">QH")

#: The protocol version a HELLO carries; a peer speaking another one is refused.
VERSION = 1
_FLAG_BINARY = 0x01
_FLAG_ALL = 0x02
_MAX_TOPIC_BYTES = 0xFFFF
_MAX_REQUEST_ID = 0xFFFFFFFF


class FrameError(ValueError):
    """A peer sent bytes that are not a frame of this protocol (the link is closed)."""


def _frame(kind: int, body: bytes) -> bytes:
    return (len(body) + 1).to_bytes(4, "big") + bytes((kind,)) + body


def _topic_bytes(topic: str) -> bytes:
    data = topic.encode("utf-8", "surrogatepass")
    if len(data) > _MAX_TOPIC_BYTES:
        raise ValueError(f"topic over {_MAX_TOPIC_BYTES} bytes")
    return data


def hello(slot: int, node_id: bytes) -> bytes:
    """The first frame on a link: who this end is."""
    return _frame(HELLO, slot.to_bytes(2, "big") + node_id + bytes((VERSION,)))


def message_head(topic: str | None, binary: bool, size: int) -> bytes:
    """The head of a MESSAGE frame whose payload (``size`` bytes) follows it on the wire."""
    flags = (_FLAG_BINARY if binary else 0) | (_FLAG_ALL if topic is None else 0)
    name = b"" if topic is None else _topic_bytes(topic)
    return ((4 + len(name) + size).to_bytes(4, "big") + bytes((MESSAGE, flags))
            + len(name).to_bytes(2, "big") + name)


def interest(topic: str, wanted: bool) -> bytes:
    """A SUBSCRIBE (``wanted``) or UNSUBSCRIBE frame."""
    return _frame(SUBSCRIBE if wanted else UNSUBSCRIBE, _topic_bytes(topic))


def user(envelope: bytes) -> bytes:
    """A USER frame around a user envelope."""
    return _frame(USER, envelope)


def ask(request: int, what: int, topic: str, since: int | None = None,
        limit: int | None = None) -> bytes:
    """An ASK frame (``what``: one of the ``ASK_*``; ``since``/``limit`` for history)."""
    return _frame(ASK, _ASK_HEAD.pack(request, what, -1 if since is None else since,
                                      -1 if limit is None else limit) + _topic_bytes(topic))


def append(topic: str, size: int, ttl: float | None, data: str) -> bytes:
    """An APPEND frame: a publication for the owner of ``topic``'s history to number."""
    return _frame(APPEND, _APPEND_HEAD.pack(size, math.nan if ttl is None else ttl,
                                            len(name := _topic_bytes(topic)))
                  + name + data.encode("utf-8"))


def stream(topic: str, offset: int, data: str) -> bytes:
    """A STREAM frame: publication ``offset`` of ``topic``, numbered by its owner."""
    name = _topic_bytes(topic)
    return _frame(STREAM, _STREAM_HEAD.pack(offset, len(name)) + name + data.encode("utf-8"))


def parse_append(body: bytes) -> tuple[str, int, float | None, str]:
    """``(topic, history_size, history_ttl, data)`` of an APPEND."""
    head = _APPEND_HEAD.size
    if len(body) < head:
        raise FrameError("APPEND too short")
    size, ttl, length = _APPEND_HEAD.unpack_from(body)
    if len(body) < head + length:
        raise FrameError("APPEND shorter than its topic")
    topic = body[head:head + length].decode("utf-8", "surrogatepass")
    return topic, size, None if math.isnan(ttl) else ttl, body[head + length:].decode("utf-8")


def parse_stream(body: bytes) -> tuple[str, int, str]:
    """``(topic, offset, data)`` of a STREAM."""
    head = _STREAM_HEAD.size
    if len(body) < head:
        raise FrameError("STREAM too short")
    offset, length = _STREAM_HEAD.unpack_from(body)
    if len(body) < head + length:
        raise FrameError("STREAM shorter than its topic")
    topic = body[head:head + length].decode("utf-8", "surrogatepass")
    return topic, offset, body[head + length:].decode("utf-8")


def answer(request: int, data: bytes) -> bytes:
    """The ANSWER to ASK ``request``."""
    return _frame(ANSWER, request.to_bytes(4, "big") + data)


def parse_hello(body: bytes) -> tuple[int, bytes]:
    """``(slot, node_id)``; FrameError for a short body or another protocol version."""
    if len(body) != 2 + NODE_ID_SIZE + 1:
        raise FrameError("HELLO of the wrong size")
    if body[-1] != VERSION:
        raise FrameError(f"peer speaks bus protocol {body[-1]}, this one {VERSION}")
    return int.from_bytes(body[:2], "big"), body[2:2 + NODE_ID_SIZE]


def parse_message(body: bytes) -> tuple[str | None, bool, bytes]:
    """``(topic, binary, payload)`` of a MESSAGE (topic None: hub-wide)."""
    if len(body) < 3:
        raise FrameError("MESSAGE too short")
    flags = body[0]
    if flags & ~(_FLAG_BINARY | _FLAG_ALL):
        raise FrameError(f"MESSAGE with unknown flags {flags:#x}")
    size = int.from_bytes(body[1:3], "big")
    if len(body) < 3 + size:
        raise FrameError("MESSAGE shorter than its topic")
    topic = None if flags & _FLAG_ALL else body[3:3 + size].decode("utf-8", "surrogatepass")
    return topic, bool(flags & _FLAG_BINARY), body[3 + size:]


def parse_ask(body: bytes) -> tuple[int, int, str, int | None, int | None]:
    """``(request id, what, topic, since, limit)`` of an ASK."""
    head = _ASK_HEAD.size
    if len(body) < head or body[4] not in _ASKS:
        raise FrameError("malformed ASK")
    request, what, since, limit = _ASK_HEAD.unpack_from(body)
    return (request, what, body[head:].decode("utf-8", "surrogatepass"),
            None if since < 0 else since, None if limit < 0 else limit)


def parse_answer(body: bytes) -> tuple[int, bytes]:
    """``(request id, data)`` of an ANSWER."""
    if len(body) < 4:
        raise FrameError("ANSWER too short")
    return int.from_bytes(body[:4], "big"), body[4:]


class FrameDecoder:
    """Split a byte stream into frames: :meth:`feed` bytes as they arrive, get the complete
    frames back as ``(kind, body)``; a partial frame waits for the next bytes. FrameError for
    an unknown kind or a frame over ``max_frame`` bytes (the stream cannot be resynchronised:
    the caller closes the link)."""

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes held of a frame not yet complete."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """The frames ``data`` completes, in order."""
        buffer = self._buffer
        if buffer:
            buffer += data
            view: bytes | bytearray = buffer
        else:
            view = data  # the common case: whole frames in one read, nothing to join
        frames: list[tuple[int, bytes]] = []
        end = len(view)
        pos = 0
        while end - pos >= 5:
            size = int.from_bytes(view[pos:pos + 4], "big")
            if size < 1 or size > self.max_frame:
                raise FrameError(f"frame of {size} bytes (at most {self.max_frame})")
            if end - pos - 4 < size:
                break
            kind = view[pos + 4]
            if kind not in _KINDS:
                raise FrameError(f"unknown frame kind {kind}")
            frames.append((kind, bytes(view[pos + 5:pos + 4 + size])))
            pos += 4 + size
        if buffer:
            del buffer[:pos]
        elif pos < end:
            buffer += view[pos:]
        return frames
