"""Backplanes: several hub processes or machines sharing one logical hub through a broker.

A backplane carries ``broadcast*`` and ``publish*`` between nodes; each node delivers what it
receives to its own sessions. The contract, so that a new broker (NATS, ...) is one class:

- ``start(hub)`` / ``stop()``: connect and begin delivering; disconnect. ``start`` returns once
  the node is subscribed to the hub-wide channel (or raises); later outages are the
  backplane's to survive (reconnect with backoff, resubscribe) and to report through
  ``state.report(None, error)``, where ``state = melody._hubstate.state_of(hub)`` is the
  hub's internal state (taken once, in ``start``).
- ``publish(topic, binary, payload)``: send one message to every *other* node, at most once,
  never blocking the caller (queue it; the queue is bounded in messages *and* bytes, and what
  does not fit is dropped and counted with its reason). ``topic`` None is a hub-wide broadcast.
- ``subscribe(topic)`` / ``unsubscribe(topic)``: the hub calls these when its first local
  session joins a topic and when its last one leaves, so a node only receives the topics it
  has subscribers for (interest-based routing). They never block either, and a session that
  joins and leaves in a loop must not become as many broker commands: coalesce.
- ``cluster_topic_len(topic)``: subscribers of ``topic`` over all live nodes.
- When a message arrives from another node, call ``state.deliver_remote(topic, binary,
  payload)``; the node's own messages must be recognised (:func:`is_from`, on the envelope's
  first bytes, before the payload is decoded or copied) and not delivered twice: the hub
  delivered them locally when they were sent.

Messages are framed once per node (each node's fan-out builds one frame for all its sessions)
and published once per message (not once per node). The envelope: 16 bytes of node id, one
flags byte (bit 0: binary), then the payload.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from melody.hub import Melody

__all__ = ["Backplane", "encode_envelope", "decode_envelope", "is_from", "new_node_id",
           "ENVELOPE_OVERHEAD"]

FLAG_BINARY = 0x01
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
