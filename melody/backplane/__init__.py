"""Backplanes: several hub processes or machines sharing one logical hub through a broker.

- ``melody.backplane.base``: the contract (:class:`Backplane`) and the envelope every broker
  carries (the module docstring there describes both);
- ``melody.backplane.redis``: :class:`~melody.backplane.redis.RedisBackplane`, over Redis
  pub/sub (needs the ``redis`` package; also importable as ``melody.RedisBackplane`` and
  ``melody.redis_backplane``).
"""

from __future__ import annotations

from melody.backplane.base import (
    ENVELOPE_OVERHEAD,
    Backplane,
    decode_envelope,
    encode_envelope,
    is_from,
    new_node_id,
)

# Importable from here as before the split, and (as before) not in __all__.
from melody.backplane.base import FLAG_BINARY as FLAG_BINARY
from melody.backplane.base import NODE_ID_SIZE as NODE_ID_SIZE

__all__ = ["Backplane", "encode_envelope", "decode_envelope", "is_from", "new_node_id",
           "ENVELOPE_OVERHEAD"]
