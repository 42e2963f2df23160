"""msgpack_codec: a user-defined codec (MessagePack in binary frames) with typed routing.

A codec is two methods and a flag: ``encode`` (called once per broadcast or write) and
``decode`` (once per received message, raising ``melody.errors.DecodeError`` for bad input).
``melody.codecs.Codec`` supplies the routing envelope (``type``/``id``/``data`` requests and
``id``/``ok``/``data`` replies), so acks work over msgpack exactly as over JSON::

    pip install msgpack
    python examples/msgpack_codec.py --port 5000

A client sends ``msgpack.packb({"type": "chat.send", "id": 1, "data": {"text": "hi"}})`` as a
binary message; every client receives ``{"type": "chat", "data": {"text": "hi"}}`` and the
sender also the reply ``{"id": 1, "ok": True, "data": <sessions reached>}``.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import msgpack

import melody
from melody.errors import DecodeError


class MsgpackCodec(melody.codecs.Codec):
    """MessagePack in binary frames; the JSON-style envelope for routing."""

    binary = True

    def encode(self, obj: Any) -> bytes:
        """``obj`` packed once; TypeError for what msgpack cannot pack."""
        return msgpack.packb(obj)  # type: ignore[no-any-return]

    def decode(self, data: str | bytes) -> Any:
        """One message unpacked; DecodeError (1007) for anything that is not msgpack."""
        if isinstance(data, str):
            raise DecodeError("msgpack messages are binary", 1003)
        try:
            return msgpack.unpackb(data)
        except (ValueError, msgpack.UnpackException) as exc:
            raise DecodeError(f"invalid msgpack: {exc}") from None


codec = MsgpackCodec()
hub = melody.Melody(codec=codec)


@hub.route("chat.send")
def chat_send(session: melody.Session, data: Any) -> int:
    # Encoded once, framed once: the same bytes go to every session.
    return hub.broadcast_binary(codec.encode({"type": "chat", "data": data}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args()

    async def serve() -> None:
        server = await hub.serve(args.host, args.port)
        print(f"listening on ws://{args.host}:{server.sockets[0].getsockname()[1]}", flush=True)
        await server.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
