"""melody: a fast WebSocket hub for Python, with Go melody's API over a compiled core.

::

    import melody

    hub = melody.Melody()

    @hub.handle_message
    def on_message(session, msg):
        hub.broadcast(msg)

    melody.run(hub, port=5000)
"""

from __future__ import annotations

from melody import errors
from melody._core import COMPILED as _COMPILED
from melody.config import Compression, Config
from melody.errors import (
    HandshakeError,
    HubClosed,
    MelodyError,
    MessageBufferFull,
    SessionClosed,
)
from melody.handshake import Headers, Request
from melody.hub import Melody
from melody.server import install_uvloop, run, serve
from melody.session import Session

__version__ = "0.1.0"

#: True when the compiled (Cython) core is the one in use.
COMPILED: bool = _COMPILED

__all__ = [
    "COMPILED",
    "Compression",
    "Config",
    "HandshakeError",
    "Headers",
    "HubClosed",
    "Melody",
    "MelodyError",
    "MessageBufferFull",
    "Request",
    "Session",
    "SessionClosed",
    "errors",
    "install_uvloop",
    "run",
    "serve",
    "__version__",
]
