"""``melody bench URL ...``: the command line of the load generator."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from melody.bench.report import extract, format_table, plot, write_json
from melody.bench.runner import (
    DEFAULT_WORKLOADS,
    WORKLOADS,
    BenchError,
    BenchOptions,
    run_bench,
)
from melody.bench.system import parse_cpus

__all__ = ["build_parser", "options_from_args", "main"]

# --quick: small and short, a couple of minutes for a whole comparison.
QUICK = {"connections": 1000, "duration": 3.0, "warmup": 0.5, "settle": 1.0}

_DESCRIPTION = """\
Drive a WebSocket server with many client connections and report what it sustains.

The server must implement the benchmark hub: a text message starting with "B" is broadcast to
every connection, one starting with "{" is a JSON object the hub decodes and broadcasts encoded
again as JSON (json workload only), anything else is echoed to its sender. Workloads
(comma-separated, or all = every one but cluster):
  connect     open N connections, at most --connect-concurrency handshakes in flight
  idle        server RSS before/after N idle connections: KiB per connection
  latency     --rate stamped broadcasts/s to all N; publish-to-receive latency percentiles
  saturation  broadcasts as fast as the hub delivers them (at most --window in flight)
  json        saturation with JSON objects: decoded and re-encoded by the hub, decoded by
              every receiver
  echo        --echo-connections doing closed-loop round trips: round trips/s, RTT
  churn       connect, one echo, close, repeated: cycles/s and server RSS growth
  cluster     several URLs, the nodes of one hub sharing a broker: N connections spread over
              them, broadcasts published on the first; latency and saturation across nodes,
              and with --redis the broker's PUBLISH commands per broadcast (must be 1)
