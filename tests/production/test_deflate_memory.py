"""What permessage-deflate costs an idle session: at most 16 KiB more than no compression.

A compressor made for every session up front cost ~90 KiB per idle session (zlib's deflate
state at window 15 / memLevel 8 fills a 64 KiB hash head when it is made). The zlib state is
now made by a session's first compressed message and, without context takeover, lent for
that message only. Measured on a real hub in a subprocess (its RSS alone, from /proc), against
sessions opened with raw sockets from this process: ``N`` sessions that offer
permessage-deflate against ``N`` that do not, each on a fresh hub, the median of three runs.
``bench/deflate_memory.py`` reports the same figures for 2,000 sessions and more cases.
"""

from __future__ import annotations

import base64
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    import resource
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc"),
]

HOST = "127.0.0.1"
N = 500
RUNS = 3
GOAL_KIB = 16.0
TAIL = b"\x00\x00\xff\xff"
OFFER = "permessage-deflate; client_max_window_bits"
ROOT = Path(__file__).resolve().parent.parent.parent

# The hub: compression on with no context takeover either way, so that after a message a
# session needs no zlib state at all; every text message is echoed.
HUB = """
import asyncio, resource
import melody

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

async def main():
    hub = melody.Melody(melody.Config(
        compression=melody.Compression(client_no_context_takeover=True)))

    @hub.handle_message
    def echo(session, msg):
        session.write(msg)

    server = await hub.serve("127.0.0.1", 0)
    print("READY", server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()

asyncio.run(main())
"""


def raise_nofile() -> None:
    if resource is None:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def settled_rss_kib(pid: int) -> int:
    time.sleep(0.3)
    return int(statistics.median(rss_kib(pid) for _ in range(3)))


def start_hub() -> tuple[subprocess.Popen[str], int]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.Popen([sys.executable, "-c", HUB], stdout=subprocess.PIPE, env=env,
                            text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        proc.wait()
        raise AssertionError(f"hub did not start: {line!r}")
    return proc, int(line.split()[1])


def read_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def open_session(port: int, offer: str | None) -> socket.socket:
    """A raw WebSocket client: the upgrade, checked to have negotiated exactly what it offered."""
    sock = socket.create_connection((HOST, port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = ["GET / HTTP/1.1", f"Host: {HOST}:{port}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if offer:
        lines.append(f"Sec-WebSocket-Extensions: {offer}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    assert (b"permessage-deflate" in head.lower()) == bool(offer), head
    return sock


def send_text(sock: socket.socket, text: bytes, compressed: bool) -> None:
    payload = text
    if compressed:
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        payload = (c.compress(text) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0xC1 if compressed else 0x81])
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n)
    masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    sock.sendall(head + mask + masked)


def receive_text(sock: socket.socket) -> tuple[bytes, bool]:
    """One unfragmented server frame: (text, whether it was compressed)."""
    b0, b1 = read_exactly(sock, 2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", read_exactly(sock, 2))
    payload = read_exactly(sock, n)
    assert b0 & 0x0F == 1 and b0 & 0x80, hex(b0)
    compressed = bool(b0 & 0x40)
    if compressed:
        payload = zlib.decompressobj(-15).decompress(payload + TAIL)
    return payload, compressed


def one_run(offer: str | None) -> dict[str, float]:
    """KiB per session over a warmed-up hub's base RSS: idle, then after one echo each."""
    deflate = offer is not None
    proc, port = start_hub()
    sessions: list[socket.socket] = []
    try:
        # Warm-up: the code paths of a handshake and an echo, then closed.
        for i in range(20):
            sock = open_session(port, offer)
            send_text(sock, b"warm-up %d " % i * 10, deflate)
            assert receive_text(sock) == (b"warm-up %d " % i * 10, deflate)
            sock.close()
        base = settled_rss_kib(proc.pid)
        sessions = [open_session(port, offer) for _ in range(N)]
        idle = settled_rss_kib(proc.pid)
        texts = [b"session %04d says hello to the hub " % i * 4 for i in range(N)]
        for sock, text in zip(sessions, texts):
            send_text(sock, text, deflate)
        for sock, text in zip(sessions, texts):
            # The echo is compressed exactly when the session negotiated permessage-deflate.
            assert receive_text(sock) == (text, deflate)
        after = settled_rss_kib(proc.pid)
        assert proc.poll() is None
        return {"idle": (idle - base) / N, "after_one_message": (after - base) / N}
    finally:
        for sock in sessions:
            sock.close()
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def figures() -> Iterator[dict[str, dict[str, float]]]:
    """Median KiB per session over RUNS runs, ``plain`` and ``deflate`` interleaved."""
    raise_nofile()
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "deflate": []}
    for _ in range(RUNS):
        runs["plain"].append(one_run(None))
        runs["deflate"].append(one_run(OFFER))
    yield {
        mode: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for mode, results in runs.items()
    }


def test_idle_compressed_sessions_cost_at_most_16_kib_more(
        figures: dict[str, dict[str, float]]) -> None:
    extra = figures["deflate"]["idle"] - figures["plain"]["idle"]
    assert extra <= GOAL_KIB, figures


def test_no_context_takeover_sessions_hold_no_zlib_state_after_a_message(
        figures: dict[str, dict[str, float]]) -> None:
    extra = figures["deflate"]["after_one_message"] - figures["plain"]["after_one_message"]
    assert extra <= GOAL_KIB, figures
