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

from typing import TYPE_CHECKING, Any

from melody import auth, codecs, errors, routing
from melody._core import COMPILED as _COMPILED
from melody.client import (
    ClientConnection,
    Connect,
    Publication,
    ReconnectingClient,
    Subscription,
    connect,
)
from melody.config import Compression, Config, RateLimit
from melody.delivery import HistoryPage, Recovery, StreamPosition, TopicOptions
from melody.errors import (
    ConfigError,
    HandshakeError,
    HandshakeTimeout,
    HubClosed,
    MelodyError,
    MessageBufferFull,
    RateLimited,
    RequestError,
    SessionClosed,
    TopicLimitExceeded,
)
from melody.handshake import Headers, Request
from melody.hub import Melody
from melody.server import install_uvloop, run, serve
from melody.session import Session

if TYPE_CHECKING:
    from melody.backplane.nats import NatsBackplane as NatsBackplane
    from melody.nats_publisher import AsyncNatsPublisher as AsyncNatsPublisher
    from melody.nats_publisher import NatsPublisher as NatsPublisher
    from melody.publisher import AsyncPublisher as AsyncPublisher
    from melody.publisher import Publisher as Publisher
    from melody.redis_backplane import RedisBackplane as RedisBackplane

__version__ = "0.1.0"

#: True when the compiled (Cython) core is the one in use.
COMPILED: bool = _COMPILED

__all__ = [
    "COMPILED",
    "ClientConnection",
    "Connect",
    "Compression",
    "Config",
    "ConfigError",
    "HandshakeError",
    "HandshakeTimeout",
    "Headers",
    "HistoryPage",
    "HubClosed",
    "Melody",
    "MelodyError",
    "MessageBufferFull",
    "Publication",
    "RateLimit",
    "RateLimited",
    "TopicLimitExceeded",
    "ReconnectingClient",
    "Recovery",
    "Request",
    "RequestError",
    "Session",
    "SessionClosed",
    "StreamPosition",
    "Subscription",
    "TopicOptions",
    "auth",
    "codecs",
    "connect",
    "errors",
    "install_uvloop",
    "run",
    "routing",
    "serve",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # RedisBackplane and the publishers need the optional redis package, NatsBackplane the
    # nats-py package: imported on first use, so that
    # `import melody` works without either. (Not in __all__: a star-import would need redis.)
    if name in ("Publisher", "AsyncPublisher"):
        try:
            from melody import publisher
        except ImportError as exc:
            raise AttributeError(
                f"melody.{name} needs the redis package: pip install 'melody[redis]'"
            ) from exc
        return getattr(publisher, name)
    if name == "RedisBackplane":
        try:
            from melody.redis_backplane import RedisBackplane
        except ImportError as exc:
            # AttributeError keeps hasattr() working; the message says what to install.
            raise AttributeError(
                "melody.RedisBackplane needs the redis package: pip install 'melody[redis]'"
            ) from exc
        return RedisBackplane
    if name in ("NatsPublisher", "AsyncNatsPublisher"):
        try:
            from melody import nats_publisher
        except ImportError as exc:
            raise AttributeError(
                f"melody.{name} needs the nats-py package: pip install 'melody[nats]'"
            ) from exc
        return getattr(nats_publisher, name)
    if name == "NatsBackplane":
        try:
            from melody.backplane.nats import NatsBackplane
        except ImportError as exc:
            raise AttributeError(
                "melody.NatsBackplane needs the nats-py package: pip install 'melody[nats]'"
            ) from exc
        return NatsBackplane
    raise AttributeError(f"module 'melody' has no attribute {name!r}")
