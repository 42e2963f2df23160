"""A hub connection served by an ASGI server instead of melody's own (see ``melody.asgi``).

:class:`AsgiConnection` is a :class:`~melody._core.protocol.ProtocolCore` whose frames become
ASGI ``websocket.send``/``websocket.close`` messages and whose messages come from the ASGI
``receive``; the hub's groups, fan-out and handlers treat it as any other connection.
"""

import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from typing_extensions import disjoint_base

if sys.version_info >= (3, 12):
    from collections.abc import Buffer
else:
    from typing_extensions import Buffer

from melody._core.protocol import Dispatch, ProtocolCore

_Message = MutableMapping[str, Any]

@disjoint_base
class AsgiConnection(ProtocolCore):
    """One WebSocket connection accepted by an ASGI server, registered in a melody hub.

    ``transport`` is an :class:`AsgiTransport`. Writes go to the ASGI ``send`` at once; while
    one is suspended (the peer is not reading) later ones queue, bounded by
    ``Dispatch.queue_limit`` under ``Dispatch.overflow_policy``. Pings are not sent (ASGI has
    none) and the hub's heartbeat never takes the connection for dead.
    """

    def __init__(
        self,
        dispatch: Dispatch,
        send: Callable[[_Message], Awaitable[None]],
        scope: dict[str, Any],
    ) -> None: ...
    def open(self, session: Any) -> None:
        """The ASGI server accepted the connection: attach ``session``, start taking frames."""
    async def run(self, receive: Callable[[], Awaitable[_Message]]) -> None:
        """Deliver the ASGI server's messages to the hub until the connection ends.

        Returns after ``websocket.disconnect`` or :meth:`abort`; ``Dispatch.on_disconnect``
        has been called (once) by then. A message over ``max_message_size`` closes with 1009.
        """
    def send_text(self, text: str) -> int:
        """Send a text message; returns a SEND_* status (SEND_CLOSED once closing)."""
    def send_binary(self, data: Buffer) -> int:
        """Send a binary message (copied); returns a SEND_* status."""
    def close(self, code: int = 1000, reason: str = "") -> None:
        """Send ``websocket.close`` after what is queued; abort if the connection has not ended
        ``close_timeout`` seconds later."""
    def abort(self) -> None:
        """End the connection at once: nothing more is sent and :meth:`run` returns, after
        which the ASGI server drops the connection without a close frame."""
    def _write_timeout(self) -> None:
        """Timer callback: drop a peer whose pending send made no progress for write_wait."""
    def _close_timeout(self) -> None:
        """Timer callback: the ASGI server did not report the end of the closing handshake."""
    async def _drain(self, it: Any, step: Any, closing: bool) -> None:
        """Finish the suspended send, then send what queued behind it, in order."""

@disjoint_base
class AsgiTransport:
    """Stands where a transport would: addresses (from the scope) and read pausing."""

    def __init__(self, conn: AsgiConnection, scope: dict[str, Any]) -> None: ...
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``"peername"``, ``"sockname"`` or ``"asgi_scope"``; ``default`` for anything else."""
    def pause_reading(self) -> None:
        """Stop taking messages from the ASGI server until :meth:`resume_reading`."""
    def resume_reading(self) -> None:
        """Take messages again."""
    def is_reading(self) -> bool:
        """False while reading is paused."""
    def is_closing(self) -> bool:
        """True once the connection is closing or closed."""
    def close(self) -> None:
        """Close the connection with 1000."""
    def abort(self) -> None:
        """Abort the connection."""
