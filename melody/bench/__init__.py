"""``melody bench``: a load generator for WebSocket hubs, shipped with melody.

Point it at any server that implements the benchmark hub (a text message starting with "B" is
broadcast to every connection, anything else is echoed to its sender)::

    melody bench ws://127.0.0.1:8000/ --connections 10000 --workload saturation

The clients speak WebSocket with melody's compiled sans-I/O codec over raw asyncio (uvloop)
protocols, spread over several pinned processes, so the load generator costs less per message
than the servers it measures. Every figure is reported with its correctness check (messages
lost) and the CPU both sides used; see ``melody bench --help`` and ``bench/README.md``.

From Python::

    from melody.bench import BenchOptions, run_bench
    report = run_bench(BenchOptions("ws://127.0.0.1:8000/", connections=1000))
"""

from __future__ import annotations

from melody.bench.cli import main
from melody.bench.runner import DEFAULT_WORKLOADS, WORKLOADS, BenchError, BenchOptions, run_bench

__all__ = ["DEFAULT_WORKLOADS", "WORKLOADS", "BenchError", "BenchOptions", "main", "run_bench"]
