"""Server memory per idle session, with and without permessage-deflate.

    python bench/deflate_memory.py                  # N=2,000 sessions per case, every case
    python bench/deflate_memory.py -n 500 --cases plain,deflate

Each case starts a fresh melody hub in a subprocess (this script with ``--serve CASE``: an echo
hub with ``Config(compression=...)``, uvloop when installed), opens ``N`` connections to it from
this process (melody's own client codec under a raw asyncio ``Protocol``), and reads the hub's
RSS (``/proc/<pid>/status``, Linux only) three times:

* ``base``: after a warm-up (``--warmup`` sessions that each echoed a message, then closed);
* ``idle``: with the ``N`` sessions open and idle (nothing sent after the handshake);
* ``after``: once every session has sent one message and received its echo, idle again.

``KiB/session`` is the growth over ``base`` divided by ``N``; ``vs plain`` subtracts the
``plain`` case's figure. The cases (the hub has compression on in every one):

* ``plain``: the client offers no extension, so no session compresses;
* ``deflate``: the client offers ``permessage-deflate; client_max_window_bits`` and the hub
  has melody's default ``Compression()`` (server_no_context_takeover);
* ``deflate-nct``: ``Compression(client_no_context_takeover=True)``: no context takeover
  either way;
* ``deflate-ctx``: ``Compression(server_no_context_takeover=False)``: context takeover either
  way, so a session that has compressed once keeps its zlib state for good.

The message is ``--size`` bytes of seeded, compressible text (the hub compresses echoes of 64
bytes or more). The correctness check beside every figure: every session opened, the
extension was negotiated exactly when offered, every echo came back equal (lost = 0) and was
compressed exactly when negotiated. ``compress_us`` times the compression of that message in
this process (see :func:`compress_us`), for the CPU side of the trade.

Prints JSON on stdout and the table on stderr; exits 1 when a check failed, 2 when the run
could not happen.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

try:
    import melody
except ImportError:  # a source checkout not installed: use it in place (built with pip -e)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import melody
from compare import ready_port, server_env, stop_process

from melody._core.connection import Connection
from melody._core.deflate import Deflater
from melody._core.extensions import accept_response, build_offer
from melody.bench.report import align, format_value
from melody.bench.system import environment, raise_nofile, rss_kib
from melody.handshake import accept_key, build_client_request, parse_response_head

CASES = ("plain", "deflate", "deflate-nct", "deflate-ctx")
OFFER = build_offer()  # "permessage-deflate; client_max_window_bits"
WORDS = ("hub", "session", "melody", "broadcast", "message", "topic", "deflate", "window",
         "frame", "socket", "echo", "idle", '{"type":', '"text":', '"user":', "0123", "42")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--connections", type=int, default=2000,
                   help="idle sessions per case (default 2000)")
    p.add_argument("--cases", default=",".join(CASES),
                   help=f"comma-separated cases (default {','.join(CASES)})")
    p.add_argument("--size", type=int, default=256,
                   help="bytes in the message each session sends once (default 256)")
    p.add_argument("--warmup", type=int, default=50,
                   help="sessions that echo a message and close before the base RSS (default 50)")
    p.add_argument("--settle", type=float, default=1.0,
                   help="seconds to wait before each RSS reading (default 1)")
    p.add_argument("--concurrency", type=int, default=64,
                   help="handshakes and echoes in flight (default 64)")
    p.add_argument("--seed", type=int, default=20240601, help="seed of the message text")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="also write the JSON report to PATH")
    p.add_argument("--serve", choices=CASES, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.case_list = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(args.case_list) - set(CASES)
    if unknown:
        p.error(f"unknown case(s) {sorted(unknown)}; known: {', '.join(CASES)}")
    if args.connections < 1 or args.size < 64 or args.warmup < 0 or args.concurrency < 1:
        p.error("need -n >= 1, --size >= 64 (the hub's min_size), --warmup >= 0,"
                " --concurrency >= 1")
    return args


# -- the hub (run as ``--serve CASE`` in the subprocess) --------------------------------------


def compression_for(case: str) -> melody.Compression:
    if case == "deflate-nct":
        return melody.Compression(client_no_context_takeover=True)
    if case == "deflate-ctx":
        return melody.Compression(server_no_context_takeover=False)
    return melody.Compression()


async def serve(case: str) -> None:
    hub = melody.Melody(melody.Config(compression=compression_for(case)))

    @hub.handle_message
    def on_message(session: melody.Session, msg: str) -> None:
        session.write(msg)

    server = await hub.serve("127.0.0.1", 0)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


# -- the clients -------------------------------------------------------------------------------


class Client(asyncio.Protocol):
    """One connection: the handshake, then one echo on request; counts what it saw."""

    def __init__(self, port: int, offer: str | None) -> None:
        self.port = port
        self.offer = offer
        self.key = base64.b64encode(os.urandom(16)).decode("ascii")
        self.transport: asyncio.Transport | None = None
        self.conn: Connection | None = None
        self.negotiated = False
        self.head = b""
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.echo: asyncio.Future[str] | None = None
        self.compressed_reply = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(build_client_request(  # type: ignore[attr-defined]
            f"127.0.0.1:{self.port}", "/", self.key, extensions=self.offer))

    def connection_lost(self, exc: Exception | None) -> None:
        for fut in (self.opened, self.echo):
            if fut is not None and not fut.done():
                fut.set_exception(ConnectionError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        if self.conn is None:
            self._handshake(data)
            return
        if self.echo is not None and not self.echo.done() and data:
            # The echo arrives as one frame: RSV1 on its first byte says it was compressed.
            self.compressed_reply = self.compressed_reply or bool(data[0] & 0x40)
        for event in self.conn.receive_data(data):
            if event[0] == "text" and self.echo is not None and not self.echo.done():
                self.echo.set_result(event[1])
        out = self.conn.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)

    def _handshake(self, data: bytes) -> None:
        head = self.head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            self.head = head
            return
        try:
            status, headers = parse_response_head(head[: end + 4])
            if status != 101 or headers.get("Sec-WebSocket-Accept") != accept_key(self.key):
                raise ValueError(f"bad handshake response (HTTP {status})")
            conn = Connection(is_server=False, max_message_size=1 << 20)
            extensions = headers.get_all("Sec-WebSocket-Extensions")
            if extensions:
                if self.offer is None:
                    raise ValueError("extension not offered")
                params = accept_response(extensions, offered=self.offer)
                conn.inflater = params.client_inflater()
                conn.deflater = params.client_deflater()
                self.negotiated = True
        except ValueError as exc:
            self.opened.set_exception(exc)
            assert self.transport is not None
            self.transport.abort()
            return
        self.conn = conn
        self.opened.set_result(None)

    async def round_trip(self, text: str) -> bool:
        assert self.conn is not None and self.transport is not None
        self.echo = asyncio.get_running_loop().create_future()
        self.conn.send_text(text)
        self.transport.write(self.conn.data_to_send())
        return await asyncio.wait_for(self.echo, 30) == text

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def make_messages(seed: int, size: int, count: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        parts = [f"{i:08d} "]
        n = len(parts[0])
        while n < size:
            word = rng.choice(WORDS) + " "
            parts.append(word)
            n += len(word)
        out.append("".join(parts)[:size])
    return out


async def open_clients(port: int, offer: str | None, count: int,
                       concurrency: int) -> list[Client]:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)

    async def one() -> Client:
        async with gate:
            _, client = await loop.create_connection(lambda: Client(port, offer), "127.0.0.1",
                                                     port)
            await asyncio.wait_for(client.opened, 30)
            return client

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def echo_all(clients: list[Client], messages: list[str], concurrency: int) -> int:
    gate = asyncio.Semaphore(concurrency)

    async def one(client: Client, text: str) -> bool:
        async with gate:
            return await client.round_trip(text)

    return sum(await asyncio.gather(*(one(c, m) for c, m in zip(clients, messages))))


async def settled_rss(pid: int, settle: float) -> int | None:
    await asyncio.sleep(settle)
    readings = []
    for _ in range(3):
        value = rss_kib(pid)
        if value is None:
            return None
        readings.append(value)
        await asyncio.sleep(0.1)
    return int(statistics.median(readings))


async def measure_case(args: argparse.Namespace, case: str, pid: int, port: int) -> dict[str, Any]:
    n = args.connections
    offer = None if case == "plain" else OFFER
    messages = make_messages(args.seed, args.size, n + args.warmup)
    warm = await open_clients(port, offer, args.warmup, args.concurrency)
    warm_ok = await echo_all(warm, messages[n:], args.concurrency)
    for client in warm:
        client.close()
    base = await settled_rss(pid, args.settle)
    clients = await open_clients(port, offer, n, args.concurrency)
    idle = await settled_rss(pid, args.settle)
    echoed = await echo_all(clients, messages[:n], args.concurrency)
    after = await settled_rss(pid, args.settle)
    negotiated = sum(c.negotiated for c in clients)
    compressed = sum(c.compressed_reply for c in clients)
    for client in clients:
        client.close()
    want_deflate = offer is not None
    check = {
        "opened": len(clients),
        "negotiated": negotiated,
        "echoed": echoed,
        "compressed_replies": compressed,
        "lost": n - echoed + args.warmup - warm_ok,
    }
    check["ok"] = (len(clients) == n and echoed == n and warm_ok == args.warmup
                   and negotiated == (n if want_deflate else 0)
                   and compressed == (n if want_deflate else 0))

    def per_session(rss: int | None) -> float | None:
        return None if rss is None or base is None else (rss - base) / n

    return {
        "rss_kib": {"base": base, "idle": idle, "after": after},
        "kib_per_session": {"idle": per_session(idle), "after_one_message": per_session(after)},
        "check": check,
    }


async def run_case(args: argparse.Namespace, case: str) -> dict[str, Any]:
    env = server_env()
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", case],
                            stdout=subprocess.PIPE, stderr=log, env=env, text=True)
    try:
        port = ready_port(proc)
        if port is None:
            log.seek(0)
            raise RuntimeError(f"hub for {case} did not start:\n{log.read()[-2000:]}")
        return await measure_case(args, case, proc.pid, port)
    finally:
        stop_process(proc)
        log.close()


def compress_us(message: bytes) -> dict[str, float]:
    """Microseconds per compression of ``message``, best of 5 runs of 2,000: by one
    no-context-takeover Deflater, by one context-takeover Deflater (the same message again and
    again, so mostly a back-reference), and by a new Deflater each time (a zlib stream made and
    freed per message: what freeing the state after every message would cost)."""
    out = {}
    for name in ("no_context_takeover", "context_takeover", "new_stream_each_message"):
        deflater = Deflater(15, name == "no_context_takeover")
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            if name == "new_stream_each_message":
                for _ in range(2000):
                    Deflater(15, False).compress(message)
            else:
                for _ in range(2000):
                    deflater.compress(message)
            best = min(best, (time.perf_counter() - start) / 2000 * 1e6)
        out[name] = round(best, 2)
    return out


def table(report: dict[str, Any]) -> str:
    cases = report["cases"]
    plain = cases.get("plain", {}).get("kib_per_session", {})
    rows = [["case", "idle KiB/session", "vs plain", "after 1 msg KiB/session", "vs plain",
             "check"]]
    for case, result in cases.items():
        figures = result["kib_per_session"]
        row = [case]
        for key in ("idle", "after_one_message"):
            value = figures[key]
            row.append(format_value(value, 1))
            base = plain.get(key)
            row.append("-" if value is None or base is None or case == "plain"
                       else f"{value - base:+.1f}")
        check = result["check"]
        row.append("ok" if check["ok"] else f"FAILED {check}")
        rows.append(row)
    cpu = ", ".join(f"{name} {us:g}" for name, us in report["compress_us"].items())
    return (align(rows, left=(0, 5))
            + f"\ncompress, us per {report['params']['size']}-byte message: {cpu}")


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {
        "params": {"connections": args.connections, "size": args.size, "warmup": args.warmup,
                   "settle": args.settle, "seed": args.seed, "offer": OFFER},
        "loop": type(asyncio.get_running_loop()).__module__,
        "environment": environment(),
        "compress_us": compress_us(make_messages(args.seed, args.size, 1)[0].encode()),
        "cases": {},
    }
    for case in args.case_list:
        print(f"[{case}] {args.connections:,} sessions", file=sys.stderr, flush=True)
        report["cases"][case] = await run_case(args, case)
    report["ok"] = all(r["check"]["ok"] for r in report["cases"].values())
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile()
    melody.install_uvloop()
    if args.serve is not None:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(args.serve))
        return 0
    if rss_kib(os.getpid()) is None:
        print("deflate_memory: needs /proc (Linux) to read the hub's RSS", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(main_async(args))
    except (TimeoutError, OSError, RuntimeError) as exc:
        print(f"deflate_memory: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(table(report), file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
