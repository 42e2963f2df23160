"""One hub, two ways in: melody's own server vs uvicorn + Starlette through ``hub.asgi``.

    python bench/asgi_vs_native.py              # N=1,000, 5 s phases, 3 interleaved repeats
    python bench/asgi_vs_native.py --quick      # N=200, 2 s phases, 1 repeat: under a minute

The server is the benchmark hub of ``bench/servers/melody_hub.py`` ("B..." broadcast to every
session, anything else echoed), unchanged, served in a fresh process per run either natively
(``hub.serve``) or as ``WebSocketRoute("/", hub.asgi)`` in a Starlette app under uvicorn (its
default WebSocket protocol, compression off as on the native side); both on uvloop. Each run is
``melody bench`` (``melody.bench.run_bench``: compiled client codec, client processes pinned
apart from the server) with the ``echo`` and ``saturation`` workloads: closed-loop round trips
per second, and broadcast frames delivered per second. Every figure carries the harness's
check (each receiver verifies sequence numbers; messages lost must be 0).

Prints a table of medians with the ratio native / ASGI (how many times better the native
server is): the rates, and the server CPU each frame or round trip cost, the figure to trust
on a machine that other processes share (the harness marks such phases "contended"). Writes
the JSON document to ``--json`` (default ``bench/results/asgi-vs-native-<time>.json``);
``--print-json`` also writes it to stdout.
Exit status 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

try:
    import melody
except ImportError:  # a source checkout not installed: use it in place (built in place)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import melody
from compare import fill_defaults, ready_port, server_env, stop_process

from melody.bench import BenchError, BenchOptions, run_bench
from melody.bench.report import FIGURES, Figure, align, format_value, lookup, write_json
from melody.bench.stats import median
from melody.bench.system import environment, parse_cpus

HERE = os.path.dirname(os.path.abspath(__file__))
MODES = ("native", "asgi")
WORKLOADS = ("echo", "saturation")
QUICK = {"connections": 200, "duration": 2.0, "warmup": 0.5, "repeats": 1}
DEFAULTS = {"connections": 1000, "duration": 5.0, "warmup": 1.0, "repeats": 3}


# -- the server process ----------------------------------------------------------------------


def make_hub() -> melody.Melody:
    """The benchmark hub, the very one ``bench/compare.py`` measures."""
    sys.path.insert(0, os.path.join(HERE, "servers"))
    from melody_hub import make_hub as make  # type: ignore[import-not-found]

    hub: melody.Melody = make()
    return hub


async def serve(mode: str, host: str, port: int) -> None:
    """Serve the hub in ``mode``; print ``READY <port>``; run until terminated."""
    hub = make_hub()
    if mode == "native":
        server = await hub.serve(host, port)
        print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
        await server.serve_forever()
        return
    import socket

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route, WebSocketRoute

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse({"server": "melody-asgi", "pid": os.getpid(), "stats": hub.stats()})

    app = Starlette(routes=[Route("/stats", stats), WebSocketRoute("/", hub.asgi)])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False,
                            ws_per_message_deflate=False, backlog=1024)
    uv_server = uvicorn.Server(config)
    task = asyncio.create_task(uv_server.serve(sockets=[sock]))
    while not uv_server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.01)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    await task


# -- the driver --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--connections", type=int, default=None,
                   help="saturation: connections receiving every broadcast (default 1000)")
    p.add_argument("--echo-connections", type=int, default=100,
                   help="echo: connections doing round trips (default 100)")
    p.add_argument("--echo-depth", type=int, default=1,
                   help="echo: requests in flight per connection (default 1)")
    p.add_argument("--window", type=int, default=32,
                   help="saturation: broadcasts in flight at most (default 32)")
    p.add_argument("--size", type=int, default=64, help="message size in bytes (default 64)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds measured per phase (default 5)")
    p.add_argument("--warmup", type=float, default=None, help="seconds before measuring")
    p.add_argument("--repeats", type=int, default=None,
                   help="interleaved runs per mode; the table shows medians (default 3)")
    p.add_argument("--server-cpu", type=int, default=None,
                   help="core for the server (default: the first available)")
    p.add_argument("--client-cpus", default=None,
                   help="cores for the client processes (default: the others)")
    p.add_argument("--processes", type=int, default=None,
                   help="client processes (default: one per client core)")
    p.add_argument("--seed", type=int, default=20240601, help="seed (default fixed)")
    p.add_argument("--quick", action="store_true",
                   help="N=200, 2 s phases, 1 repeat (explicit options still win)")
    p.add_argument("--json", default=None,
                   help="where to write the JSON (default bench/results/asgi-vs-native-*.json)")
    p.add_argument("--print-json", action="store_true", help="also print the JSON on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    return fill_defaults(p.parse_args(argv), DEFAULTS, QUICK)


def say(args: argparse.Namespace, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def server_process(mode: str) -> Any:
    """Start this script with ``--serve MODE --port 0``; yield ``(process, port)``; stop it."""
    env = server_env()
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", mode],
                            stdout=subprocess.PIPE, stderr=log, env=env, text=True)
    try:
        port = ready_port(proc)
        if port is None:
            log.seek(0)
            raise BenchError(f"{mode} server did not start:\n{log.read()[-2000:]}")
        yield proc, port
    finally:
        stop_process(proc)
        log.seek(0)
        errors = log.read()
        log.close()
        if errors.strip():
            print(f"[{mode} server stderr]\n{errors[-2000:]}", file=sys.stderr)


def pinning(args: argparse.Namespace) -> tuple[int | None, list[int] | None]:
    """The server's core and the clients' cores, decided once for every run.

    ``run_bench`` pins the calling process to the client cores and derives the split from its
    own affinity, so a second run in the same process would see only those: the split is
    computed here, before the first run, and the affinity restored after each.
    """
    clients = parse_cpus(args.client_cpus) if args.client_cpus else None
    if not hasattr(os, "sched_getaffinity"):
        return args.server_cpu, clients
    available = sorted(os.sched_getaffinity(0))
    server = args.server_cpu if args.server_cpu is not None else available[0]
    if clients is None:
        clients = [c for c in available if c != server] or None
    return server, clients


def options(args: argparse.Namespace, mode: str, port: int, pid: int) -> BenchOptions:
    return BenchOptions(
        url=f"ws://127.0.0.1:{port}/",
        connections=args.connections,
        workloads=list(WORKLOADS),
        processes=args.processes,
        server_pid=pid,
        server_cpu=args.cpus[0],
        client_cpus=args.cpus[1],
        size=args.size,
        duration=args.duration,
        warmup=args.warmup,
        window=args.window,
        echo_connections=args.echo_connections,
        echo_depth=args.echo_depth,
        settle=0.5,
        seed=args.seed,
        label=f"melody-{mode}",
        quiet=args.quiet,
    )


SHOWN: tuple[Figure, ...] = tuple(f for f in FIGURES if f.workload in WORKLOADS)

# Server CPU per unit of work: unlike a rate, it holds up on a machine that other processes
# share (the harness notes a "contended" phase), because it counts only the server's own time.
COST: tuple[Figure, ...] = (
    Figure("saturation", "server_cpu_us_per_frame", "saturation: server CPU us/frame", False, 2),
    Figure("echo", "server_cpu_us_per_roundtrip", "echo: server CPU us/round trip", False, 1),
)
_RATE = {"saturation": "frames_per_s", "echo": "roundtrips_per_s"}


def cpu_cost(report: dict[str, Any], workload: str) -> float | None:
    """Microseconds of server CPU per frame delivered (saturation) or round trip (echo)."""
    phase = report["workloads"].get(workload)
    if phase is None:
        return None
    rate = phase["figures"].get(_RATE[workload])
    cpu_s = phase["cpu"].get("server_cpu_s")
    wall = phase["cpu"].get("wall_s")
    if not rate or cpu_s is None or not wall:
        return None
    return float(cpu_s) / (float(rate) * float(wall)) * 1e6


def summarize(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the figures, and the checks, over one mode's repeats."""
    values = {f"{f.workload}.{f.path}": median([lookup(r, f) for r in reports]) for f in SHOWN}
    for f in COST:
        values[f"{f.workload}.{f.path}"] = median([cpu_cost(r, f.workload) for r in reports])
    checks: dict[str, Any] = {}
    for w in WORKLOADS:
        present = [r["workloads"][w] for r in reports if w in r["workloads"]]
        checks[w] = {
            "ok": bool(present) and all(p["check"].get("ok") for p in present),
            "lost": sum(p["check"].get("lost") or 0 for p in present),
            "client_bound": any(p.get("client_bound") for p in present),
            "contended": any(p.get("contended") for p in present),
            "server_cpu_pct": median([p["cpu"].get("server_pct") for p in present]),
        }
    return {"values": values, "checks": checks, "repeats": len(reports)}


