"""The :class:`Backplane` base class and the envelope every broker carries.

The contract a backplane keeps is described in :mod:`melody.backplane`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from melody.hub import Melody

__all__ = ["Backplane", "encode_envelope", "decode_envelope", "is_from", "new_node_id",
           "ENVELOPE_OVERHEAD"]

FLAG_BINARY = 0x01
#: A publication of a topic with history: the payload is ``<offset>:<data>`` (see
#: ``melody.backplane.redis_streams``), delivered by every node, the publishing one included.
FLAG_STREAM = 0x02
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

    async def cluster_topic_len(self, topic: str) -> int:
        """Subscribers of ``topic`` on all live nodes."""
        raise NotImplementedError

    def stats(self) -> dict[str, int]:
        """Counters: published, received, dropped, reconnects, ... (backplane-specific)."""
        return {}
