"""The ``cluster`` workload: one logical hub over K processes sharing Redis, against one process.

    python bench/cluster.py                     # K=2 nodes, N=10,000, a redis-server of its own
    python bench/cluster.py --nodes 3 --quick   # N=1,000, short phases
    python bench/cluster.py --redis redis://127.0.0.1:6379   # an existing Redis (its counters!)

Starts a ``redis-server`` on a free loopback port (no persistence) unless ``--redis`` names one,
then, for each repeat, in this order:

1. ``single``: one ``bench/servers/melody_hub.py`` without a backplane, N connections on it;
2. ``cluster``: K hub processes with ``--redis`` (``melody.RedisBackplane``), N connections
   spread over them round-robin, the publisher on the first.

Both are driven by ``melody bench --workload cluster`` (a ``--rate`` latency phase, then a
saturation phase; every receiver checks it got every broadcast once, in order). The cluster run
also counts the PUBLISH commands Redis executed (``INFO commandstats``) per broadcast: one is
the design (a broadcast is published once, not once per node or per session), and the run
fails on anything else. The table shows both columns and the cluster/single ratio.

On a 2-core machine the K nodes share the one server core (the clients have the other), so the
cluster adds the broker's work without adding cores: read its figures as the cost of the
backplane, not as scale-out. With more cores, give the nodes their own (``--server-cpu`` pins
them all to one core; ``--no-pin`` lets the kernel spread them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

from compare import fill_defaults, server_process, stop_process

from melody.bench import BenchError, BenchOptions, run_bench
from melody.bench.redis_probe import RedisProbeError, publish_calls
from melody.bench.report import FIGURES, align, format_value, lookup, write_json
from melody.bench.stats import median
from melody.bench.system import environment, parse_cpus

HERE = os.path.dirname(os.path.abspath(__file__))
QUICK = {"connections": 1000, "duration": 3.0, "warmup": 0.5, "repeats": 1}
DEFAULTS = {"connections": 10_000, "duration": 10.0, "warmup": 1.0, "repeats": 1}
SHOWN = tuple(f for f in FIGURES if f.workload == "cluster")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=2, help="hub processes sharing Redis (default 2)")
    p.add_argument("-n", "--connections", type=int, default=None,
                   help="connections in all (default 10000; --quick 1000)")
    p.add_argument("--repeats", type=int, default=None,
                   help="single/cluster pairs; the table shows medians (default 1)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds measured per phase (default 10; --quick 3)")
    p.add_argument("--warmup", type=float, default=None, help="seconds before measuring")
    p.add_argument("--rate", type=float, default=5.0, help="latency: broadcasts/s (default 5)")
    p.add_argument("--window", type=int, default=32,
                   help="saturation: broadcasts in flight at most (default 32)")
    p.add_argument("--size", type=int, default=64, help="message size in bytes (default 64)")
    p.add_argument("--redis", default=None, metavar="URL",
                   help="use this Redis instead of starting one (its PUBLISH counter must not be"
                        " moved by anyone else during the run)")
    p.add_argument("--server-cpu", type=int, default=None,
                   help="core for the hub processes (default: the first available)")
    p.add_argument("--client-cpus", default=None,
                   help="cores for the client processes (default: the others)")
    p.add_argument("--no-pin", action="store_true", help="pin nothing to CPUs")
    p.add_argument("--quick", action="store_true",
                   help="N=1000, 3 s phases (explicit options still win)")
    p.add_argument("--out", default=os.path.join(HERE, "results"),
                   help="directory for the JSON (default bench/results)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    args = fill_defaults(p.parse_args(argv), DEFAULTS, QUICK)
    if args.nodes < 2:
        p.error("--nodes must be at least 2")
    return args


def say(args: argparse.Namespace, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def redis_server(log_dir: str) -> Iterator[str]:
    """A redis-server of this run's own on a free loopback port, no persistence; its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server is not installed (Debian: apt-get install redis-server);"
                         " or pass --redis URL")
    port = _free_port()
    url = f"redis://127.0.0.1:{port}"
    with tempfile.TemporaryFile(dir=log_dir) as log:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    publish_calls(url, timeout=1)
                    break
                except RedisProbeError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        raise BenchError("redis-server did not start:\n"
                                         + log.read().decode(errors="replace")[-2000:]) from None
                    time.sleep(0.05)
            yield url
        finally:
            stop_process(proc)


def options(args: argparse.Namespace, ports: list[int], pids: list[int],
            redis_url: str | None, label: str) -> BenchOptions:
    urls = [f"ws://127.0.0.1:{port}/" for port in ports]
    return BenchOptions(
        url=urls[0], extra_urls=urls[1:], redis_url=redis_url,
        connections=args.connections, workloads=["cluster"],
        server_pid=pids[0], server_cpu=args.server_cpu,
        client_cpus=parse_cpus(args.client_cpus) if args.client_cpus else None,
        pin=not args.no_pin, size=args.size, rate=args.rate, duration=args.duration,
        warmup=args.warmup, window=args.window, label=label, quiet=args.quiet)