def speedup(figure: Figure, native: float | None, asgi: float | None) -> float | None:
    """How many times better the native figure is (above 1: native better)."""
    if native is None or asgi is None or native <= 0 or asgi <= 0:
        return None
    return native / asgi if figure.higher_is_better else asgi / native


def table(summary: dict[str, Any], ratios: dict[str, float | None]) -> str:
    rows = [["figure", "native", "asgi (uvicorn+starlette)", "native / asgi"]]
    for f in (*SHOWN, *COST):
        key = f"{f.workload}.{f.path}"
        times = ratios[key]
        rows.append([f.label + ("" if f.higher_is_better else " (lower better)"),
                     format_value(summary["native"]["values"][key], f.digits),
                     format_value(summary["asgi"]["values"][key], f.digits),
                     "-" if times is None else f"{times:.2f}x"])
    for w in WORKLOADS:
        cells = []
        for mode in MODES:
            c = summary[mode]["checks"][w]
            cpu = c["server_cpu_pct"]
            cells.append(f"{'ok' if c['ok'] else 'FAILED'} (lost {c['lost']})"
                         + ("" if cpu is None else f", server {cpu:.0f}% CPU")
                         + (" client-bound" if c["client_bound"] else "")
                         + (" contended" if c["contended"] else ""))
        rows.append([f"{w}: check", *cells, ""])
    return align(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        melody.install_uvloop()
        asyncio.run(serve(args.serve, args.host, args.port))
        return 0
    started = time.time()
    args.cpus = pinning(args)
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    say(args, f"asgi vs native: N={args.connections:,} (saturation), "
              f"{args.echo_connections} x depth {args.echo_depth} (echo), "
              f"{args.duration:g} s phases, {args.repeats} repeat(s)")
    for r in range(args.repeats):
        order = MODES if r % 2 == 0 else MODES[::-1]  # interleaved: drift is shared
        for mode in order:
            say(args, f"\n=== {mode} (repeat {r + 1}/{args.repeats}) ===")
            with server_process(mode) as (proc, port):
                try:
                    report = run_bench(options(args, mode, port, proc.pid))
                finally:
                    if affinity is not None:
                        os.sched_setaffinity(0, affinity)
            report["repeat"] = r + 1
            runs[mode].append(report)
    summary = {m: summarize(runs[m]) for m in MODES}
    ratios = {f"{f.workload}.{f.path}": speedup(
        f, summary["native"]["values"][f"{f.workload}.{f.path}"],
        summary["asgi"]["values"][f"{f.workload}.{f.path}"]) for f in (*SHOWN, *COST)}
    ok = all(c["ok"] and c["lost"] == 0 for s in summary.values() for c in s["checks"].values())
    versions: dict[str, str | None] = {}
    for name in ("uvicorn", "starlette", "websockets", "uvloop"):
        try:
            versions[name] = __import__(name).__version__
        except (ImportError, AttributeError):
            versions[name] = None
    document = {
        "tool": "bench/asgi_vs_native.py",
        "command": " ".join(["bench/asgi_vs_native.py", *(sys.argv[1:] if argv is None
                                                             else argv)]),
        "started_unix": round(started, 3),
        "elapsed_s": round(time.time() - started, 1),
        "options": {k: v for k, v in vars(args).items() if k not in ("serve", "host", "port")},
        "pinning": {"server_cpu": args.cpus[0], "client_cpus": args.cpus[1]},
        "environment": dict(environment(), asgi_versions=versions),
        "summary": summary,
        "native_over_asgi": ratios,
        "ok": ok,
        "runs": runs,
    }
    path = args.json or os.path.join(
        HERE, "results", f"asgi-vs-native-{time.strftime('%Y%m%d-%H%M%S')}.json")
    write_json(document, path)
    print(table(summary, ratios))
    print(f"\nuvicorn {versions['uvicorn']}, starlette {versions['starlette']}, "
          f"websockets {versions['websockets']}; medians of {args.repeats}; JSON: {path}")
    if args.print_json:
        print(json.dumps({k: v for k, v in document.items() if k != "runs"}, indent=1,
                         default=str))
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
