"""Run the same workloads against melody and its peers in one run; print the ratios.

    python bench/compare.py                 # N=10,000, 3 interleaved repeats, all workloads
    python bench/compare.py --quick         # N=1,000, short phases, 1 repeat: ~2 minutes

Each server of ``bench/servers/`` (the same benchmark hub written idiomatically for melody,
picows, websockets and aiohttp, all on uvloop, compression off) is started fresh for every
run, pinned to one core, and driven by ``melody bench`` (melody's compiled client codec,
client processes pinned to the other cores). Repeats are interleaved (melody, picows, ...,
then again in a rotated order) so that a slow minute of a noisy machine does not land on one
server only; the table shows medians. A ratio is "how many times better melody is" (above 1:
melody is better), whatever the direction of the figure; a ratio from a figure measured on a
saturated load generator is marked, never silently reported.

Writes ``bench/results/compare-<time>.json`` (every run's full report, the medians, the
ratios and the environment) and ``.png`` (latency CDF per server, throughput bars).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import shlex
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
from melody.bench import DEFAULT_WORKLOADS, WORKLOADS, BenchError, BenchOptions, run_bench
from melody.bench.report import FIGURES, Figure, align, format_value, lookup, plot, write_json
from melody.bench.stats import median
from melody.bench.system import environment, parse_cpus, raise_nofile

HERE = os.path.dirname(os.path.abspath(__file__))
SERVERS = ("melody", "picows", "websockets", "aiohttp")
# Measured when asked for by name (--servers melody,gomelody,...): Go's olahol/melody, built
# with the machine's Go on first use (bench/servers/gomelody_hub.py says what it needs).
OPTIONAL_SERVERS = ("gomelody",)
# The servers that use --workers W: melody as `melody serve --workers W` (one hub over its
# workers' machine-local bus), Go melody as GOMAXPROCS=W. The Python peers have no way to
# share a broadcast between processes and always run as one process.
MULTICORE_SERVERS = {"melody": "--workers", "melody@base": "--workers",
                     "gomelody": "--gomaxprocs"}
# The server name of --baseline's hub: melody's benchmark hub run from another source tree.
BASELINE = "melody@base"
BASELINE_TREE: str | None = None
QUICK = {"connections": 1000, "duration": 3.0, "warmup": 0.5, "settle": 1.0, "repeats": 1}
DEFAULTS = {"connections": 10_000, "duration": 10.0, "warmup": 1.0, "settle": 2.0, "repeats": 3}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", default=",".join(SERVERS),
                   help=f"comma-separated, melody first for ratios (default {','.join(SERVERS)})")
    p.add_argument("-n", "--connections", type=int, default=None,
                   help="connections (default 10000; --quick 1000)")
    p.add_argument("-w", "--workload", default="all",
                   help="comma-separated workloads or 'all' (every one but cluster, which"
                        f" bench/cluster.py runs): {', '.join(DEFAULT_WORKLOADS)}")
    p.add_argument("--repeats", type=int, default=None,
                   help="interleaved runs per server; the table shows medians (default 3)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds measured per phase (default 10; --quick 3)")
    p.add_argument("--warmup", type=float, default=None, help="seconds before measuring")
    p.add_argument("--settle", type=float, default=None,
                   help="seconds before reading server RSS (default 2)")
    p.add_argument("--rate", type=float, default=5.0, help="latency: broadcasts/s (default 5)")
    p.add_argument("--window", type=int, default=32,
                   help="saturation: broadcasts in flight at most (default 32)")
    p.add_argument("--size", type=int, default=64, help="message size in bytes (default 64)")
    p.add_argument("--echo-connections", type=int, default=100,
                   help="echo: connections (default 100)")
    p.add_argument("--echo-depth", type=int, default=1,
                   help="echo: requests in flight per connection (default 1)")
    p.add_argument("--connect-concurrency", type=int, default=64,
                   help="connect: handshakes in flight (default 64)")
    p.add_argument("--churn-concurrency", type=int, default=50,
                   help="churn: cycles in flight (default 50)")
    p.add_argument("--server-cpu", type=int, default=None,
                   help="core for the servers (default: the first available)")
    p.add_argument("--client-cpus", default=None,
                   help="cores for the client processes (default: the others)")
    p.add_argument("--workers", type=int, default=1, metavar="W",
                   help="melody serves from W worker processes (melody serve --workers W),"
                        " Go melody runs with GOMAXPROCS=W; the Python peers stay one process."
                        " Give --server-cpus W cores to pin the servers to")
    p.add_argument("--server-cpus", default=None,
                   help="cores for the servers, e.g. 0-3 (default: --server-cpu's one core,"
                        " or with --workers W the first W cores)")
    p.add_argument("--source-addresses", default=None, metavar="SPEC",
                   help="source addresses for the connections (see melody bench --help);"
                        " default: as many loopback addresses as --connections needs")
    p.add_argument("--processes", type=int, default=None,
                   help="client processes (default: one per client core)")
    p.add_argument("--nice", type=int, default=None,
                   help="nice value for servers and clients, e.g. -10 on a shared machine"
                        " (root only; default: unchanged)")
    p.add_argument("--seed", type=int, default=20240601, help="seed (default fixed)")
    p.add_argument("--quick", action="store_true",
                   help="N=1000, 3 s phases, 1 repeat (explicit options still win)")
    p.add_argument("--out", default=os.path.join(HERE, "results"),
                   help="directory for the JSON and PNG (default bench/results)")
    p.add_argument("--baseline", default=None, metavar="TREE",
                   help="another melody source tree, built in place (e.g. a git worktree of an"
                        " older commit): its hub runs as the server 'melody@base' right after"
                        " melody, so that old and new are measured in one run")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    args = fill_defaults(p.parse_args(argv), DEFAULTS, QUICK)
    args.server_list = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(args.server_list) - set(SERVERS) - set(OPTIONAL_SERVERS)
    if unknown:
        p.error(f"unknown server(s) {sorted(unknown)}; known: {', '.join(SERVERS)}")
    if args.baseline is not None:
        args.baseline = os.path.abspath(args.baseline)
        if not os.path.isdir(os.path.join(args.baseline, "melody", "_core")):
            p.error(f"--baseline {args.baseline!r} holds no melody/_core")
        at = args.server_list.index("melody") + 1 if "melody" in args.server_list else 0
        args.server_list.insert(at, BASELINE)
    args.workloads = list(DEFAULT_WORKLOADS) if args.workload == "all" else [
        w.strip() for w in args.workload.split(",") if w.strip()]
    return args


def fill_defaults(args: argparse.Namespace, defaults: dict[str, Any],
                  quick: dict[str, Any]) -> argparse.Namespace:
    """Give every option left unset (None) its default, the ``quick`` one under ``--quick``:
    an option given explicitly always wins."""
    for key, value in dict(defaults, **(quick if args.quick else {})).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def say(args: argparse.Namespace, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def server_process(name: str, log_dir: str, extra_args: list[str] | None = None,
                   workers: int = 1, nofile: int | None = None) -> Any:
    """Start ``bench/servers/<name>_hub.py --port 0 [extra_args]``; yield ``(process, port)``;
    stop it. ``workers`` > 1 runs a multi-core server on that many processes or threads
    (:data:`MULTICORE_SERVERS`); ``nofile``: the descriptors the server needs (its
    RLIMIT_NOFILE is raised to it where this process may)."""
    env = server_env(BASELINE_TREE if name == BASELINE else None)
    script = os.path.join(HERE, "servers", f"{name.partition('@')[0]}_hub.py")
    log = tempfile.NamedTemporaryFile(
        "w+", prefix=f"{name}-", suffix=".log", dir=log_dir, delete=False)
    args = list(extra_args or [])
    if workers > 1 and name in MULTICORE_SERVERS:
        args += [MULTICORE_SERVERS[name], str(workers)]

    def limits() -> None:
        # Runs in the child before exec: one descriptor per connection, and as root past the
        # hard limit (100,000 connections need more than the usual 20,000 or 65,536).
        if nofile is not None:
            raise_nofile(nofile)

    proc = subprocess.Popen([sys.executable, script, "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=log, env=env, text=True,
                            preexec_fn=limits if os.name == "posix" else None)
    keep_log = True
    try:
        port = ready_port(proc)
        if port is None:
            log.seek(0)
            raise BenchError(f"{name} server did not start:\n{log.read()[-2000:]}")
        yield proc, port
        if proc.poll() is not None:
            raise BenchError(f"{name} server exited during the run (code {proc.returncode});"
                             f" its stderr is in {log.name}")
        keep_log = False
    finally:
        stop_process(proc)
        log.close()
        # Kept only when the server failed: a run that went well leaves no file behind.
        with contextlib.suppress(OSError):
            if not keep_log or os.path.getsize(log.name) == 0:
                os.unlink(log.name)


def server_env(melody_root: str | None = None) -> dict[str, str]:
    """The environment of a server process: this one's, plus the very melody this harness
    runs (a source checkout built in place or an installed wheel; ``melody_root`` for another
    tree) on PYTHONPATH, whatever the current directory, and unbuffered output."""
    env = dict(os.environ)
    if melody_root is None:
        melody_root = os.path.dirname(os.path.dirname(os.path.abspath(melody.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [melody_root, env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def ready_port(proc: subprocess.Popen[str], timeout: float = 30.0) -> int | None:
    """The port of a server's ``READY <port>`` line; None if it exits or ``timeout`` passes
    first."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=0.5):
                if proc.poll() is not None:
                    return None
                continue
            line = proc.stdout.readline()
            if not line:
                return None
            if line.startswith("READY "):
                return int(line.split()[1])
    return None


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL after 5 s; reaped either way."""
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def bench_options(args: argparse.Namespace, name: str, port: int, pid: int) -> BenchOptions:
    return BenchOptions(
        url=f"ws://127.0.0.1:{port}/",
        connections=args.connections,
        workloads=args.workloads,
        processes=args.processes,
        server_pid=pid,
        server_cpu=args.server_cpu,
        server_cpus=server_cpus(args),
        source_addresses=args.source_addresses,
        client_cpus=parse_cpus(args.client_cpus) if args.client_cpus else None,
        size=args.size,
        rate=args.rate,
        duration=args.duration,
        warmup=args.warmup,
        window=args.window,
        echo_connections=args.echo_connections,
        echo_depth=args.echo_depth,
        connect_concurrency=args.connect_concurrency,
        churn_concurrency=args.churn_concurrency,
        settle=args.settle,
        seed=args.seed,
        nice=args.nice,
        label=name,
        quiet=args.quiet,
    )


def server_cpus(args: argparse.Namespace) -> list[int] | None:
    """The cores the servers are pinned to: --server-cpus, or with --workers W the first W
    available cores (None: the runner's default, one core)."""
    if args.server_cpus:
        return parse_cpus(args.server_cpus)
    if args.workers > 1 and hasattr(os, "sched_getaffinity"):
        available = sorted(os.sched_getaffinity(0))
        return available[:args.workers]
    return None


def ratio(figure: Figure, ours: float | None, theirs: float | None) -> float | None:
    """How many times better melody's ``ours`` is than ``theirs`` (above 1: melody better)."""
    if ours is None or theirs is None or ours <= 0 or theirs <= 0:
        return None
    return ours / theirs if figure.higher_is_better else theirs / ours


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians, client-bound flags and checks per server, over its repeats."""
    out: dict[str, Any] = {}
    for name, reports in runs.items():
        values = {f"{f.workload}.{f.path}": median([lookup(r, f) for r in reports])
                  for f in FIGURES}
        bound: dict[str, bool] = {}
        contended: dict[str, bool] = {}
        checks: dict[str, Any] = {}
        for w in WORKLOADS:
            present = [r["workloads"][w] for r in reports if w in r["workloads"]]
            if not present:
                continue
            bound[w] = any(p["client_bound"] for p in present)
            contended[w] = any(p.get("contended") for p in present)
            checks[w] = {
                "ok": all(p["check"].get("ok") for p in present),
                "lost": sum(p["check"].get("lost") or 0 for p in present),
                "server_drops": [p["check"].get("server_drops") for p in present],
                "client_pct": median([p["cpu"].get("client_pct") for p in present]),
                "server_pct": median([p["cpu"].get("server_pct") for p in present]),
                "other_pct": median([p["cpu"].get("other_pct") for p in present]),
            }
        # The latency CDF drawn for a server is that of its run with the median p50.
        with_latency = [r for r in reports if "latency" in r["workloads"]]
        cdf: list[list[float]] = []
        if with_latency:
            p50 = next(f for f in FIGURES if f.path == "latency_ms.p50")
            with_latency.sort(key=lambda r: lookup(r, p50) or 0.0)
            cdf = with_latency[len(with_latency) // 2]["workloads"]["latency"]["figures"]["cdf"]
        overloaded = any(r["workloads"]["latency"]["figures"].get("overloaded")
                         for r in with_latency)
        out[name] = {"values": values, "client_bound": bound, "contended": contended,
                     "latency_overloaded": overloaded,
                     "checks": checks, "cdf": cdf,
                     "repeats": len(reports)}
    return out


def table(summary: dict[str, Any], names: list[str]) -> str:
    """The side-by-side table: one row per figure, one column per server, ratios vs melody."""
    base = names[0]
    header = ["figure", *names]
    rows: list[list[str]] = []
    for f in FIGURES:
        key = f"{f.workload}.{f.path}"
        if all(summary[n]["values"].get(key) is None for n in names):
            continue
        row = [f.label + ("" if f.higher_is_better else " (lower better)")]
        ours = summary[base]["values"].get(key)
        for n in names:
            value = summary[n]["values"].get(key)
            cell = format_value(value, f.digits)
            if summary[n]["client_bound"].get(f.workload):
                cell += "*"
            if summary[n]["contended"].get(f.workload):
                cell += "~"
            if f.workload == "latency" and summary[n]["latency_overloaded"]:
                cell += "!"
            if n != base:
                times = ratio(f, ours, value)
                cell += f" ({times:.2f}x)" if times is not None else ""
            row.append(cell)
        rows.append(row)
    for w in WORKLOADS:
        if not any(w in summary[n]["checks"] for n in names):
            continue
        row = [f"{w}: check (lost), CPU % server/client/other"]
        for n in names:
            c = summary[n]["checks"].get(w)
            if c is None:
                row.append("-")
                continue
            verdict = "ok" if c["ok"] else "FAILED"
            sp, cp, op = ("-" if c[k] is None else f"{c[k]:.0f}"
                          for k in ("server_pct", "client_pct", "other_pct"))
            row.append(f"{verdict} ({c['lost']}) {sp}/{cp}/{op}")
        rows.append(row)
    lines = [align([header, *rows]), ""]
    lines.append(f"(Nx): how many times better {base} is than that server (above 1: {base} "
                 "better). *: client-bound in at least one repeat (a client process near 100%"
                 " CPU, or for latency the receivers needing more CPU than the server): read"
                 " no ratio from it. ~: contended (other processes on the machine used at least"
                 " 20% of a core during the phase in at least one repeat). !: overloaded (the"
                 " server could not deliver --rate broadcasts/s to every connection: the latency"
                 " is a queue's).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    global BASELINE_TREE
    args = parse_args(argv)
    BASELINE_TREE = args.baseline
    os.makedirs(args.out, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    names = args.server_list
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    started = time.time()
    command = [os.path.relpath(sys.argv[0]) if argv is None else "bench/compare.py",
               *(sys.argv[1:] if argv is None else argv)]
    say(args, f"compare: {', '.join(names)}; N={args.connections:,}; {args.repeats} repeat(s);"
              f" workloads {','.join(args.workloads)}")
    for r in range(args.repeats):
        # Interleave, rotating the order each repeat, so drift on a noisy machine is shared.
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            say(args, f"\n=== {name} (repeat {r + 1}/{args.repeats}) ===")
            with server_process(name, args.out, workers=args.workers,
                                nofile=max(args.connections, args.echo_connections) + 1024,
                                ) as (proc, port):
                report = run_bench(bench_options(args, name, port, proc.pid))
            report["repeat"] = r + 1
            runs[name].append(report)
    summary = summarize(runs)
    text = table(summary, names)
    env = environment()
    first = next(iter(runs.values()))[0]
    env["pinning"] = first["environment"]["pinning"]
    ratios = {
        n: {f"{f.workload}.{f.path}": ratio(f, summary[names[0]]["values"].get(
            f"{f.workload}.{f.path}"), summary[n]["values"].get(f"{f.workload}.{f.path}"))
            for f in FIGURES}
        for n in names[1:]
    }
    document = {
        "tool": "bench/compare.py",
        "command": " ".join(shlex.quote(c) for c in command),
        "started_unix": round(started, 3),
        "elapsed_s": round(time.time() - started, 1),
        "options": {k: v for k, v in vars(args).items()},
        "environment": env,
        "servers": {n: dict(summary[n], runs=runs[n]) for n in names},
        "ratios_vs_" + names[0]: ratios,
        "ok": all(c["ok"] for s in summary.values() for c in s["checks"].values()),
    }
    json_path = os.path.join(args.out, f"compare-{stamp}.json")
    png_path = os.path.join(args.out, f"compare-{stamp}.png")
    write_json(document, json_path)
    cpu = env.get("cpu_model")
    versions = env.get("versions", {})
    print(f"\n$ {document['command']}")
    server_cpus = env["pinning"].get("server_cpus") or [env["pinning"]["server_cpu"]]
    print(f"{cpu}, {env.get('cpu_count')} CPUs; servers on CPUs {server_cpus}"
          + (f" ({args.workers} workers / GOMAXPROCS)" if args.workers > 1 else "") + ", "
          f"clients on {env['pinning']['client_cpus']} "
          f"({env['pinning']['client_processes']} process(es)); Python {env.get('python')}"
          + (f"; nice {args.nice}" if args.nice is not None else ""))
    print(", ".join(f"{k} {v}" for k, v in versions.items() if v))
    print(f"N={args.connections:,}, {args.repeats} interleaved repeat(s), medians; "
          f"{args.duration:g} s phases; latency at {args.rate:g} broadcasts/s; "
          f"echo {args.echo_connections} connections x depth {args.echo_depth}\n")
    print(text)
    print(f"\nJSON: {json_path}")
    if plot(png_path, names, {n: summary[n]["values"] for n in names},
            {n: summary[n]["cdf"] for n in names},
            {n: summary[n]["client_bound"] for n in names},
            f"melody vs peers, N={args.connections:,}, medians of {args.repeats}",
            {n: summary[n]["contended"] for n in names}):
        print(f"PNG: {png_path}")
    print(f"elapsed {document['elapsed_s']:.0f} s; "
          + ("all checks passed" if document["ok"] else "SOME CHECKS FAILED"))
    return 0 if document["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
