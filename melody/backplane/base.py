"""The :class:`Backplane` base class and the envelope every broker carries.

The contract a backplane keeps is described in :mod:`melody.backplane`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from melody.hub import Melody

__all__ = ["Backplane", "encode_envelope", "decode_envelope", "is_from", "new_node_id",
           "ENVELOPE_OVERHEAD", "encode_user_envelope", "encode_disconnect_envelope",
           "decode_user_envelope", "FLAG_DISCONNECT"]

FLAG_BINARY = 0x01
#: A publication of a topic with history: the payload is ``<offset>:<data>`` (see
#: ``melody.backplane.redis_streams``), delivered by every node, the publishing one included.
FLAG_STREAM = 0x04
#: A user envelope's flag: close the user's sessions (the payload is the close code, two
#: bytes big-endian, then the reason in UTF-8) instead of sending them a message.
FLAG_DISCONNECT = 0x02
_USER_FLAGS = FLAG_BINARY | FLAG_DISCONNECT
#: The longest user name a user envelope carries, in UTF-8 bytes (its length is two bytes).
MAX_USER_BYTES = 0xFFFF
NODE_ID_SIZE = 16
#: Bytes an envelope adds to its payload (node id and flags).
ENVELOPE_OVERHEAD = NODE_ID_SIZE + 1


def new_node_id() -> bytes:
    """A random 16-byte identity for this process's hub."""
    return os.urandom(NODE_ID_SIZE)


def encode_envelope(node_id: bytes, binary: bool, payload: bytes) -> bytes:
    """What goes on the broker for one message."""
    return node_id + (b"\x01" if binary else b"\x00") + payload


def is_from(data: bytes, node_id: bytes) -> bool:
    """True if the envelope ``data`` was sent by ``node_id``: a look at its first 16 bytes,
    with no copy of the payload (a node's own echoes are recognised at this cost)."""
    return data.startswith(node_id)


def decode_envelope(data: bytes) -> tuple[bytes, bool, bytes]:
    """``(node_id, binary, payload)``; raises ValueError for a short or malformed envelope."""
    if len(data) < NODE_ID_SIZE + 1:
        raise ValueError("backplane envelope too short")
    flags = data[NODE_ID_SIZE]
    if flags & ~FLAG_BINARY:
        raise ValueError(f"backplane envelope with unknown flags {flags:#x}")
    return data[:NODE_ID_SIZE], bool(flags & FLAG_BINARY), data[NODE_ID_SIZE + 1:]


def encode_user_envelope(node_id: bytes, user: str, binary: bool, payload: bytes) -> bytes:
    """What goes on the broker for one message to a user's sessions: node id, flags, the
    user's name (two bytes of length, then UTF-8), the payload. ValueError for a name over
    :data:`MAX_USER_BYTES`."""
    return _user_head(node_id, FLAG_BINARY if binary else 0, user) + payload


def encode_disconnect_envelope(node_id: bytes, user: str, code: int, reason: str) -> bytes:
    """What goes on the broker to close a user's sessions with ``code``/``reason``."""
    return (_user_head(node_id, FLAG_DISCONNECT, user) + code.to_bytes(2, "big")
            + reason.encode("utf-8"))


def _user_head(node_id: bytes, flags: int, user: str) -> bytes:
    name = user.encode("utf-8", "surrogatepass")
    if len(name) > MAX_USER_BYTES:
        raise ValueError(f"user name over {MAX_USER_BYTES} bytes")
    return node_id + bytes((flags,)) + len(name).to_bytes(2, "big") + name


def decode_user_envelope(data: bytes) -> tuple[bytes, int, str, bytes]:
    """``(node_id, flags, user, payload)`` of a user envelope; ValueError when malformed."""
    head = NODE_ID_SIZE + 3
    if len(data) < head:
        raise ValueError("user envelope too short")
    flags = data[NODE_ID_SIZE]
    if flags & ~_USER_FLAGS:
        raise ValueError(f"user envelope with unknown flags {flags:#x}")
    size = int.from_bytes(data[NODE_ID_SIZE + 1:head], "big")
    if len(data) < head + size or (flags & FLAG_DISCONNECT and len(data) < head + size + 2):
        raise ValueError("user envelope shorter than its user name")
    user = data[head:head + size].decode("utf-8", "surrogatepass")
    return data[:NODE_ID_SIZE], flags, user, data[head + size:]


class Backplane:
    """Base class of backplanes (see the module docstring for the contract)."""

    #: This node's identity on the broker.
    node_id: bytes

    def __init__(self) -> None:
        self.node_id = new_node_id()

    async def start(self, hub: Melody) -> None:
        """Connect and subscribe to the hub-wide channel; deliver into ``hub``."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Disconnect; publish nothing more."""
        raise NotImplementedError

    def publish(self, topic: str | None, binary: bool, payload: bytes) -> None:
        """Send one message to the other nodes (``topic`` None: hub-wide). Never blocks."""
        raise NotImplementedError

    def subscribe(self, topic: str) -> None:
        """Start receiving ``topic`` (this node now has a subscriber for it)."""
        raise NotImplementedError

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving ``topic`` (this node's last subscriber left)."""
        raise NotImplementedError

    def send_to_user(self, user: str, binary: bool, payload: bytes) -> None:
        """Send one message to ``user``'s sessions on every other node. Never blocks."""
        raise NotImplementedError

    def disconnect_user(self, user: str, code: int, reason: str) -> None:
        """Close ``user``'s sessions on every other node. Never blocks."""
        raise NotImplementedError

    async def cluster_topic_len(self, topic: str) -> int:
        """Subscribers of ``topic`` on all live nodes."""
        raise NotImplementedError

    def stats(self) -> dict[str, int]:
        """Counters: published, received, dropped, reconnects, ... (backplane-specific)."""
        return {}