def run_single(args: argparse.Namespace) -> dict[str, Any]:
    with server_process("melody", args.out) as (proc, port):
        return run_bench(options(args, [port], [proc.pid], None, "single"))


def wait_subscribed(port: int, timeout: float = 15.0) -> None:
    """Wait until the node on ``port`` reports its backplane connected and subscribed.

    A node subscribes to the hub-wide channel after it is listening (READY): a broadcast
    published before Redis confirmed that subscription would never reach the node's sessions.
    """
    deadline = time.monotonic() + timeout
    stats: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=2) as resp:
                stats = json.loads(resp.read()).get("stats", {})
        except (OSError, ValueError):
            stats = {}
        if stats.get("backplane_connected") == 1 and stats.get("backplane_channels", 0) >= 1:
            return
        time.sleep(0.05)
    raise BenchError(f"the node on port {port} did not subscribe to Redis in {timeout:g} s:"
                     f" {stats}")


def run_cluster(args: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        nodes = [stack.enter_context(server_process("melody", args.out, ["--redis", redis_url]))
                 for _ in range(args.nodes)]
        for _, port in nodes:
            wait_subscribed(port)
        return run_bench(options(args, [port for _, port in nodes],
                                 [proc.pid for proc, _ in nodes], redis_url,
                                 f"cluster x{args.nodes}"))


def table(reports: dict[str, list[dict[str, Any]]]) -> str:
    names = list(reports)
    rows = [["figure", *names, "cluster/single"]]
    for f in SHOWN:
        values = [median([lookup(r, f) for r in reports[n]]) for n in names]
        if f.path == "redis_publishes_per_broadcast":
            ratio = "-"
        elif values[0] and values[1]:
            ratio = f"{values[1] / values[0]:.2f}x"
        else:
            ratio = "-"
        rows.append([f.label + ("" if f.higher_is_better else " (lower better)"),
                     *(format_value(v, f.digits) for v in values), ratio])
    for n in names:
        checks = [r["workloads"]["cluster"]["check"] for r in reports[n]]
        flags = [r["workloads"]["cluster"] for r in reports[n]]
        text = ("ok" if all(c["ok"] for c in checks) else "FAILED") + (
            f" (lost {sum(c['lost'] for c in checks)}, out of order "
            f"{sum(c['out_of_order'] for c in checks)})")
        if any(w["client_bound"] for w in flags):
            text += " CLIENT-BOUND"
        if any(w["contended"] for w in flags):
            text += " CONTENDED"
        rows.append([f"{n}: check", *(text if m == n else "" for m in names), ""])
    return align(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    started = time.time()
    command = ["bench/cluster.py", *(sys.argv[1:] if argv is None else argv)]
    names = ["single", f"cluster x{args.nodes}"]
    reports: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    try:
        with contextlib.ExitStack() as stack:
            redis_url = args.redis or stack.enter_context(redis_server(args.out))
            for r in range(args.repeats):
                say(args, f"\n=== single process (repeat {r + 1}/{args.repeats}) ===")
                reports[names[0]].append(run_single(args))
                say(args, f"\n=== {args.nodes} processes sharing {redis_url} "
                          f"(repeat {r + 1}/{args.repeats}) ===")
                reports[names[1]].append(run_cluster(args, redis_url))
    except BenchError as exc:
        print(f"bench/cluster.py: {exc}", file=sys.stderr)
        return 2
    ok = all(r["ok"] for rs in reports.values() for r in rs)
    env = environment()
    document: dict[str, Any] = {
        "tool": "bench/cluster.py",
        "command": " ".join(shlex.quote(c) for c in command),
        "started_unix": round(started, 3),
        "elapsed_s": round(time.time() - started, 1),
        "options": vars(args),
        "environment": env,
        "runs": reports,
        "ok": ok,
    }
    path = os.path.join(args.out, f"cluster-{time.strftime('%Y%m%d-%H%M%S')}.json")
    write_json(document, path)
    print(f"\n$ {document['command']}")
    print(f"{env.get('cpu_model')}, {env.get('cpu_count')} CPUs; Python {env.get('python')}; "
          f"N={args.connections:,}; {args.duration:g} s phases; latency at {args.rate:g}"
          f" broadcasts/s; medians of {args.repeats}\n")
    print(table(reports))
    print(f"\nJSON: {path}")
    print(f"elapsed {document['elapsed_s']:.0f} s; "
          + ("all checks passed" if ok else "SOME CHECKS FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
