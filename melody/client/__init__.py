"""The WebSocket client: :func:`connect`, on the same sans-I/O core as the hub.

A connection is a ``Connection(is_server=False)`` from ``melody._core.connection`` (compiled, or
its pure-Python twin: frames are masked with a fresh random key each, text is checked for UTF-8
as it arrives, permessage-deflate runs in zlib) behind an ``asyncio.BufferedProtocol``: the
socket is read straight into the core's buffer, with no copy while the application keeps up.
Works on asyncio's loops and on uvloop.

::

    import asyncio
    import melody

    async def main() -> None:
        async with melody.connect("ws://127.0.0.1:5000/chat", compression=True) as conn:
            await conn.send("hello")
            async for msg in conn:          # ends when the server closes with 1000/1001
                print(msg)

    asyncio.run(main())

Backpressure both ways: ``await conn.send(...)`` returns as soon as the frame is handed to the
transport and waits only while the transport's buffer is over its high-water mark (the server is
not reading). Received messages wait in a queue of at most ``max_queue`` messages; when it is
full the client stops reading the socket, so a fast server meets TCP flow control instead of
growing the client's memory.

Reconnecting mode returns a :class:`ReconnectingClient`: the same methods, over a connection
that is re-established after every outage with exponential backoff and jitter; ``on_connect``
runs again after each (re)connection, before anything else is sent on it::

    async def resubscribe(conn: melody.ClientConnection) -> None:
        await conn.send('{"subscribe": "prices"}')

    async with melody.connect(url, reconnect=True, on_connect=resubscribe) as client:
        async for msg in client:            # continues across outages; ends on close()
            handle(msg)                     # client.reconnects, client.stats() tell the story

Everything that goes wrong is named: :class:`melody.errors.HandshakeError` (refused or invalid
opening handshake, with the HTTP status), :class:`melody.errors.ConnectionClosed` (code and
reason of the close), ``OSError`` (no TCP connection), ``TimeoutError`` (a bounded wait expired).
"""

from melody.client.connection import ClientConnection
from melody.client.opener import Connect, connect
from melody.client.reconnecting import OnConnect as OnConnect
from melody.client.reconnecting import ReconnectingClient
from melody.client.subscription import Publication, Subscription

__all__ = [
    "ClientConnection",
    "Connect",
    "Publication",
    "ReconnectingClient",
    "Subscription",
    "connect",
]
