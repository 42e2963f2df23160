"""melody's own server, and the upgrade decision it shares with the ASGI adapter.

- ``melody.server.upgrade``: the one upgrade decision (middleware, paths, origins,
  ``handle_upgrade``, subprotocol, deadline) and the bookkeeping of accepted sessions;
- ``melody.server.native``: :class:`Upgrader`, which reads each request on melody's own
  connections and drives that decision;
- ``melody.server.lifecycle``: :func:`serve` inside a loop, blocking :func:`run`, graceful
  :func:`shutdown`;
- ``melody.server.asgi``: the hub as an ASGI application (also importable as ``melody.asgi``).
"""

from __future__ import annotations

# (install_uvloop and the SHUTDOWN_* defaults: importable from here as before the split,
# and, as before, not in __all__.)
from melody.server.lifecycle import SHUTDOWN_BATCH_INTERVAL as SHUTDOWN_BATCH_INTERVAL
from melody.server.lifecycle import SHUTDOWN_BATCH_SIZE as SHUTDOWN_BATCH_SIZE
from melody.server.lifecycle import SHUTDOWN_TIMEOUT as SHUTDOWN_TIMEOUT
from melody.server.lifecycle import install_uvloop as install_uvloop
from melody.server.lifecycle import run, serve, serve_until_stopped, shutdown
from melody.server.native import Upgrader, upgrader_of

__all__ = ["serve", "run", "serve_until_stopped", "shutdown", "Upgrader", "upgrader_of"]
