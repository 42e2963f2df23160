"""Codecs: what the hub's messages are (``Melody(codec=...)``), encoded once, decoded per message.

Without a codec handlers receive ``str``/``bytes`` as they came. With one, every incoming message
(text or binary frame) is decoded before ``handle_message`` (or the router, ``hub.route``) sees
it, and ``hub.broadcast_json``/``publish_json``/``session.write_json`` encode once per call: a
broadcast to N sessions costs one encode and one frame build, not N.

Two codecs ship:

- :data:`JSON` (orjson): handlers receive decoded objects; text frames out.
- :data:`Packet`: a compact binary packet (layout in :class:`PacketCodec`), parsed and built in
  the compiled core; handlers receive :class:`PacketMessage`.

Any object with the :class:`Codec` interface plugs in (``examples/msgpack_codec.py`` is the
msgpack one). A codec decides three things:

- ``encode(obj) -> str | bytes``, called once per broadcast/write (``str`` for a text codec);
- ``decode(data) -> obj``, called once per incoming message; raises a
  :class:`melody.errors.DecodeError` (never anything else) for input it refuses;
- for routing and acks, ``envelope(msg) -> (type, id, data)`` and ``reply(request, id, ok,
  value)``. :class:`Codec`'s own implementation reads the JSON-style envelope (a mapping with
  ``type``, ``id``, ``data``), so a codec for another self-describing format (msgpack, CBOR)
  only writes ``encode`` and ``decode``.

``on_invalid`` says what a decode failure does: ``"close"`` (the default) reports the named
error to ``handle_error`` and closes the session with its code (1007, or 1002/1003); ``"reply"``
reports it and answers with an error reply (``{"id": null, "ok": false, "error": ...}``),
keeping the session open.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, Literal, NamedTuple

import orjson

from melody._core import packet as _packet
from melody.errors import (
    BadMagic,
    InvalidJSON,
    InvalidPacket,
    LengthMismatch,
    UnsupportedData,
    UnsupportedVersion,
)

__all__ = [
    "Codec",
    "JSONCodec",
    "PacketCodec",
    "PacketMessage",
    "JSON",
    "Packet",
    "FLAG_REPLY",
    "FLAG_ERROR",
]

OnInvalid = Literal["close", "reply"]

#: Packet flag: the packet answers the request with the same id.
FLAG_REPLY: int = _packet.FLAG_REPLY
#: Packet flag: a reply whose payload is an error message (UTF-8).
FLAG_ERROR: int = _packet.FLAG_ERROR


def _check_on_invalid(on_invalid: str) -> OnInvalid:
    if on_invalid not in ("close", "reply"):
        raise ValueError(f"on_invalid must be 'close' or 'reply', not {on_invalid!r}")
    return on_invalid  # type: ignore[return-value]


class Codec:
    """The codec interface, with the JSON-style envelope for routing.

    Subclasses implement :meth:`encode` and :meth:`decode` and set :attr:`binary`. The routing
    methods read and write ``{"type": ..., "id": ..., "data": ...}`` requests and
    ``{"id": ..., "ok": true, "data": ...}`` / ``{"id": ..., "ok": false, "error": ...}``
    replies, encoded with :meth:`encode`; override them for another envelope.
    """

    #: True: :meth:`encode` returns ``bytes`` sent as binary frames; False: ``str``, text.
    binary: bool = False
    #: What a message :meth:`decode` refuses does: ``"close"`` or ``"reply"`` (see module doc).
    on_invalid: OnInvalid = "close"

    def encode(self, obj: Any) -> str | bytes:
        """``obj`` as one message; called once per broadcast. Raises TypeError when ``obj``
        cannot be encoded."""
        raise NotImplementedError

    def decode(self, data: str | bytes) -> Any:
        """One received message as an object. Raises :class:`DecodeError` (a subclass naming
        what was wrong, carrying the close code), never anything else."""
        raise NotImplementedError

    def envelope(self, msg: Any) -> tuple[Hashable | None, Any, Any]:
        """``(type, id, data)`` of a decoded message; type None when it has no usable type.

        An id is kept only when it is an int or a str (anything else is no id).
        """
        if not isinstance(msg, Mapping):
            return None, None, None
        kind = msg.get("type")
        msg_id = msg.get("id")
        if msg_id is not None and (type(msg_id) is bool or not isinstance(msg_id, (int, str))):
            msg_id = None
        return (kind if isinstance(kind, str) else None), msg_id, msg.get("data")

    def reply(self, request: Any, msg_id: Any, ok: bool, value: Any) -> str | bytes:
        """The reply to ``request`` (None when the message could not be decoded): ``value`` is
        the handler's result when ``ok``, else the error text. Raises TypeError when the
        result cannot be encoded."""
        if ok:
            return self.encode({"id": msg_id, "ok": True, "data": value})
        return self.encode({"id": msg_id, "ok": False, "error": str(value)})


class JSONCodec(Codec):
    """JSON on orjson: ``str`` out (text frames), ``str`` or ``bytes`` in.

    ``option`` and ``default`` are passed to ``orjson.dumps`` (e.g. ``orjson.OPT_NAIVE_UTC``, a
    fallback for types orjson does not know). Costs one ``orjson.dumps`` and one UTF-8 decode
    per :meth:`encode` (the fan-out loop takes ``str``; for ASCII output the decode is a copy).
    """

    binary = False

    def __init__(self, *, on_invalid: OnInvalid = "close", option: int | None = None,
                 default: Any = None) -> None:
        self.on_invalid = _check_on_invalid(on_invalid)
        self.option = option
        self.default = default

    def encode(self, obj: Any) -> str:
        """``obj`` as JSON text; TypeError (``orjson.JSONEncodeError``) if not serializable."""
        return orjson.dumps(obj, self.default, self.option).decode("utf-8")

    def decode(self, data: str | bytes) -> Any:
        """Parse JSON text; :class:`InvalidJSON` (1007) for anything else."""
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise InvalidJSON(f"invalid JSON: {exc}") from None

    def __repr__(self) -> str:
        return f"JSONCodec(on_invalid={self.on_invalid!r})"


class PacketMessage(NamedTuple):
    """A decoded packet: what handlers receive with the ``Packet`` codec."""

    #: The command code (0..65535): the routing key for ``hub.route``.
    command: int
    #: The payload bytes.
    payload: bytes = b""
    #: The request id (1..2**32-1), or 0 when no reply is wanted.
    id: int = 0
    #: ``FLAG_REPLY``/``FLAG_ERROR`` bits.
    flags: int = 0


_PACKET_ERRORS: dict[int, type[InvalidPacket]] = {
    _packet.PACKET_TRUNCATED: LengthMismatch,
    _packet.PACKET_BAD_MAGIC: BadMagic,
    _packet.PACKET_BAD_VERSION: UnsupportedVersion,
    _packet.PACKET_LENGTH_MISMATCH: LengthMismatch,
}


class PacketCodec(Codec):
    """A compact length-prefixed binary packet, one per binary WebSocket message.

    Layout (big-endian, 14-byte header)::

        magic u16 | version u8 | flags u8 | command u16 | id u32 | length u32 | payload

    ``magic`` (default ``0x4D45``, ``b"ME"``) rejects a sender speaking another protocol;
    ``version`` is 1; ``length`` must equal the message length minus 14. A wrong magic or
    version is :class:`~melody.errors.BadMagic`/:class:`~melody.errors.UnsupportedVersion`
    (close 1002); a short packet or a length that disagrees is
    :class:`~melody.errors.LengthMismatch` (1007); a text frame is
    :class:`~melody.errors.UnsupportedData` (1003). Routing keys are command codes; a request
    with a non-zero id gets a reply packet with the same command and id, flag ``FLAG_REPLY``
    (plus ``FLAG_ERROR`` and a UTF-8 message on failure). Parsing and building are compiled.
    """

    binary = True

    def __init__(self, magic: int = _packet.DEFAULT_MAGIC, *,
                 on_invalid: OnInvalid = "close") -> None:
        if not 0 <= magic <= 0xFFFF:
            raise ValueError(f"magic must be in 0..0xffff, not {magic!r}")
        self.magic = magic
        self.on_invalid = _check_on_invalid(on_invalid)

    def build(self, command: int, payload: bytes | bytearray | memoryview = b"",
              msg_id: int = 0, flags: int = 0) -> bytes:
        """One packet as bytes (one copy of the payload). ValueError for a field out of range."""
        return _packet.build(command, payload, msg_id, flags, self.magic)

    def encode(self, obj: Any) -> bytes:
        """A :class:`PacketMessage` (or a ``(command, payload)`` tuple) as one packet."""
        if isinstance(obj, PacketMessage):
            return _packet.build(obj.command, obj.payload, obj.id, obj.flags, self.magic)
        if isinstance(obj, tuple) and len(obj) == 2:
            return _packet.build(obj[0], obj[1], 0, 0, self.magic)
        raise TypeError(f"Packet encodes a PacketMessage or (command, payload), not {obj!r}")

    def decode(self, data: str | bytes) -> PacketMessage:
        """Parse one packet; the named :class:`~melody.errors.InvalidPacket` subclasses."""
        if isinstance(data, str):
            raise UnsupportedData("the Packet codec takes binary messages, not text")
        try:
            command, msg_id, flags, payload = _packet.parse(data, self.magic)
        except _packet.PacketError as exc:
            raise _PACKET_ERRORS[exc.status](str(exc)) from None
        return PacketMessage(command, payload, msg_id, flags)

    def envelope(self, msg: Any) -> tuple[Hashable | None, Any, Any]:
        """``(command, id or None, payload)``."""
        return msg.command, (msg.id or None), msg.payload

    def reply(self, request: Any, msg_id: Any, ok: bool, value: Any) -> bytes:
        """A reply packet: ``value`` (bytes-like, str or None) or the error text as payload."""
        command = request.command if isinstance(request, PacketMessage) else 0
        flags = _packet.FLAG_REPLY
        if not ok:
            flags |= _packet.FLAG_ERROR
            value = str(value)
        if value is None:
            value = b""
        elif isinstance(value, str):
            value = value.encode("utf-8")
        elif not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"a Packet reply is bytes, str or None, not {type(value).__name__}")
        return _packet.build(command, value, msg_id or 0, flags, self.magic)

    def __repr__(self) -> str:
        return f"PacketCodec(magic={self.magic:#06x}, on_invalid={self.on_invalid!r})"


#: The JSON codec (orjson), closing with 1007 on invalid JSON.
JSON = JSONCodec()
#: The Packet codec with the default magic number, closing on an invalid packet.
Packet = PacketCodec()
