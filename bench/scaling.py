"""Broadcast latency as cores are added: W = 1, 2, 4, ... server cores, N = 10k, 50k, 100k.

    python bench/scaling.py                          # W=1,2,4 (as far as the cores go), N=10k,50k
    python bench/scaling.py --workers 1,2 -n 10000 --quick
    python bench/scaling.py --workers 1,2,4,8 -n 10000,50000,100000 --servers melody,gomelody,picows

For every N and W, each server runs pinned to W cores (cores ``--first-server-cpu`` onwards)
and is driven by ``melody bench`` from the other cores: melody as ``melody serve --workers W``
(one hub over its workers' machine-local bus), Go's olahol/melody with ``GOMAXPROCS=W``. The
Python peers (picows, websockets, aiohttp) have no way to share a broadcast between processes:
they run at W=1 only. Workloads: ``latency`` (``--rate`` broadcasts/s to all N, every receiver
stamping its delivery time) and, with ``--saturation``, ``saturation`` (broadcasts as fast as
they are delivered). Each cell carries its check (every connection got every broadcast once, in
order) and the CPU each side used, and the share of the load generator is printed beside it:
a machine with no core left for the clients (2 cores at W=2) runs them on the server's cores,
which the table says plainly instead of hiding.

A server process holds one file descriptor per connection: where the per-process limit
(``ulimit -Hn``) is below N and cannot be raised (no CAP_SYS_RESOURCE), a single-process
server cannot take N connections, and the cell says so; melody with W workers needs N/W.
``--min-workers-for-limit`` lets melody use more worker processes than cores in that case.

Writes ``bench/results/scaling-<time>.json`` and prints a Markdown table (the one
bench/README.md carries).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from typing import Any

import compare

from melody.bench import BenchError, run_bench
from melody.bench.report import write_json
from melody.bench.stats import median
from melody.bench.system import environment, format_cpus, parse_cpus, raise_nofile

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", default="melody,gomelody,picows",
                   help="comma-separated, melody first (default melody,gomelody,picows)")
    p.add_argument("--workers", default="1,2,4",
                   help="server core counts W, comma-separated (default 1,2,4; those this"
                        " machine cannot give W cores plus one for the clients are skipped"
                        " unless --share-cores)")
    p.add_argument("-n", "--connections", default="10000,50000",
                   help="connection counts, comma-separated (default 10000,50000)")
    p.add_argument("--first-server-cpu", type=int, default=0,
                   help="servers are pinned to W cores from this one on (default 0)")
    p.add_argument("--client-cpus", default=None,
                   help="cores of the load generator (default: those the servers do not use)")
    p.add_argument("--share-cores", action="store_true",
                   help="run a W that leaves no core for the clients, on shared cores (the"
                        " table marks it); on a 2-core machine this is how W=2 is measured")
    p.add_argument("--min-workers-for-limit", action="store_true",
                   help="when N connections exceed one process's descriptor limit, run"
                        " melody with enough workers to hold them (more processes than W"
                        " cores, all pinned to the W cores)")
    p.add_argument("--saturation", action="store_true",
                   help="also measure saturation (frames/s) for each cell")
    p.add_argument("--rate", type=float, default=5.0, help="broadcasts/s (default 5)")
    p.add_argument("--duration", type=float, default=None, help="seconds per phase (10)")
    p.add_argument("--repeats", type=int, default=None, help="runs per cell, medians (1)")
    p.add_argument("--quick", action="store_true", help="3 s phases")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    args.server_list = [s.strip() for s in args.servers.split(",") if s.strip()]
    args.worker_list = [int(w) for w in args.workers.split(",") if w.strip()]
    args.connection_list = [int(n) for n in args.connections.split(",") if n.strip()]
    if args.duration is None:
        args.duration = 3.0 if args.quick else 10.0
    if args.repeats is None:
        args.repeats = 1
    if any(w < 1 for w in args.worker_list) or any(n < 1 for n in args.connection_list):
        p.error("--workers and --connections must be positive")
    return args


def descriptor_limit() -> int | None:
    """Descriptors one process may hold here, after raising what may be raised."""
    soft, _hard = raise_nofile(1 << 20)
    return soft if soft > 0 else None


def plan_cell(args: argparse.Namespace, name: str, n: int, w: int,
              available: list[int], limit: int | None) -> tuple[dict[str, Any], str | None]:
    """How to run ``name`` at N=n on W=w cores: its options, or why it cannot run here."""
    if w > 1 and name not in compare.MULTICORE_SERVERS:
        return {}, f"{name} has no multi-process broadcast: W=1 only"
    first = args.first_server_cpu
    cores = available[first:first + w]
    if len(cores) < w:
        return {}, f"W={w} needs {w} cores from CPU {first}; this machine has {len(available)}"
    clients = (parse_cpus(args.client_cpus) if args.client_cpus
               else [c for c in available if c not in cores])
    shared = False
    if not clients:
        if not args.share_cores:
            return {}, (f"W={w} leaves no core for the load generator on {len(available)}"
                        " cores (--share-cores runs it anyway, marked)")
        clients, shared = list(cores), True
    processes = w
    if limit is not None and n + 1024 > limit * (w if name in compare.MULTICORE_SERVERS else 1):
        if name == "melody" and args.min_workers_for_limit:
            processes = -(-n // max(limit - 1024, 1))
        elif name == "melody":
            return {}, (f"N={n:,} needs {-(-n // max(limit - 1024, 1))} processes under this"
                        f" machine's {limit:,}-descriptor limit (--min-workers-for-limit)")
        else:
            return {}, (f"N={n:,} connections exceed the {limit:,} descriptors one process may"
                        " hold here (ulimit -Hn; raising it needs CAP_SYS_RESOURCE)")
    return {"cores": cores, "clients": clients, "shared": shared, "processes": processes}, None


def run_cell(args: argparse.Namespace, name: str, n: int, w: int,
             plan: dict[str, Any]) -> list[dict[str, Any]]:
    workloads = "latency,saturation" if args.saturation else "latency"
    argv = ["--servers", name, "-n", str(n), "-w", workloads, "--repeats", "1",
            "--duration", str(args.duration), "--rate", str(args.rate),
            "--server-cpus", format_cpus(plan["cores"]).replace(" ", ""),
            "--client-cpus", ",".join(str(c) for c in plan["clients"]),
            "--out", args.out]
    if args.quiet:
        argv.append("--quiet")
    options = compare.parse_args(argv)
    options.workers = plan["processes"]
    reports = []
    for r in range(args.repeats):
        compare.say(options, f"\n=== {name}, N={n:,}, W={w} (run {r + 1}/{args.repeats}) ===")
        with compare.server_process(name, args.out, workers=plan["processes"],
                                    nofile=n + 1024) as (proc, port):
            reports.append(run_bench(compare.bench_options(options, name, port, proc.pid)))
    return reports


def cell_summary(reports: list[dict[str, Any]]) -> dict[str, Any]:
    def figure(workload: str, *path: str) -> float | None:
        values = []
        for report in reports:
            node: Any = report["workloads"].get(workload)
            for key in ("figures", *path):
                node = node.get(key) if isinstance(node, dict) else None
            values.append(node)
        return median(values)

    def cpu(workload: str, key: str) -> float | None:
        return median([r["workloads"].get(workload, {}).get("cpu", {}).get(key)
                       for r in reports])

    checks = [w["check"] for r in reports for w in r["workloads"].values()]
    return {
        "p50_ms": figure("latency", "latency_ms", "p50"),
        "p99_ms": figure("latency", "latency_ms", "p99"),
        "frames_per_s": figure("saturation", "frames_per_s"),
        "server_pct": cpu("latency", "server_pct"),
        "client_pct": cpu("latency", "client_pct"),
        "other_pct": cpu("latency", "other_pct"),
        "overloaded": any(r["workloads"].get("latency", {}).get("figures", {}).get("overloaded")
                          for r in reports),
        "client_bound": any(r["workloads"].get("latency", {}).get("client_bound")
                            for r in reports),
        "ok": all(c.get("ok") for c in checks),
        "lost": sum(c.get("lost") or 0 for c in checks),
    }


def markdown(cells: list[dict[str, Any]], saturation: bool) -> str:
    header = ["N", "W", "server", "p50 ms", "p99 ms"]
    if saturation:
        header.append("frames/s")
    header += ["CPU % server / clients / other", "check"]
    rows = [header]
    for c in cells:
        if c.get("skipped"):
            rows.append([f"{c['n']:,}", str(c["w"]), c["server"], "-", "-",
                         *(["-"] if saturation else []), "-", f"not run: {c['skipped']}"])
            continue
        s = c["summary"]
        marks = ("!" if s["overloaded"] else "") + ("*" if s["client_bound"] else "")
        row = [f"{c['n']:,}", str(c["w"]) + (" (shared)" if c["shared"] else "")
               + (f" ({c['processes']} proc)" if c["processes"] != c["w"] else ""),
               c["server"], _num(s["p50_ms"], 2) + marks, _num(s["p99_ms"], 2) + marks]
        if saturation:
            row.append(_num(s["frames_per_s"], 0))
        row += [f"{_num(s['server_pct'], 0)} / {_num(s['client_pct'], 0)} / "
                f"{_num(s['other_pct'], 0)}",
                ("ok" if s["ok"] else "FAILED") + f" (lost {s['lost']})"]
        rows.append(row)
    return "\n".join(_as_markdown(rows))


def _as_markdown(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(rows[0], widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows[1:]]
    return lines


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(
        range(os.cpu_count() or 1))
    limit = descriptor_limit()
    started = time.time()
    cells: list[dict[str, Any]] = []
    for n in args.connection_list:
        for w in args.worker_list:
            for name in args.server_list:
                plan, why = plan_cell(args, name, n, w, available, limit)
                cell: dict[str, Any] = {"n": n, "w": w, "server": name}
                if why is not None:
                    if not (w > 1 and name not in compare.MULTICORE_SERVERS):
                        print(f"scaling: {name} N={n:,} W={w}: not run: {why}",
                              file=sys.stderr)
                        cells.append(dict(cell, skipped=why))
                    continue
                try:
                    reports = run_cell(args, name, n, w, plan)
                except BenchError as exc:
                    cells.append(dict(cell, skipped=f"failed: {exc}"))
                    continue
                cells.append(dict(cell, shared=plan["shared"], processes=plan["processes"],
                                  cores=plan["cores"], clients=plan["clients"],
                                  summary=cell_summary(reports), runs=reports))
    env = environment()
    env["descriptor_limit"] = limit
    command = ["bench/scaling.py", *(sys.argv[1:] if argv is None else argv)]
    document = {"tool": "bench/scaling.py",
                "command": " ".join(shlex.quote(c) for c in command),
                "started_unix": round(started, 3), "elapsed_s": round(time.time() - started, 1),
                "environment": env, "options": {k: v for k, v in vars(args).items()},
                "cells": cells,
                "ok": all(c["summary"]["ok"] for c in cells if "summary" in c)}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = os.path.join(args.out, f"scaling-{stamp}.json")
    write_json(document, path)
    print(f"\n$ python {document['command']}")
    print(f"{env.get('cpu_model')}, {len(available)} CPUs; descriptors per process: {limit};"
          f" latency at {args.rate:g} broadcasts/s, {args.duration:g} s, medians of"
          f" {args.repeats}\n")
    print(markdown(cells, args.saturation))
    print("\n!: overloaded (the server could not keep up with --rate; the latency is a"
          " queue's). *: client-bound (the receivers needed more CPU than the server). (shared):"
          " no core was left for the load generator; it ran on the server's cores.")
    print(f"\nJSON: {path}\nelapsed {document['elapsed_s']:.0f} s; "
          + ("all checks passed" if document["ok"] else "SOME CHECKS FAILED"))
    return 0 if document["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
