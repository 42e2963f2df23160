"""What handler metrics and OpenTelemetry tracing cost the server, per echoed message.

    python bench/handler_overhead.py                    # every case, both workloads, 5 rounds
    python bench/handler_overhead.py --cases off,metrics --workloads route -m 100000

Each run starts a fresh hub in a subprocess (this script with ``--serve CASE WORKLOAD``, the
default asyncio loop or uvloop when installed, pinned to the first CPU this process may use),
opens ``--connections`` connections from this process (melody's own client codec under a raw
asyncio ``Protocol``, pinned to the other CPUs), echoes ``--warmup`` messages, then
``--messages`` more with ``--window`` in flight per connection, and reads the server's CPU
time (user + system, ``/proc/<pid>/stat``, Linux only) around that phase:
``server_us_per_msg`` is that CPU time over the messages. The cases:

* ``off``: no metrics, no tracer provider (the handlers run unwrapped);
* ``metrics``: ``melody.serve(..., metrics=True)``: ``melody_handler_seconds`` and the other
  metrics (nobody scrapes during the run);
* ``otel-unsampled``: an SDK ``TracerProvider(sampler=ALWAYS_OFF)`` set globally: traced, and
  the sampler drops every span;
* ``otel-sampled``: an SDK ``TracerProvider()`` (every span recorded) with a
  ``BatchSpanProcessor`` whose exporter discards the batches: the cost of making the spans,
  not of shipping them;
* ``metrics+otel``: ``metrics`` and ``otel-sampled`` together.

The workloads: ``echo`` (``handle_message`` writes the text back) and ``route`` (a JSON codec
hub with ``@hub.route("echo")`` answering ``{"id": n, "ok": true, "data": ...}``). The runs of
a round go through the cases in a rotating order, rounds repeat ``--rounds`` times; the ratio
of each case to ``off`` is taken within a round (same minute, same machine load), and the table
shows the median of the rounds. The correctness check beside every figure: every message came
back, equal to what was sent, in order (``lost`` = 0).

Prints JSON on stdout and the table on stderr; exits 1 when a check failed, 2 when a run could
not happen.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

try:
    import melody
except ImportError:  # a source checkout not installed: use it in place (built with pip -e)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import melody
from compare import ready_port, server_env, stop_process

import melody.tracing
from melody._core.connection import Connection
from melody.bench.system import cpu_seconds, environment
from melody.handshake import accept_key, build_client_request, parse_response_head

CASES = ("off", "metrics", "otel-unsampled", "otel-sampled", "metrics+otel")
WORKLOADS = ("echo", "route")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=",".join(CASES),
                   help=f"comma-separated cases (default {','.join(CASES)})")
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help=f"comma-separated workloads (default {','.join(WORKLOADS)})")
    p.add_argument("-m", "--messages", type=int, default=200_000,
                   help="messages echoed in the measured phase of a run (default 200000)")
    p.add_argument("--warmup", type=int, default=20_000,
                   help="messages echoed before the measured phase (default 20000)")
    p.add_argument("-c", "--connections", type=int, default=8,
                   help="client connections (default 8)")
    p.add_argument("--window", type=int, default=32,
                   help="messages in flight per connection (default 32)")
    p.add_argument("--size", type=int, default=64, help="payload characters (default 64)")
    p.add_argument("--rounds", type=int, default=5, help="rounds of every case (default 5)")
    p.add_argument("--seed", type=int, default=20261203, help="seed of the payload text")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="also write the JSON report to PATH")
    p.add_argument("--serve", nargs=2, metavar=("CASE", "WORKLOAD"), default=None,
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.case_list = [c.strip() for c in args.cases.split(",") if c.strip()]
    args.workload_list = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if set(args.case_list) - set(CASES) or set(args.workload_list) - set(WORKLOADS):
        p.error(f"cases are {', '.join(CASES)}; workloads {', '.join(WORKLOADS)}")
    if "off" not in args.case_list:
        args.case_list.insert(0, "off")  # the ratios' reference
    if min(args.messages, args.connections, args.window, args.size, args.rounds) < 1:
        p.error("need -m, -c, --window, --size and --rounds >= 1")
    return args


# -- the hub (run as ``--serve CASE WORKLOAD`` in the subprocess) -------------------------------


def configure_tracing(case: str) -> None:
    if "otel" not in case:
        return
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    if case == "otel-unsampled":
        provider = TracerProvider(sampler=ALWAYS_OFF)
    else:
        provider = TracerProvider(sampler=ALWAYS_ON)
        provider.add_span_processor(BatchSpanProcessor(Discard()))
    trace.set_tracer_provider(provider)


async def serve(case: str, workload: str) -> None:
    configure_tracing(case)
    if workload == "route":
        hub = melody.Melody(codec=melody.codecs.JSON)

        @hub.route("echo")
        def echo_route(session: melody.Session, data: Any) -> Any:
            return data
    else:
        hub = melody.Melody()

        @hub.handle_message
        def on_message(session: melody.Session, msg: str) -> None:
            session.write(msg)

    server = await melody.serve(hub, "127.0.0.1", 0, metrics="metrics" in case)
    traced = melody.tracing.tracing_of(hub) is not None
    if traced != ("otel" in case):
        print(f"FAILED tracing is {'on' if traced else 'off'} for {case}", flush=True)
        return
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


# -- the clients -------------------------------------------------------------------------------


class Client(asyncio.Protocol):
    """One connection: the handshake, then echoes with ``window`` in flight until told to
    stop; checks that each answer is the next one expected."""

    def __init__(self, port: int, workload: str, payload: str, window: int) -> None:
        self.port = port
        self.workload = workload
        self.payload = payload
        self.window = window
        self.key = base64.b64encode(os.urandom(16)).decode("ascii")
        self.transport: asyncio.Transport | None = None
        self.conn: Connection | None = None
        self.head = b""
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.sent = 0  # messages sent
        self.received = 0  # answers received, each checked
        self.bad = 0  # answers that were not what was expected
        self.quota = 0  # send until this many were sent
        self.done: asyncio.Future[None] | None = None

    def message(self, n: int) -> str:
        if self.workload == "route":
            return json.dumps({"type": "echo", "id": n, "data": self.payload})
        return f"{n} {self.payload}"

    def expected(self, n: int) -> str:
        if self.workload == "route":
            return json.dumps({"id": n, "ok": True, "data": self.payload},
                              separators=(",", ":"))
        return f"{n} {self.payload}"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(build_client_request(  # type: ignore[attr-defined]
            f"127.0.0.1:{self.port}", "/", self.key))

    def connection_lost(self, exc: Exception | None) -> None:
        for fut in (self.opened, self.done):
            if fut is not None and not fut.done():
                fut.set_exception(ConnectionError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        if self.conn is None:
            self._handshake(data)
            return
        for event in self.conn.receive_data(data):
            if event[0] != "text":
                continue
            if event[1] != self.expected(self.received):
                self.bad += 1
            self.received += 1
            if self.sent < self.quota:
                self.conn.send_text(self.message(self.sent))
                self.sent += 1
        out = self.conn.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)
        if self.done is not None and not self.done.done() and self.received >= self.quota:
            self.done.set_result(None)

    def _handshake(self, data: bytes) -> None:
        head = self.head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            self.head = head
            return
        status, headers = parse_response_head(head[: end + 4])
        if status != 101 or headers.get("Sec-WebSocket-Accept") != accept_key(self.key):
            self.opened.set_exception(ValueError(f"bad handshake response (HTTP {status})"))
            return
        self.conn = Connection(is_server=False, max_message_size=1 << 20)
        self.opened.set_result(None)

    def run(self, count: int) -> asyncio.Future[None]:
        """Echo ``count`` more messages; the future is done once all came back."""
        assert self.conn is not None and self.transport is not None
        self.quota = self.sent + count
        self.done = asyncio.get_running_loop().create_future()
        while self.sent < self.quota and self.sent - self.received < self.window:
            self.conn.send_text(self.message(self.sent))
            self.sent += 1
        self.transport.write(self.conn.data_to_send())
        return self.done


async def drive(port: int, pid: int, args: argparse.Namespace, workload: str,
                payload: str) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    clients: list[Client] = []
    for _ in range(args.connections):
        _, client = await loop.create_connection(
            lambda: Client(port, workload, payload, args.window), "127.0.0.1", port)
        clients.append(client)
    await asyncio.wait_for(asyncio.gather(*(c.opened for c in clients)), 30)
    per = max(1, args.warmup // len(clients))
    await asyncio.wait_for(asyncio.gather(*(c.run(per) for c in clients)), 120)
    per = max(1, args.messages // len(clients))
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(c.run(per) for c in clients)), 600)
    cpu1, t1 = cpu_seconds(pid), time.perf_counter()
    for c in clients:
        assert c.transport is not None
        c.transport.close()
    if cpu0 is None or cpu1 is None:
        raise RuntimeError("cannot read the server's CPU time (/proc)")
    measured = per * len(clients)
    sent = sum(c.sent for c in clients)
    received = sum(c.received for c in clients)
    return {
        "messages": measured,
        "server_cpu_s": round(cpu1 - cpu0, 3),
        "server_us_per_msg": round((cpu1 - cpu0) / measured * 1e6, 3),
        "msgs_per_s": round(measured / (t1 - t0)),
        "lost": sent - received,
        "bad": sum(c.bad for c in clients),
    }


def run_one(args: argparse.Namespace, case: str, workload: str, payload: str,
            cpus: list[int]) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--serve", case, workload]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=server_env())
    try:
        if len(cpus) > 1:
            os.sched_setaffinity(proc.pid, cpus[:1])
        port = ready_port(proc)
        if port is None:
            raise RuntimeError(f"the {case} hub did not start")
        return asyncio.run(drive(port, proc.pid, args, workload, payload))
    finally:
        stop_process(proc)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve is not None:
        asyncio.run(serve(*args.serve))
        return 0
    import random

    rng = random.Random(args.seed)
    payload = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(args.size))
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:
        os.sched_setaffinity(0, cpus[1:])  # the client off the server's CPU
    runs: list[dict[str, Any]] = []
    cases = args.case_list
    for r in range(args.rounds):
        order = cases[r % len(cases):] + cases[:r % len(cases)]
        for workload in args.workload_list:
            for case in order:
                try:
                    result = run_one(args, case, workload, payload, cpus)
                except Exception as exc:
                    print(f"run {case}/{workload} failed: {exc}", file=sys.stderr)
                    return 2
                result.update(round=r, case=case, workload=workload)
                runs.append(result)
                print(f"round {r} {workload:5} {case:15} {result['server_us_per_msg']:7.2f} "
                      f"us/msg  lost={result['lost']} bad={result['bad']}", file=sys.stderr)
    summary: list[dict[str, Any]] = []
    for workload in args.workload_list:
        for case in cases:
            mine = [x for x in runs if x["workload"] == workload and x["case"] == case]
            ratios = []
            for x in mine:
                base = next(y for y in runs if y["workload"] == workload
                            and y["case"] == "off" and y["round"] == x["round"])
                # A run too short for one clock tick (10 ms) of server CPU has no ratio.
                if base["server_us_per_msg"] > 0:
                    ratios.append(x["server_us_per_msg"] / base["server_us_per_msg"])
            summary.append({
                "workload": workload, "case": case,
                "server_us_per_msg": round(statistics.median(
                    x["server_us_per_msg"] for x in mine), 3),
                "vs_off": round(statistics.median(ratios), 4) if ratios else None,
                "vs_off_min": round(min(ratios), 4) if ratios else None,
                "vs_off_max": round(max(ratios), 4) if ratios else None,
                "msgs_per_s": round(statistics.median(x["msgs_per_s"] for x in mine)),
                "lost": sum(x["lost"] for x in mine), "bad": sum(x["bad"] for x in mine),
            })
    report = {"args": {k: v for k, v in vars(args).items() if k != "serve"},
              "environment": environment(), "runs": runs, "summary": summary}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    print(f"\n{'workload':8} {'case':15} {'us/msg':>8} {'vs off':>8} {'(min..max)':>16}"
          f" {'msgs/s':>8} {'lost':>5}", file=sys.stderr)
    for s in summary:
        ratio = (f"{s['vs_off']:8.3f} {s['vs_off_min']:7.3f}..{s['vs_off_max']:<7.3f}"
                 if s["vs_off"] is not None else f"{'-':>8} {'(too short)':>16}")
        print(f"{s['workload']:8} {s['case']:15} {s['server_us_per_msg']:8.2f} {ratio} "
              f"{s['msgs_per_s']:8} {s['lost'] + s['bad']:5}", file=sys.stderr)
    return 1 if any(s["lost"] or s["bad"] for s in summary) else 0


if __name__ == "__main__":
    sys.exit(main())
