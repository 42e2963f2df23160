"""The Autobahn echo hub, built with the public API only.

    python tests/autobahn/echo_server.py --port 9001 [--no-uvloop]

Echoes every text and binary message back to its sender, with permessage-deflate on (cases
12.* and 13.*) and a max_message_size large enough for the 16 MiB messages of cases 9.*.
Prints ``READY <port>`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import melody


def make_hub() -> melody.Melody:
    hub = melody.Melody(melody.Config(
        max_message_size=64 * 1024 * 1024,
        compression=melody.Compression(server_no_context_takeover=False, min_size=0),
        message_buffer_size=100_000,
        write_buffer_high=16 * 1024 * 1024,
    ))

    @hub.handle_message
    def echo_text(session: melody.Session, msg: str) -> None:
        session.write(msg)

    @hub.handle_message_binary
    def echo_binary(session: melody.Session, msg: bytes) -> None:
        session.write_binary(msg)

    @hub.handle_error
    def ignore(session: melody.Session, error: BaseException) -> None:
        pass  # protocol violations are the point of the suite

    return hub


async def main(port: int) -> None:
    hub = make_hub()
    server = await hub.serve("127.0.0.1", port)
    print("READY", server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args()
    if not args.no_uvloop:
        melody.install_uvloop()
    try:
        asyncio.run(main(args.port))
    except KeyboardInterrupt:
        sys.exit(0)
