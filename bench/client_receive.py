"""How fast does ``melody.connect`` take messages in? Client receive throughput, one connection.

    python bench/client_receive.py                     # 200,000 messages of 16 bytes, 5 repeats
    python bench/client_receive.py --size 200 --queue none,64,16 --loop uvloop

A server process (started here, pinned to one core when there are two or more) answers the
upgrade and writes one pre-built stream: ``--messages`` text frames (a sequence number padded to
``--size`` bytes), then a close frame. The server does no work per message, so the figure is
the client's: ``melody.connect(url, max_queue=Q)`` and ``async for`` over every message, timed
from the upgrade to the close. Each run checks that every message arrived, in order, intact
(``lost`` must be 0). Runs of the ``--queue`` settings are interleaved; the table shows the
median messages per second of each and the ratio to the first setting.

Writes the JSON document to ``--json`` when given. Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

try:
    import melody
except ImportError:  # a source checkout not installed: use it in place (built in place)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import melody

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def message(i: int, size: int) -> str:
    return f"{i:08d}".ljust(size, "x")


def frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big")
    return head + payload


# -- the server process ----------------------------------------------------------------------


async def serve(messages: int, size: int) -> None:
    """Answer each upgrade with the 101 and the whole stream; print ``READY <port>``."""
    stream = b"".join(frame(0x1, message(i, size).encode()) for i in range(messages))
    stream += frame(0x8, (1000).to_bytes(2, "big"))

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            writer.write(stream)
            await writer.drain()
            await reader.read(1 << 16)  # the client's close reply
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


# -- the client ------------------------------------------------------------------------------


async def receive(url: str, max_queue: int | None, messages: int, size: int) -> dict[str, Any]:
    start = time.perf_counter()
    conn = await melody.connect(url, max_queue=max_queue, ping_interval=None)
    got = 0
    bad = 0
    async for msg in conn:
        if msg != message(got, size):
            bad += 1
        got += 1
    elapsed = time.perf_counter() - start
    return {"messages_per_s": got / elapsed, "seconds": elapsed, "lost": messages - got,
            "corrupt": bad, "read_pauses": conn.stats()["read_pauses"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=16, help="payload bytes per message")
    parser.add_argument("--queue", default="none,64,16",
                        help="max_queue settings, comma-separated ('none': unbounded)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--json", help="write the JSON document here")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.messages, args.size))
        return 0

    queues = [None if q == "none" else int(q) for q in args.queue.split(",")]
    command = [sys.executable, os.path.abspath(__file__), "--serve",
               "--messages", str(args.messages), "--size", str(args.size)]
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        os.sched_setaffinity(0, cpus[1:])
        command = ["taskset", "-c", str(cpus[0]), *command]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().split()[1])
        url = f"ws://127.0.0.1:{port}/"
        runner: Any = asyncio.run
        if args.loop == "uvloop":
            import uvloop
            runner = uvloop.run
        runs: dict[str, list[dict[str, Any]]] = {str(q): [] for q in queues}
        runner(receive(url, None, args.messages, args.size))  # warm-up
        for _ in range(args.repeats):
            for q in queues:
                runs[str(q)].append(runner(receive(url, q, args.messages, args.size)))
    finally:
        server.terminate()
        server.wait()

    ok = all(r["lost"] == 0 and r["corrupt"] == 0 for rs in runs.values() for r in rs)
    medians = {q: statistics.median(r["messages_per_s"] for r in rs) for q, rs in runs.items()}
    first = medians[str(queues[0])]
    print(f"melody {melody.__file__}  loop={args.loop}  messages={args.messages} "
          f"size={args.size}  repeats={args.repeats}")
    print(f"{'max_queue':>10} {'msg/s (median)':>15} {'ratio':>6} {'lost':>5} {'pauses':>7}")
    for name, rs in runs.items():
        print(f"{name:>10} {medians[name]:>15,.0f} {medians[name] / first:>6.3f} "
              f"{sum(r['lost'] + r['corrupt'] for r in rs):>5} "
              f"{statistics.median(r['read_pauses'] for r in rs):>7.0f}")
    print("check:", "ok" if ok else "FAILED (messages lost or corrupt)")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"args": vars(args), "medians": medians, "runs": runs, "ok": ok}, out,
                      indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