Every figure comes with its check: each receiver verifies sequence numbers, and messages
lost must be 0 (or equal the server's own drop counter when its /stats reports one).
Server RSS and CPU need its pid (--server-pid, or a --stats-url JSON with "pid"; a GET of
http://HOST:PORT/stats is tried by default). Exit status: 0 when every check passed, 1 when
one failed, 2 when the run could not be carried out.
"""


def build_parser(prog: str = "melody bench") -> argparse.ArgumentParser:
    """The argument parser of ``melody bench``."""
    p = argparse.ArgumentParser(
        prog=prog, description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", nargs="+",
                   help="the server, ws://HOST:PORT/PATH; several: connections are spread over"
                        " them (the nodes of one hub), the publisher on the first")
    p.add_argument("--redis", default=None, metavar="URL",
                   help="cluster: the broker the nodes share (redis://HOST:PORT), to count its"
                        " PUBLISH commands per broadcast")
    p.add_argument("-n", "--connections", type=int, default=None,
                   help="connections for connect/idle/latency/saturation (default 10000)")
    p.add_argument("-w", "--workload", default="all",
                   help="comma-separated workloads or 'all' (default: every one but"
                        f" cluster): {', '.join(WORKLOADS)}")
    p.add_argument("--processes", type=int, default=None,
                   help="client processes (default: one per client CPU)")
    p.add_argument("--server-pid", type=int, default=None,
                   help="the server's pid, for its RSS and CPU (and pinning)")
    p.add_argument("--stats-url", default=None,
                   help="a URL answering JSON {pid, stats}: default http://HOST:PORT/stats")
    p.add_argument("--server-cpu", type=int, default=None,
                   help="CPU the server is pinned to when its pid is known (default: first)")
    p.add_argument("--server-cpus", default=None,
                   help="CPUs for a server of several processes (melody serve --workers W,"
                        " GOMAXPROCS=W), e.g. 0-3: every server process is pinned to the set;"
                        " the clients get the other CPUs unless --client-cpus says otherwise")
    p.add_argument("--client-cpus", default=None,
                   help="CPUs for the client processes, e.g. 1 or 1-3 (default: the others)")
    p.add_argument("--source-addresses", default=None, metavar="SPEC",
                   help="source addresses for the connections: a range 127.0.0.1-127.0.0.8,"
                        " a list, or a count (default: as many loopback addresses as N needs,"
                        " ~22,000 connections each)")
    p.add_argument("--no-pin", action="store_true", help="do not pin anything to CPUs")
    p.add_argument("--nice", type=int, default=None,
                   help="nice value for the server (with --server-pid) and the clients, e.g."
                        " -10 on a shared machine (root only; default: unchanged)")
    p.add_argument("--size", type=int, default=64, help="message size in bytes (default 64)")
    p.add_argument("--rate", type=float, default=5.0,
                   help="latency: broadcasts per second (default 5)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds measured per latency/saturation/echo/churn phase (default 10)")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds of load before measuring (default 1)")
    p.add_argument("--window", type=int, default=32,
                   help="saturation: broadcasts in flight at most (default 32)")
    p.add_argument("--echo-connections", type=int, default=100,
                   help="echo: connections doing round trips (default 100)")
    p.add_argument("--echo-depth", type=int, default=1,
                   help="echo: requests in flight per connection, written together (default 1)")
    p.add_argument("--connect-concurrency", type=int, default=64,
                   help="connect: handshakes in flight at most (default 64)")
    p.add_argument("--churn-concurrency", type=int, default=50,
                   help="churn: connect/close cycles in flight (default 50)")
    p.add_argument("--churn-cycles", type=int, default=0,
                   help="churn: stop after this many cycles (default: --duration decides)")
    p.add_argument("--settle", type=float, default=None,
                   help="seconds to let the server settle before reading its RSS (default 2)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds for a handshake, a reply or a close (default 10)")
    p.add_argument("--seed", type=int, default=20240601,
                   help="seed of the payload padding (default fixed: the same bytes every run)")
    p.add_argument("--client-bound-threshold", type=float, default=90.0,
                   help="client CPU %% of a core from which a figure is flagged client-bound")
    p.add_argument("--contention-threshold", type=float, default=20.0,
                   help="CPU %% of a core used by other processes from which a phase is"
                        " flagged contended (default 20)")
    p.add_argument("--quick", action="store_true",
                   help="N=1000, 3 s phases: a smoke run (explicit options still win)")
    p.add_argument("--json", default=None, help="JSON report path (default melody-bench-*.json)")
    p.add_argument("--png", default=None, help="PNG plot path (default: beside the JSON)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--label", default=None, help="name of the server in the report")
    p.add_argument("--no-uvloop", action="store_true", help="client processes use asyncio")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return p


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """Turn parsed arguments into :class:`BenchOptions` (``--quick`` fills what is unset).

    Raises ValueError for invalid values.
    """
    workloads = list(DEFAULT_WORKLOADS) if args.workload == "all" else [
        w.strip() for w in args.workload.split(",") if w.strip()]
    defaults = {"connections": 10_000, "duration": 10.0, "warmup": 1.0, "settle": 2.0}
    if args.quick:
        defaults.update(QUICK)
    picked = {k: getattr(args, k) if getattr(args, k) is not None else v
              for k, v in defaults.items()}
    options = BenchOptions(
        url=args.url[0],
        extra_urls=list(args.url[1:]),
        redis_url=args.redis,
        connections=int(picked["connections"]),
        workloads=workloads,
        processes=args.processes,
        server_pid=args.server_pid,
        stats_url=args.stats_url,
        server_cpu=args.server_cpu,
        server_cpus=parse_cpus(args.server_cpus) if args.server_cpus else None,
        source_addresses=args.source_addresses,
        client_cpus=parse_cpus(args.client_cpus) if args.client_cpus else None,
        pin=not args.no_pin,
        nice=args.nice,
        size=args.size,
        rate=args.rate,
        duration=float(picked["duration"]),
        warmup=float(picked["warmup"]),
        window=args.window,
        echo_connections=args.echo_connections,
        echo_depth=args.echo_depth,
        connect_concurrency=args.connect_concurrency,
        churn_concurrency=args.churn_concurrency,
        churn_cycles=args.churn_cycles,
        settle=float(picked["settle"]),
        timeout=args.timeout,
        seed=args.seed,
        client_bound_threshold=args.client_bound_threshold,
        contention_threshold=args.contention_threshold,
        uvloop=not args.no_uvloop,
        label=args.label,
        quiet=args.quiet,
    )
    options.validate()
    return options


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``melody bench``; return the exit status (0 ok, 1 a check failed, 2 no run)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        options = options_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        report = run_bench(options)
    except BenchError as exc:
        print(f"melody bench: {exc}", file=sys.stderr)
        return 2
    report["command"] = ["melody", "bench", *(argv if argv is not None else sys.argv[1:])]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    json_path = args.json or f"melody-bench-{stamp}.json"
    write_json(report, json_path)
    print(format_table(report))
    print(f"\nJSON: {json_path}")
    if not args.no_plot:
        png_path = args.png or (json_path[:-5] if json_path.endswith(".json")
                                else json_path) + ".png"
        label = options.label or options.url
        data = extract(report)
        if plot(png_path, [label], {label: data["values"]}, {label: data["cdf"]},
                {label: data["bound"]}, f"melody bench {options.url}, N={options.connections:,}",
                {label: data["contended"]}):
            print(f"PNG: {png_path}")
        else:
            print("PNG: skipped (pip install matplotlib)")
    return 0 if report["ok"] else 1
