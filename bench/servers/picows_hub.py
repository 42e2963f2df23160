"""The benchmark hub on picows: "B..." broadcast to all, anything else echoed to its sender.

    python bench/servers/picows_hub.py --port 0     # prints "READY <port>" once listening

picows's own API (``ws_create_server``, a ``WSListener`` per connection, ``transport.send``),
on uvloop; picows has no compression. A JSON object ("{...") is decoded and broadcast after one
``json.dumps`` (the ``json`` workload).
"""

from __future__ import annotations

import argparse
import json

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

CLIENTS: set[WSTransport] = set()


class HubListener(WSListener):
    def on_ws_connected(self, transport: WSTransport) -> None:
        CLIENTS.add(transport)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        CLIENTS.discard(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            payload = frame.get_payload_as_bytes()
            if payload.startswith(b"B"):
                for peer in CLIENTS:
                    peer.send(WSMsgType.TEXT, payload)
            elif payload.startswith(b"{"):
                data = json.dumps(json.loads(payload)).encode()
                for peer in CLIENTS:
                    peer.send(WSMsgType.TEXT, data)
            else:
                transport.send(WSMsgType.TEXT, payload)
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()


def listener_factory(request: WSUpgradeRequest) -> HubListener:
    return HubListener()


async def main(host: str, port: int) -> None:
    # backlog as melody's default, so that the connect workload measures the server.
    server = await ws_create_server(listener_factory, host, port, backlog=1024)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    args = parser.parse_args()
    uvloop.run(main(args.host, args.port))
