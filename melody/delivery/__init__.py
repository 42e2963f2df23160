"""Delivery beyond one live connection: topics with history, offsets and epochs, recovery.

* :mod:`melody.delivery.options`: ``hub.configure_topic``'s patterns and options;
* :mod:`melody.delivery.history`: publications, positions, the memory engine, the recovery
  rule;
* :mod:`melody.delivery.streams`: a hub's topics with history (publish, read, subscribe from
  a position with no gap and no duplicate).

The wire protocol is in ``docs/protocol.md``.
"""

from melody.delivery.history import HistoryPage, MemoryHistory, StoredPublication, StreamPosition
from melody.delivery.options import TopicOptions
from melody.delivery.streams import Recovery

__all__ = ["HistoryPage", "MemoryHistory", "StoredPublication", "Recovery", "StreamPosition",
           "TopicOptions"]
