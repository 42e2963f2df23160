"""melody's own server, and the upgrade decision it shares with the ASGI adapter.

- ``melody.server.upgrade``: the one upgrade decision (middleware, paths, origins,
  ``handle_upgrade``, subprotocol, deadline) and the bookkeeping of accepted sessions;
- ``melody.server.native``: :class:`Upgrader`, which reads each request on melody's own
  connections and drives that decision;
- ``melody.server.serve``: :func:`serve` inside a loop, blocking :func:`run`, graceful
  :func:`shutdown`;
- ``melody.server.asgi``: the hub as an ASGI application (also importable as ``melody.asgi``).
"""

from __future__ import annotations

from melody.server.native import Upgrader, upgrader_of

# (install_uvloop and the SHUTDOWN_* defaults: importable from here as before the split,
# and, as before, not in __all__.)
from melody.server.serve import SHUTDOWN_BATCH_INTERVAL as SHUTDOWN_BATCH_INTERVAL
from melody.server.serve import SHUTDOWN_BATCH_SIZE as SHUTDOWN_BATCH_SIZE
from melody.server.serve import SHUTDOWN_TIMEOUT as SHUTDOWN_TIMEOUT
from melody.server.serve import install_uvloop as install_uvloop
from melody.server.serve import run, serve, serve_until_stopped, shutdown

__all__ = ["serve", "run", "serve_until_stopped", "shutdown", "Upgrader", "upgrader_of"]
