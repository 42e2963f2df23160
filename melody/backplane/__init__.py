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
- ``send_to_user(user, binary, payload)`` / ``disconnect_user(user, code, reason)``: reach one
  user's sessions (``session.user``) on every *other* node, with the same promises as
  ``publish`` (at most once, never blocking, the same bounded queue). Every node receives
  them (a user's sessions may be anywhere); on arrival call ``state.deliver_user(user,
  binary, msg)`` (``msg`` decoded to ``str`` for text) or ``state.disconnect_user(user,
  code, reason)``. Their envelope (:func:`encode_user_envelope`,
  :func:`encode_disconnect_envelope`): node id, flags (bit 0 binary, bit 1 disconnect), the
  user's name (two bytes of length, UTF-8), then the payload (for a disconnect: the close
  code in two bytes and the reason).
- When a message arrives from another node, call ``state.deliver_remote(topic, binary,
  payload)``; the node's own messages must be recognised (:func:`is_from`, on the envelope's
  first bytes, before the payload is decoded or copied) and not delivered twice: the hub
  delivered them locally when they were sent.

Messages are framed once per node (each node's fan-out builds one frame for all its sessions)
and published once per message (not once per node). The envelope: 16 bytes of node id, one
flags byte (bit 0: binary), then the payload.

The code: ``melody.backplane.base`` (:class:`Backplane`, the envelope),
``melody.backplane.redis`` (``RedisBackplane``, over Redis pub/sub; needs the ``redis`` package;
also importable as ``melody.RedisBackplane`` and ``melody.redis_backplane``) and
``melody.backplane.nats`` (``NatsBackplane``, over NATS with JetStream; needs the ``nats-py``
package; also importable as ``melody.NatsBackplane``) and
``melody.backplane.local`` (``WorkerBus``: the workers of ``melody serve --workers N`` on one
machine, over Unix sockets, no broker; made by the workers themselves when the hub has no
backplane; it frames its own messages instead of carrying the envelope).
"""

from __future__ import annotations

from melody.backplane.base import (
    ENVELOPE_OVERHEAD,
    FLAG_DISCONNECT,
    Backplane,
    decode_envelope,
    decode_user_envelope,
    encode_disconnect_envelope,
    encode_envelope,
    encode_user_envelope,
    is_from,
    new_node_id,
)

# Importable from here as before the split, and (as before) not in __all__.
from melody.backplane.base import FLAG_BINARY as FLAG_BINARY
from melody.backplane.base import NODE_ID_SIZE as NODE_ID_SIZE

__all__ = ["Backplane", "encode_envelope", "decode_envelope", "is_from", "new_node_id",
           "ENVELOPE_OVERHEAD", "encode_user_envelope", "encode_disconnect_envelope",
           "decode_user_envelope", "FLAG_DISCONNECT"]
