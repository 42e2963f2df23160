"""The coordinator: starts the client processes, runs the workloads, collects the figures.

Every workload follows the same pattern: reset the per-phase counters in every worker, drive
the load, measure a rate over an exact window from the shared counters (never from a
worker's own clock), drain what is in flight, then ask every worker what it received and what
is missing. A figure is reported together with that check (``lost``, ``out_of_order`` and,
when the server publishes stats, its own drop counter) and with the CPU the server and the
client processes used over the same window, so a figure measured on a saturated load
generator is flagged as such.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
import urllib.error
import urllib.request
from array import array
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import wait as wait_pipes
from typing import Any
from urllib.parse import urlsplit

from melody.bench.client import JSON_HEADER_SIZE, KIND_JSON
from melody.bench.progress import Progress
from melody.bench.redis_probe import RedisProbeError, publish_calls
from melody.bench.sources import check_bindable, parse_sources, plan_sources
from melody.bench.stats import cdf_points, summarize_ns
from melody.bench.system import (
    cpu_seconds,
    environment,
    format_cpus,
    machine_busy_seconds,
    pin,
    raise_nofile,
    renice,
    rss_kib,
)
from melody.bench.worker import SLOT, SLOTS, worker_main

__all__ = ["WORKLOADS", "DEFAULT_WORKLOADS", "BenchOptions", "BenchError", "Runner",
           "run_bench"]

#: Every workload, in the order a run performs them.
WORKLOADS = ("connect", "idle", "latency", "saturation", "json", "echo", "churn", "cluster")
#: What ``--workload all`` runs: every workload but ``cluster``, which is about several hub
#: processes sharing a broker and is asked for by name (see ``bench/cluster.py``).
DEFAULT_WORKLOADS = tuple(w for w in WORKLOADS if w != "cluster")

_POOL_WORKLOADS = frozenset(("connect", "idle", "latency", "saturation", "json", "cluster"))

# The CPUs this process may use before any run pinned it to the client CPUs: a second run in
# the same process (bench/compare.py) must plan from the whole set again.
_ALLOWED_CPUS: list[int] = (
    sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [])


class BenchError(RuntimeError):
    """A run could not be carried out (a worker died, nothing could connect, ...)."""


@dataclass
class BenchOptions:
    """Everything ``melody bench`` can be told; the defaults are its command-line defaults."""

    url: str
    connections: int = 10_000
    workloads: list[str] = field(default_factory=lambda: list(DEFAULT_WORKLOADS))
    #: More servers (nodes of one logical hub): connections are spread over ``url`` and these
    #: round-robin; the publisher is on ``url``.
    extra_urls: list[str] = field(default_factory=list)
    #: The broker the nodes share (``redis://host:port``): the ``cluster`` workload counts the
    #: PUBLISH commands it executed per broadcast.
    redis_url: str | None = None
    processes: int | None = None
    server_pid: int | None = None
    stats_url: str | None = None
    server_cpu: int | None = None
    #: Cores for a server of several processes (``melody serve --workers W``, Go's
    #: GOMAXPROCS=W): every server process is pinned to this set; overrides ``server_cpu``.
    server_cpus: list[int] | None = None
    client_cpus: list[int] | None = None
    #: Source addresses for the client connections (see :mod:`melody.bench.sources`): a spec
    #: such as ``"127.0.0.1-127.0.0.8"`` or a count; None: as many loopback addresses as the
    #: ephemeral-port range needs for ``connections`` (one below ~22,000 connections).
    source_addresses: str | None = None
    pin: bool = True
    size: int = 64
    rate: float = 5.0
    duration: float = 10.0
    warmup: float = 1.0
    window: int = 32
    echo_connections: int = 100
    echo_depth: int = 1
    connect_concurrency: int = 64
    churn_concurrency: int = 50
    churn_cycles: int = 0
    settle: float = 2.0
    timeout: float = 10.0
    seed: int = 20240601
    sample_cap: int = 1_000_000
    client_bound_threshold: float = 90.0
    contention_threshold: float = 20.0
    nice: int | None = None
    uvloop: bool = True
    label: str | None = None
    quiet: bool = False

    @property
    def urls(self) -> list[str]:
        """Every server driven: ``url`` first, then ``extra_urls``."""
        return [self.url, *self.extra_urls]

    def validate(self) -> None:
        """Raise ValueError for an option that cannot work."""
        for url in self.urls:
            if urlsplit(url).scheme != "ws":
                raise ValueError(f"URL must be ws://HOST:PORT/PATH, got {url!r}")
        if self.redis_url is not None and urlsplit(self.redis_url).scheme != "redis":
            raise ValueError(f"--redis must be redis://HOST:PORT, got {self.redis_url!r}")
        if "json" in self.workloads and self.size < JSON_HEADER_SIZE:
            raise ValueError(f"--size must be at least {JSON_HEADER_SIZE} bytes for the json"
                             " workload (its JSON header)")
        unknown = set(self.workloads) - set(WORKLOADS)
        if unknown:
            raise ValueError(f"unknown workload(s) {sorted(unknown)}; known: {WORKLOADS}")
        if self.source_addresses:
            parse_sources(self.source_addresses)
        if self.connections < 1 or self.echo_connections < 1 or self.echo_depth < 1:
            raise ValueError("--connections, --echo-connections and --echo-depth must be >= 1")
        if self.size < 33:
            raise ValueError("--size must be at least 33 bytes (the stamped header)")
        if self.rate <= 0 or self.duration <= 0 or self.warmup < 0 or self.window < 1:
            raise ValueError("--rate and --duration must be > 0, --warmup >= 0, --window >= 1")


def _per_op(cpu: dict[str, Any], ops: float, what: str) -> dict[str, float | None]:
    """Server and client CPU microseconds per operation over a measured window.

    CPU time per operation hardly moves when other processes share the machine (they take
    wall-clock time, not the work each operation needs): on a noisy machine it is the figure
    to compare servers by.
    """
    out: dict[str, float | None] = {}
    for side in ("server", "client"):
        seconds = cpu.get(f"{side}_cpu_s")
        out[f"{side}_cpu_us_per_{what}"] = (
            round(seconds / ops * 1e6, 3) if seconds is not None and ops > 0 else None)
    return out


class _CpuWindow:
    """CPU seconds of a set of processes over a wall-clock window, from /proc/<pid>/stat."""

    def __init__(self, server_pids: list[int], client_pids: list[int]) -> None:
        self.server_pids = server_pids
        self.client_pids = client_pids
        self.t0 = time.monotonic()
        self.server0 = self._server_seconds()
        self.client0 = [cpu_seconds(p) for p in client_pids]
        self.self0 = cpu_seconds(os.getpid())
        self.machine0 = machine_busy_seconds()

    def stop(self) -> dict[str, Any]:
        wall = max(time.monotonic() - self.t0, 1e-9)
        server1 = self._server_seconds()
        client1 = [cpu_seconds(p) for p in self.client_pids]
        per = [
            (b - a) / wall * 100 if a is not None and b is not None else None
            for a, b in zip(self.client0, client1)
        ]
        client_s = sum(
            (b - a) for a, b in zip(self.client0, client1) if a is not None and b is not None)
        server_s = (server1 - self.server0
                    if server1 is not None and self.server0 is not None else None)
        machine1 = machine_busy_seconds()
        self1 = cpu_seconds(os.getpid())
        other = None
        if (machine1 is not None and self.machine0 is not None and server_s is not None
                and self1 is not None and self.self0 is not None):
            # Everything the machine did besides the server, the clients and this process.
            other = max(0.0, (machine1 - self.machine0) - server_s - client_s
                        - (self1 - self.self0))
        return {
            "wall_s": round(wall, 3),
            "server_pct": round(server_s / wall * 100, 1) if server_s is not None else None,
            "server_cpu_s": round(server_s, 3) if server_s is not None else None,
            "client_pct": round(client_s / wall * 100, 1),
            "client_cpu_s": round(client_s, 3),
            "client_pct_per_process": [round(p, 1) if p is not None else None for p in per],
            "other_pct": round(other / wall * 100, 1) if other is not None else None,
        }

    def _server_seconds(self) -> float | None:
        # Several servers (the nodes of a cluster run) are one server to the figures: their
        # CPU seconds add up.
        if not self.server_pids:
            return None
        seconds = [cpu_seconds(pid) for pid in self.server_pids]
        return None if any(s is None for s in seconds) else sum(
            s for s in seconds if s is not None)


@dataclass
class _Phase:
    """What one workload reports: figures, the correctness check, CPU, the client-bound flag."""

    figures: dict[str, Any] = field(default_factory=dict)
    check: dict[str, Any] = field(default_factory=dict)
    cpu: dict[str, Any] = field(default_factory=dict)
    client_bound: bool = False
    client_bound_reason: str | None = None
    contended: bool = False
    notes: list[str] = field(default_factory=list)


class Runner:
    """One ``melody bench`` run against one server. Use :func:`run_bench`."""

    def __init__(self, options: BenchOptions) -> None:
        options.validate()
        self.o = options
        self.say: Callable[[str], None] = (
            (lambda _msg: None) if options.quiet
            else (lambda msg: print(msg, file=sys.stderr, flush=True)))
        self.workers: list[Any] = []
        self.pipes: list[Any] = []
        self.shared: Any = None
        self.view: memoryview | None = None
        self.next_seq = 1
        self.server_pid = options.server_pid
        self.stats_url = options.stats_url
        # Every server's pid and stats URL (the first is server_pid / stats_url).
        self.server_pids: list[int] = []
        self.stats_urls: list[str] = []
        self.server_pinned = False
        self.reniced = False
        self.client_cpus: list[int] | None = None
        self.server_cpu: int | None = None
        self.server_cpus: list[int] | None = None
        self.process_cpus: list[list[int] | None] = []
        self.bar = Progress(enabled=not options.quiet)
        self.sources: list[str] | None = None
        self.nofile: tuple[int, int] = (-1, -1)
        # A server of several processes (--workers): its stats URL -> the pids behind it.
        self.stats_pids: dict[str, list[int]] = {}
        self.expected_pids = 0

    # -- the server: pid, stats, RSS, CPU ------------------------------------------------------

    def _discover_server(self) -> None:
        for k, server_url in enumerate(self.o.urls):
            stats_url = self.stats_url if k == 0 else None
            pid = self.server_pid if k == 0 else None
            if stats_url is None:
                # Probed even when the pid is known: the server's own drop counter is what
                # lost messages are checked against.
                probe = f"http://{urlsplit(server_url).netloc}/stats"
                if self._fetch_stats(probe) is not None:
                    stats_url = probe
            pids: list[int] = []
            if stats_url is not None:
                body = self._fetch_stats(stats_url)
                # A server of several processes names them all ("pids"): its CPU and RSS are
                # theirs added up, and its counters are gathered from each (server_stats).
                listed = body.get("pids") if body is not None else None
                if isinstance(listed, list) and len(listed) > 1 and all(
                        isinstance(p, int) for p in listed):
                    pids = list(listed)
                    self.stats_pids[stats_url] = pids
                if pid is None and body is not None and isinstance(body.get("pid"), int):
                    pid = body["pid"]
            if pid is not None and not os.path.exists(f"/proc/{pid}"):
                self.say(f"melody bench: server pid {pid} is not visible here:"
                         " no RSS or server CPU figures")
                pid = None
            if k == 0:
                self.stats_url, self.server_pid = stats_url, pid
            if stats_url is not None:
                self.stats_urls.append(stats_url)
            if pids:
                self.server_pids.extend(p for p in pids if os.path.exists(f"/proc/{p}"))
                self.expected_pids += len(pids)
            elif pid is not None:
                self.server_pids.append(pid)
                self.expected_pids += 1
        if len(self.server_pids) != self.expected_pids:
            # CPU and RSS of some of the servers only would be read as those of all.
            self.server_pids = []

    @staticmethod
    def _fetch_stats(url: str) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                body = json.loads(response.read())
        except (OSError, ValueError, urllib.error.URLError):
            return None
        return body if isinstance(body, dict) else None

    def server_stats(self) -> dict[str, Any] | None:
        """The server's own counters (``stats`` of its /stats JSON), when it publishes them.

        With several servers, or a server of several processes, their integer counters added
        up (and None unless every one answered: a partial sum would pass for the whole).
        """
        if not self.stats_urls or len(self.stats_urls) != len(self.o.urls):
            return None
        bodies: list[dict[str, Any]] = []
        for stats_url in self.stats_urls:
            if stats_url in self.stats_pids:
                gathered = self._stats_of_each(stats_url, self.stats_pids[stats_url])
                if gathered is None:
                    return None
                bodies.extend(gathered)
                continue
            body = self._fetch_stats(stats_url)
            if body is None or not isinstance(body.get("stats"), dict):
                return None
            bodies.append(body)
        if len(bodies) == 1:
            return dict(bodies[0]["stats"])
        merged: dict[str, Any] = {}
        for body in bodies:
            for key, value in body["stats"].items():
                if isinstance(value, int) and not isinstance(value, bool):
                    merged[key] = merged.get(key, 0) + value
        return merged

    def _stats_of_each(self, stats_url: str, pids: list[int]) -> list[dict[str, Any]] | None:
        """The /stats of every process of a server of several processes that share a port:
        each request lands on one of them (the kernel spreads connections), so ask until each
        pid has answered, a bounded number of times."""
        seen: dict[int, dict[str, Any]] = {}
        for _ in range(40 * len(pids)):
            body = self._fetch_stats(stats_url)
            if body is not None and isinstance(body.get("stats"), dict) and isinstance(
                    body.get("pid"), int):
                seen[body["pid"]] = body
                if set(pids) <= set(seen):
                    return [seen[p] for p in pids]
        return None

    @staticmethod
    def _drops(stats: dict[str, Any] | None) -> int | None:
        if stats is None:
            return None
        if "frames_dropped" in stats:
            return int(stats["frames_dropped"])
        found = [int(v) for k, v in stats.items() if "drop" in k and isinstance(v, int)]
        return sum(found) if found else None

    def server_rss(self) -> int | None:
        """The servers' resident memory, KiB (their sum when there are several)."""
        if not self.server_pids:
            return None
        sizes = [rss_kib(pid) for pid in self.server_pids]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)

    def cpu_window(self) -> _CpuWindow:
        return _CpuWindow(self.server_pids, [p.pid for p in self.workers])

    # -- client processes ----------------------------------------------------------------------

    def _plan_cpus(self) -> None:
        o = self.o
        available = _ALLOWED_CPUS
        if o.pin and o.server_cpus:
            # A server of several processes on a set of cores; the clients on the others, or,
            # on a machine with no core left, on the same ones (reported as shared).
            self.server_cpus = list(o.server_cpus)
            self.server_cpu = self.server_cpus[0]
            self.client_cpus = o.client_cpus or (
                [c for c in available if c not in self.server_cpus] or list(available))
        elif o.pin and len(available) >= 2:
            server_cpu = o.server_cpu if o.server_cpu is not None else available[0]
            clients = o.client_cpus or [c for c in available if c != server_cpu]
            self.server_cpu = server_cpu
            self.server_cpus = [server_cpu]
            self.client_cpus = clients
        elif o.pin and o.client_cpus:
            self.server_cpu = o.server_cpu
            self.server_cpus = [o.server_cpu] if o.server_cpu is not None else None
            self.client_cpus = o.client_cpus
        processes = o.processes
        if processes is None:
            # One client process per client core: the server is single-threaded on its own
            # core, so more processes than client cores would only share them.
            processes = len(self.client_cpus) if self.client_cpus else max(
                1, (os.cpu_count() or 2) - 1)
        processes = max(1, min(processes, o.connections))
        # Each process needs one descriptor per connection plus a margin for its own files;
        # the limit is raised here (children inherit it) and, as root, past the hard limit.
        most = max(o.connections, o.echo_connections)
        soft, hard = raise_nofile(-(-most // processes) + 256)
        self.nofile = (soft, hard)
        if soft > 0:
            per_process_limit = max(soft - 64, 1)
            needed = -(-most // per_process_limit)
            if needed > processes:
                self.say(f"melody bench: {processes} process(es) cannot hold "
                         f"{most:,} descriptors under RLIMIT_NOFILE {soft} (hard {hard}; raise"
                         f" it with ulimit -n or run as root): using {needed} processes")
                processes = needed
        processes = max(1, min(processes, o.connections))
        if self.client_cpus:
            cpus = self.client_cpus
            self.process_cpus = [
                [cpus[i]] if processes <= len(cpus) else list(cpus) for i in range(processes)]
        else:
            self.process_cpus = [None] * processes

    def _plan_sources(self) -> list[str] | None:
        """Source addresses for the connections (None: the kernel chooses), checked."""
        o = self.o
        host = urlsplit(o.url).hostname or "127.0.0.1"
        per_target = -(-max(o.connections, o.echo_connections) // len(o.urls))
        sources = plan_sources(host, per_target, o.source_addresses)
        if sources is None:
            return None
        missing = check_bindable(sources)
        if missing:
            raise BenchError(
                f"cannot bind source address(es) {', '.join(missing[:5])}"
                f"{' ...' if len(missing) > 5 else ''}: {per_target:,} connections to one"
                " server need several source addresses. On Linux all of 127.0.0.0/8 is"
                " loopback; on macOS add aliases (sudo ifconfig lo0 alias 127.0.0.2 ...) or"
                " pass --source-addresses with addresses this machine has")
        self.say(f"melody bench: connections spread over {len(sources)} source address(es) "
                 f"{sources[0]}..{sources[-1]} (ephemeral ports per address run out first)")
        return sources

    def start(self) -> None:
        self._plan_cpus()
        if self.client_cpus:
            pin(0, self.client_cpus)
        self.sources = self._plan_sources()
        if self.server_pids and self.server_cpus and self.o.pin:
            self.server_pinned = all(pin(pid, self.server_cpus) for pid in self.server_pids)
        if self.o.nice is not None:
            self.reniced = renice(0, self.o.nice) and all(
                renice(pid, self.o.nice) for pid in self.server_pids)
        ctx = multiprocessing.get_context("spawn")
        n = len(self.process_cpus)
        self.shared = ctx.RawArray("q", n * SLOTS)
        self.view = memoryview(self.shared).cast("B").cast("q")
        base = {
            "url": self.o.url, "urls": self.o.urls, "size": self.o.size, "timeout": self.o.timeout,
            "sample_cap": max(self.o.sample_cap // n, 1000), "seed": self.o.seed,
            "uvloop": self.o.uvloop, "nice": self.o.nice, "sources": self.sources,
            "nofile": -(-max(self.o.connections, self.o.echo_connections) // n) + 256,
        }
        for i in range(n):
            parent, child = ctx.Pipe(duplex=True)
            opts = dict(base, cpus=self.process_cpus[i])
            proc = ctx.Process(target=worker_main, args=(i, child, self.shared, opts),
                               name=f"melody-bench-client-{i}", daemon=True)
            proc.start()
            child.close()
            self.workers.append(proc)
            self.pipes.append(parent)

    def stop(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("exit", ()))
            except OSError:
                pass
        deadline = time.monotonic() + 5
        for proc in self.workers:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(1)
        for pipe in self.pipes:
            pipe.close()
        self.workers = []
        self.pipes = []

    def total(self, slot: str) -> int:
        view = self.view
        assert view is not None
        offset = SLOT[slot]
        return sum(view[i * SLOTS + offset] for i in range(len(self.workers)))

    def call(self, name: str, args_per_worker: list[tuple[Any, ...]] | tuple[Any, ...],
             only: list[int] | None = None,
             progress: Callable[[], None] | None = None,
             interval: float = 2.0) -> list[Any]:
        """Send a command to workers (all, or ``only``) and wait for every reply."""
        targets = only if only is not None else list(range(len(self.workers)))
        for k, i in enumerate(targets):
            args = args_per_worker[k] if isinstance(args_per_worker, list) else args_per_worker
            self.pipes[i].send((name, args))
        replies: dict[int, Any] = {}
        pending: dict[Any, int] = {self.pipes[i]: i for i in targets}
        next_progress = time.monotonic() + interval
        while pending:
            ready = wait_pipes(list(pending), timeout=0.5)
            for ready_pipe in ready:
                pipe: Any = ready_pipe
                i = pending.pop(pipe)
                try:
                    status, value = pipe.recv()
                except EOFError:
                    raise BenchError(f"client process {i} died during {name!r}") from None
                if status != "ok":
                    raise BenchError(f"client process {i} failed in {name!r}:\n{value}")
                replies[i] = value
            for i in pending.values():
                if not self.workers[i].is_alive():
                    raise BenchError(f"client process {i} exited during {name!r}")
            if progress is not None and time.monotonic() >= next_progress:
                progress()
                next_progress = time.monotonic() + interval
        return [replies[i] for i in targets]

    def sleep(self, seconds: float, progress: Callable[[float], None] | None = None,
              interval: float = 2.0) -> None:
        """Sleep, calling ``progress(elapsed)`` every ``interval`` s; check the workers live."""
        start = time.monotonic()
        next_progress = start + interval
        while True:
            now = time.monotonic()
            left = start + seconds - now
            if left <= 0:
                return
            time.sleep(min(left, 0.1))
            for i, proc in enumerate(self.workers):
                if not proc.is_alive():
                    raise BenchError(f"client process {i} exited")
            if progress is not None and time.monotonic() >= next_progress:
                progress(time.monotonic() - start)
                next_progress += interval

    def split(self, total: int) -> list[int]:
        n = len(self.workers)
        return [total // n + (1 if i < total % n else 0) for i in range(n)]

    def _flag(self, phase: _Phase, cpu: dict[str, Any]) -> None:
        threshold = self.o.client_bound_threshold
        per = [p for p in cpu.get("client_pct_per_process", []) if p is not None]
        cores = len(self.client_cpus) if self.client_cpus else (os.cpu_count() or 1)
        cores = min(cores, len(per)) if per else cores
        reasons = []
        if per and max(per) >= threshold:
            reasons.append(f"a client process used {max(per):.0f}% of a core")
        elif cpu.get("client_pct") is not None and cpu["client_pct"] / max(cores, 1) >= threshold:
            reasons.append(f"client processes used {cpu['client_pct']:.0f}% of {cores} core(s)")
        if reasons:
            phase.client_bound = True
            phase.client_bound_reason = "; ".join(reasons)
        other = cpu.get("other_pct")
        if other is not None and other >= self.o.contention_threshold:
            phase.contended = True
            phase.notes.append(
                f"contended: other processes used {other:.0f}% of a core during the phase;"
                " figures are lower than on a quiet machine")

    # -- broadcast helpers ---------------------------------------------------------------------

    def _rx_start(self, record_latency: bool) -> int:
        replies = self.call("rx_start", (self.next_seq, record_latency))
        return sum(r["receivers"] for r in replies)

    def _drain(self, target: int, what: str) -> bool:
        """Wait until ``total(what)`` reaches ``target``; give up after 2 s without progress.

        The overall cap grows with ``target``: at N = 100,000 a saturation phase ends with
        millions of frames still queued, which take tens of seconds to drain while every
        moment shows progress (a floor of 50,000 frames/s is assumed)."""
        last = -1
        last_change = time.monotonic()
        deadline = time.monotonic() + max(self.o.timeout, 5) * 3 + target / 50_000
        while time.monotonic() < deadline:
            now_total = self.total(what)
            if now_total >= target:
                return True
            if now_total != last:
                last = now_total
                last_change = time.monotonic()
            elif time.monotonic() - last_change > 2.0:
                return False
            time.sleep(0.005)
        return False

    def _rx_end(self, next_seq: int) -> dict[str, Any]:
        replies = self.call("rx_end", (next_seq,))
        merged: dict[str, Any] = {
            k: sum(r[k] for r in replies)
            for k in ("receivers", "delivered", "lost", "connections_short", "out_of_order",
                      "unexpected", "protocol_errors", "still_open", "latency_count")
        }
        samples = array("q")
        for r in replies:
            if r["latency_ns"] is not None:
                samples.extend(r["latency_ns"])
        merged["latency_ns"] = samples
        errors: dict[str, int] = {}
        for r in replies:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        merged["errors"] = errors
        closed = merged["receivers"] - merged["still_open"]
        merged["closed_note"] = None
        if closed > 0:
            # Not a silent loss: the frames such a connection missed are counted as lost (the
            # check fails), and this says why. A server closes a reader that stopped reading
            # for longer than its write timeout (melody and Go melody: write_wait, 10 s),
            # which an overloaded load generator can look like.
            merged["closed_note"] = (
                f"{closed:,} of {merged['receivers']:,} receiving connections were closed"
                " during the phase (by the server, e.g. a slow reader past its write timeout,"
                " or by the network): the frames they missed count as lost")
        return merged

    def _check(self, lost: int, out_of_order: int, drops: int | None,
               extra_failures: int = 0) -> dict[str, Any]:
        if drops is not None:
            ok = lost == drops and out_of_order == 0
            rule = "lost == server drops"
        else:
            ok = lost == 0 and out_of_order == 0
            rule = "lost == 0"
        ok = ok and extra_failures == 0
        return {"lost": lost, "out_of_order": out_of_order, "server_drops": drops,
                "rule": rule, "ok": ok}

    def _broadcast_round(self, count: int) -> dict[str, Any]:
        """Publish ``count`` broadcasts (windowed), drain, and return the merged check."""
        receivers = self._rx_start(False)
        self.call("publish", ("count", count, self.o.window, receivers), only=[0])
        (done,) = self.call("publish_wait", (self.o.timeout * 3,), only=[0])
        self.next_seq = done["next_seq"]
        self._drain(done["published"] * receivers, "delivered")
        end = self._rx_end(self.next_seq)
        end["published"] = done["published"]
        return end

    # -- workloads -----------------------------------------------------------------------------

    def phase_connect(self, want_idle: bool) -> tuple[_Phase, _Phase | None]:
        o = self.o
        connect = _Phase()
        n = o.connections
        counts = self.split(n)
        lanes = self.split(max(o.connect_concurrency, len(self.workers)))
        stats0 = self.server_stats()
        rss0 = self.server_rss()
        self.say(f"[connect] opening {n:,} connections "
                 f"({o.connect_concurrency} handshakes in flight, "
                 f"{len(self.workers)} client process(es))")
        cpu = self.cpu_window()
        start = time.monotonic()

        def progress() -> None:
            done = self.total("connected")
            rate = done / max(time.monotonic() - start, 1e-9)
            self.bar.show("connect", done / n, f"{done:,}/{n:,} open ({rate:,.0f}/s), "
                          f"{self.total('failed'):,} failed")

        try:
            replies = self.call("connect", [(c, k) for c, k in zip(counts, lanes)],
                                progress=progress, interval=2.0 if not self.bar.tty else 0.25)
        finally:
            self.bar.end()
        cpu_used = cpu.stop()
        ok = sum(r["ok"] for r in replies)
        failed = sum(r["failed"] for r in replies)
        if ok == 0:
            errors = {k: v for r in replies for k, v in r["errors"].items()}
            raise BenchError(f"no connection could be opened to {o.url}: {errors}")
        t_start = min(r["t_start"] for r in replies)
        t_end = max(r["t_end"] for r in replies)
        times = array("q")
        for r in replies:
            times.extend(r["handshake_ns"])
        elapsed = (t_end - t_start) / 1e9
        connect.figures = {
            "connections": n, "opened": ok, "failed": failed,
            "elapsed_s": round(elapsed, 3),
            "handshakes_per_s": round(ok / elapsed, 1) if elapsed > 0 else None,
            "handshake_ms": summarize_ns(times),
            "concurrency": o.connect_concurrency,
            **_per_op(cpu_used, ok, "handshake"),
        }
        errors = {k: v for r in replies for k, v in r["errors"].items()}
        if errors:
            connect.notes.append(f"connect errors: {errors}")
        connect.cpu = cpu_used
        self._flag(connect, cpu_used)
        self.say(f"[connect] {ok:,} open in {elapsed:.2f} s "
                 f"({connect.figures['handshakes_per_s'] or 0:,.0f}/s), {failed} failed")

        idle: _Phase | None = None
        if want_idle:
            idle = _Phase()
            self.say(f"[idle] holding {ok:,} idle connections for {o.settle:g} s")
            cpu = self.cpu_window()
            self.sleep(o.settle)
            idle.cpu = cpu.stop()
            rss1 = self.server_rss()
            per = ((rss1 - rss0) / ok) if rss0 is not None and rss1 is not None else None
            idle.figures = {
                "connections": ok, "rss_before_kib": rss0, "rss_after_kib": rss1,
                "kib_per_connection": round(per, 2) if per is not None else None,
            }
            if per is None:
                idle.notes.append("server RSS unavailable: pass --server-pid or --stats-url")

        # Every open connection must receive a broadcast: the check for both figures.
        verify = self._broadcast_round(1)
        drops = self._drops(self.server_stats())
        drops0 = self._drops(stats0)
        delta = drops - drops0 if drops is not None and drops0 is not None else None
        check = self._check(verify["lost"], verify["out_of_order"], delta)
        check["verified_connections"] = verify["receivers"]
        connect.check = dict(check, failed=failed, ok=check["ok"] and failed == 0)
        if idle is not None:
            idle.check = dict(check)
        self.say(f"[connect] verification broadcast: {verify['delivered']:,}/"
                 f"{verify['receivers']:,} delivered, lost {verify['lost']}")
        return connect, idle

    def phase_latency(self, tag: str = "latency") -> _Phase:
        o = self.o
        phase = _Phase()
        stats0 = self.server_stats()
        receivers = self._rx_start(True)
        self.say(f"[{tag}] {o.rate:g} broadcasts/s of {o.size} B to {receivers:,} "
                 f"connections for {o.duration:g} s")
        cpu = self.cpu_window()
        self.call("publish", ("rate", o.rate, o.window, receivers), only=[0])

        def progress(elapsed: float) -> None:
            self.bar.show(tag, elapsed / o.duration, f"{elapsed:4.1f}/{o.duration:g} s: "
                          f"{self.total('published'):,} published, "
                          f"{self.total('delivered'):,} delivered")

        try:
            self.sleep(o.duration, progress)
        finally:
            self.bar.end()
        (done,) = self.call("publish_stop", (), only=[0])
        # Broadcasts published but not yet delivered everywhere when publishing stopped: more
        # than a couple means the server could not keep up with --rate, and the latency is
        # that of a growing queue, not of the server below saturation.
        backlog = done["published"] - self.total("delivered") / max(receivers, 1)
        self.next_seq = done["next_seq"]
        complete = self._drain(done["published"] * receivers, "delivered")
        cpu_used = cpu.stop()
        end = self._rx_end(self.next_seq)
        drops = self._delta_drops(stats0)
        samples = end.pop("latency_ns")
        phase.figures = {
            "rate_per_s": o.rate, "published": done["published"], "receivers": receivers,
            "delivered": end["delivered"], "samples": len(samples),
            "latency_ms": summarize_ns(samples),
            "cdf": cdf_points(samples),
            "backlog_at_stop": round(backlog, 2),
            "overloaded": backlog > 2,
            **_per_op(cpu_used, end["delivered"], "frame"),
        }
        phase.check = self._check(end["lost"], end["out_of_order"], drops)
        phase.cpu = cpu_used
        if backlog > 2:
            phase.notes.append(
                f"overloaded: {backlog:.1f} broadcasts were still on their way when publishing"
                f" stopped: the server delivers less than {o.rate:g}/s x {receivers:,}; this"
                " latency is a queue's, lower --rate to measure the server below saturation")
        self._flag(phase, cpu_used)
        server_s, client_s = cpu_used.get("server_cpu_s"), cpu_used.get("client_cpu_s")
        if not phase.client_bound and server_s is not None and client_s is not None:
            # The receivers read a broadcast while the server is still writing it: when the
            # client side needs more CPU per broadcast than the server, the latency measured
            # is the load generator's own reading time.
            if client_s > 0.1 and client_s >= server_s:
                phase.client_bound = True
                phase.client_bound_reason = (
                    f"client CPU {client_s:.2f} s >= server CPU {server_s:.2f} s over the"
                    " phase: the receivers, not the server, set the latency")
        if not complete:
            phase.notes.append("drain incomplete: some broadcasts never arrived")
        if end["closed_note"]:
            phase.notes.append(end["closed_note"])
        if end["errors"]:
            phase.notes.append(f"errors: {end['errors']}")
        lat = phase.figures["latency_ms"]
        self.say(f"[{tag}] p50 {lat['p50'] or 0:.2f} ms, p99 {lat['p99'] or 0:.2f} ms, "
                 f"max {lat['max'] or 0:.2f} ms; lost {end['lost']}")
        return phase

    def _delta_drops(self, stats0: dict[str, Any] | None) -> int | None:
        before = self._drops(stats0)
        after = self._drops(self.server_stats())
        return after - before if before is not None and after is not None else None

    def phase_saturation(self, tag: str = "saturation", kind: str = "B") -> _Phase:
        """Broadcasts as fast as they are delivered; ``kind`` "{" publishes JSON objects that
        the hub decodes and broadcasts encoded again (the ``json`` workload)."""
        o = self.o
        phase = _Phase()
        stats0 = self.server_stats()
        receivers = self._rx_start(False)
        what = "JSON objects" if kind == "{" else "broadcasts"
        self.say(f"[{tag}] publishing {what} to {receivers:,} connections, at most {o.window}"
                 f" in flight, {o.warmup:g} s warm-up + {o.duration:g} s")
        self.call("publish", ("window", 0, o.window, receivers, kind), only=[0])
        self.sleep(o.warmup)
        d0, t0 = self.total("delivered"), time.monotonic()
        cpu = self.cpu_window()

        def progress(elapsed: float) -> None:
            d = self.total("delivered")
            self.bar.show(tag, elapsed / o.duration, f"{elapsed:4.1f}/{o.duration:g} s: "
                          f"{(d - d0) / max(time.monotonic() - t0, 1e-9):,.0f} frames/s"
                          " delivered")

        try:
            self.sleep(o.duration, progress)
        finally:
            self.bar.end()
        d1, t1 = self.total("delivered"), time.monotonic()
        cpu_used = cpu.stop()
        (done,) = self.call("publish_stop", (), only=[0])
        self.next_seq = done["next_seq"]
        complete = self._drain(done["published"] * receivers, "delivered")
        end = self._rx_end(self.next_seq)
        drops = self._delta_drops(stats0)
        fps = (d1 - d0) / (t1 - t0)
        end.pop("latency_ns")
        phase.figures = {
            "receivers": receivers, "window": o.window, "published": done["published"],
            "delivered": end["delivered"], "measured_s": round(t1 - t0, 3),
            "frames_per_s": round(fps, 1), "broadcasts_per_s": round(fps / receivers, 2),
            **_per_op(cpu_used, d1 - d0, "frame"),
        }
        phase.check = self._check(end["lost"], end["out_of_order"], drops)
        phase.cpu = cpu_used
        self._flag(phase, cpu_used)
        if not complete:
            phase.notes.append("drain incomplete: some broadcasts never arrived")
        if end["closed_note"]:
            phase.notes.append(end["closed_note"])
        if end["errors"]:
            phase.notes.append(f"errors: {end['errors']}")
        self.say(f"[{tag}] {fps:,.0f} frames/s; lost {end['lost']}")
        return phase

    def phase_json(self) -> _Phase:
        """The saturation workload with JSON: each message published is a JSON object the hub
        decodes and broadcasts encoded again, its way (melody: ``broadcast_json``, encoded
        once; a peer: ``json.dumps`` as its API has it). Every receiver decodes every frame."""
        phase = self.phase_saturation("json", KIND_JSON)
        phase.figures["message"] = "json"
        return phase

    def phase_cluster(self) -> _Phase:
        """Broadcasts over the nodes of one logical hub: connections spread over every URL,
        published on the first node; every receiver, wherever it is connected, must get every
        broadcast once, in order. The ``--rate`` latency and the saturation figures, and the
        PUBLISH commands the broker executed per broadcast (one is the design: a broadcast is
        published once, not once per node)."""
        o = self.o
        phase = _Phase()
        counts = self._sessions_per_node()
        self.say(f"[cluster] {len(o.urls)} node(s); sessions per node: {counts}")
        redis0 = self._publish_calls()
        latency = self.phase_latency("cluster latency")
        saturation = self.phase_saturation("cluster saturation")
        redis1 = self._publish_calls()
        broadcasts = latency.figures["published"] + saturation.figures["published"]
        publishes = redis1 - redis0 if redis0 is not None and redis1 is not None else None
        per = round(publishes / broadcasts, 4) if publishes is not None and broadcasts else None
        phase.figures = {
            "nodes": len(o.urls),
            "sessions_per_node": counts,
            "receivers": saturation.figures["receivers"],
            "frames_per_s": saturation.figures["frames_per_s"],
            "saturation_server_cpu_us_per_frame":
                saturation.figures["server_cpu_us_per_frame"],
            "latency_rate_per_s": o.rate,
            "latency_ms": latency.figures["latency_ms"],
            "cdf": latency.figures["cdf"],
            "broadcasts": broadcasts,
            "redis_publishes": publishes,
            "redis_publishes_per_broadcast": per,
        }
        phase.check = {
            "lost": latency.check["lost"] + saturation.check["lost"],
            "out_of_order": latency.check["out_of_order"] + saturation.check["out_of_order"],
            "server_drops": None if latency.check["server_drops"] is None
            or saturation.check["server_drops"] is None
            else latency.check["server_drops"] + saturation.check["server_drops"],
            "rule": latency.check["rule"] + " in both phases"
            + ("; one PUBLISH per broadcast" if o.redis_url and len(o.urls) > 1 else ""),
            "ok": latency.check["ok"] and saturation.check["ok"],
        }
        if o.redis_url and len(o.urls) > 1:
            # Several nodes share the broker: every broadcast must cross it exactly once.
            phase.check["ok"] = phase.check["ok"] and publishes == broadcasts
        # The saturation phase's CPU (what the figures of a table show), the latency's beside.
        phase.cpu = dict(saturation.cpu, latency=latency.cpu)
        phase.client_bound = latency.client_bound or saturation.client_bound
        phase.client_bound_reason = "; ".join(
            f"{name}: {p.client_bound_reason}" for name, p in
            (("latency", latency), ("saturation", saturation)) if p.client_bound_reason) or None
        phase.contended = latency.contended or saturation.contended
        phase.notes = [f"latency: {n}" for n in latency.notes] + [
            f"saturation: {n}" for n in saturation.notes]
        if latency.figures.get("overloaded"):
            phase.figures["overloaded"] = True
        if o.redis_url is None:
            phase.notes.append("no --redis: the broker's PUBLISH count is not checked")
        self.say(f"[cluster] {saturation.figures['frames_per_s']:,.0f} frames/s, latency p99 "
                 f"{latency.figures['latency_ms']['p99'] or 0:.2f} ms, "
                 f"{per if per is not None else '?'} Redis PUBLISH per broadcast")
        return phase

    def _sessions_per_node(self) -> list[int | None]:
        counts: list[int | None] = []
        for url in self.stats_urls:
            body = self._fetch_stats(url)
            stats = body.get("stats") if body is not None else None
            counts.append(stats.get("sessions") if isinstance(stats, dict) else None)
        return counts

    def _publish_calls(self) -> int | None:
        if self.o.redis_url is None:
            return None
        try:
            return publish_calls(self.o.redis_url)
        except RedisProbeError as exc:
            raise BenchError(f"the cluster workload cannot read the broker's counters: {exc}"
                             ) from None

    def close_pool(self) -> dict[str, Any]:
        replies = self.call("close_all", (self.o.timeout,))
        return {k: sum(r[k] for r in replies) for k in ("closed", "clean", "aborted")}

    def phase_echo(self) -> _Phase:
        o = self.o
        phase = _Phase()
        c = o.echo_connections
        self.say(f"[echo] opening {c} connections")
        replies = self.call("connect", [(k, max(1, min(k, 16))) for k in self.split(c)])
        opened = [r["ok"] for r in replies]
        failed = sum(r["failed"] for r in replies)
        stats0 = self.server_stats()
        self.call("echo_start", [(k, True, o.echo_depth) for k in opened])
        self.say(f"[echo] {sum(opened)} connections doing round trips: "
                 f"{o.warmup:g} s warm-up + {o.duration:g} s")
        self.sleep(o.warmup)
        self.call("echo_reset_samples", ())
        r0, t0 = self.total("roundtrips"), time.monotonic()
        cpu = self.cpu_window()

        def progress(elapsed: float) -> None:
            r = self.total("roundtrips")
            self.say(f"[echo] {elapsed:4.1f}/{o.duration:g} s: "
                     f"{(r - r0) / max(time.monotonic() - t0, 1e-9):,.0f} round trips/s")

        self.sleep(o.duration, progress)
        r1, t1 = self.total("roundtrips"), time.monotonic()
        cpu_used = cpu.stop()
        ends = self.call("echo_stop", (o.timeout,))
        drops = self._delta_drops(stats0)
        samples = array("q")
        for e in ends:
            if e["rtt_ns"] is not None:
                samples.extend(e["rtt_ns"])
        lost = sum(e["lost"] for e in ends)
        rts = (r1 - r0) / (t1 - t0)
        phase.figures = {
            "connections": sum(opened), "depth": o.echo_depth, "measured_s": round(t1 - t0, 3),
            "roundtrips_per_s": round(rts, 1), "roundtrips": sum(e["roundtrips"] for e in ends),
            "rtt_ms": summarize_ns(samples),
            **_per_op(cpu_used, r1 - r0, "roundtrip"),
        }
        phase.check = self._check(lost, sum(e["out_of_order"] for e in ends), drops, failed)
        phase.check["failed_connections"] = failed
        phase.cpu = cpu_used
        self._flag(phase, cpu_used)
        self.close_pool()
        rtt = phase.figures["rtt_ms"]
        self.say(f"[echo] {rts:,.0f} round trips/s, p50 {rtt['p50'] or 0:.3f} ms, "
                 f"p99 {rtt['p99'] or 0:.3f} ms; lost {lost}")
        return phase

    def _settle_server(self) -> None:
        """Wait until the server reports no session left (or ``settle`` s without stats)."""
        deadline = time.monotonic() + max(self.o.settle, 1.0) * 3
        if self.stats_url is None:
            self.sleep(self.o.settle)
            return
        while time.monotonic() < deadline:
            stats = self.server_stats()
            if stats is not None and stats.get("sessions", 0) == 0:
                break
            time.sleep(0.1)
        time.sleep(min(self.o.settle, 0.5))

    def phase_churn(self) -> _Phase:
        o = self.o
        phase = _Phase()
        lanes = self.split(max(o.churn_concurrency, len(self.workers)))
        cycles_each = self.split(o.churn_cycles) if o.churn_cycles else [0] * len(self.workers)
        # The server's memory has a high-water mark that depends on how many connections are
        # in flight at once (allocator arenas, buffers): the warm-up must reach it, or the
        # growth measured afterwards is that plateau being reached, not a leak.
        warm = max(o.warmup, o.duration / 4, 0.5)
        self.say(f"[churn] warm-up {warm:g} s (connect, echo, close; {o.churn_concurrency}"
                 " at a time)")
        self.call("churn", [(warm, k, 0) for k in lanes])
        self._settle_server()
        rss0 = self.server_rss()
        stats0 = self.server_stats()
        self.say(f"[churn] {o.duration:g} s of connect/echo/close cycles; server RSS before "
                 f"{rss0 if rss0 is not None else '?'} KiB")
        cpu = self.cpu_window()
        start = time.monotonic()

        def progress() -> None:
            n = self.total("cycles")
            self.say(f"[churn] {time.monotonic() - start:4.1f}/{o.duration:g} s: {n:,} cycles "
                     f"({n / max(time.monotonic() - start, 1e-9):,.0f}/s)")

        replies = self.call("churn", [(o.duration, k, m) for k, m in zip(lanes, cycles_each)],
                            progress=progress)
        cpu_used = cpu.stop()
        elapsed = max(r["elapsed"] for r in replies)
        self._settle_server()
        rss1 = self.server_rss()
        drops = self._delta_drops(stats0)
        cycles = sum(r["cycles"] for r in replies)
        failed = sum(r["failed"] for r in replies)
        growth = (rss1 - rss0) if rss0 is not None and rss1 is not None else None
        phase.figures = {
            "cycles": cycles, "elapsed_s": round(elapsed, 3),
            "cycles_per_s": round(cycles / elapsed, 1) if elapsed > 0 else None,
            "concurrency": o.churn_concurrency,
            "rss_before_kib": rss0, "rss_after_kib": rss1, "rss_growth_kib": growth,
            "rss_growth_pct": round(growth / rss0 * 100, 3) if growth is not None and rss0
            else None,
            "rss_growth_bytes_per_cycle": round(growth * 1024 / cycles, 2)
            if growth is not None and cycles else None,
            "unclean_close": sum(r["unclean_close"] for r in replies),
            **_per_op(cpu_used, cycles, "cycle"),
        }
        phase.check = self._check(sum(r["lost"] for r in replies),
                                  sum(r["out_of_order"] for r in replies), drops, failed)
        phase.check["failed_connections"] = failed
        phase.cpu = cpu_used
        self._flag(phase, cpu_used)
        errors = {k: v for r in replies for k, v in r["errors"].items()}
        if errors:
            phase.notes.append(f"errors: {errors}")
        if rss0 is None:
            phase.notes.append("server RSS unavailable: pass --server-pid or --stats-url")
        self.say(f"[churn] {cycles:,} cycles ({phase.figures['cycles_per_s'] or 0:,.0f}/s), "
                 f"RSS {rss0} -> {rss1} KiB, failed {failed}")
        return phase

    # -- the whole run -------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        o = self.o
        started = time.time()
        self._discover_server()
        self.start()
        results: dict[str, Any] = {}
        closed: dict[str, Any] | None = None
        try:
            self.say(f"melody bench: {o.url}, {len(self.workers)} client process(es) on CPUs "
                     f"{format_cpus(self.client_cpus)}, server pid {self.server_pid or '?'}"
                     + (f" pinned to CPUs {format_cpus(self.server_cpus)}"
                        if self.server_pinned else ""))
            wanted = [w for w in WORKLOADS if w in o.workloads]
            if _POOL_WORKLOADS & set(wanted):
                connect, idle = self.phase_connect("idle" in wanted)
                if "connect" in wanted:
                    results["connect"] = connect
                if idle is not None:
                    results["idle"] = idle
                if "latency" in wanted:
                    results["latency"] = self.phase_latency()
                if "saturation" in wanted:
                    results["saturation"] = self.phase_saturation()
                if "json" in wanted:
                    results["json"] = self.phase_json()
                if "cluster" in wanted:
                    results["cluster"] = self.phase_cluster()
                closed = self.close_pool()
            if "echo" in wanted:
                results["echo"] = self.phase_echo()
            if "churn" in wanted:
                results["churn"] = self.phase_churn()
        finally:
            self.stop()
        env = environment()
        env["pinning"] = {
            "server_cpu": self.server_cpu, "server_cpus": self.server_cpus,
            "server_pinned": self.server_pinned, "source_addresses": self.sources,
            "client_cpus": self.client_cpus, "client_processes": len(self.process_cpus),
            "process_cpus": self.process_cpus,
            "nice": self.o.nice, "reniced": self.reniced,
        }
        env["rlimit_nofile"] = list(self.nofile)
        workloads = {name: asdict(phase) for name, phase in results.items()}
        return {
            "tool": "melody bench",
            "label": o.label,
            "started_unix": round(started, 3),
            "finished_unix": round(time.time(), 3),
            "target": {"url": o.url, "server_pid": self.server_pid,
                       "stats_url": self.stats_url, "urls": o.urls,
                       "server_pids": self.server_pids, "redis_url": o.redis_url},
            "options": asdict(o),
            "environment": env,
            "pool_close": closed,
            "workloads": workloads,
            "ok": all(w["check"].get("ok", False) for w in workloads.values()),
            "client_bound": sorted(k for k, w in workloads.items() if w["client_bound"]),
        }


def run_bench(options: BenchOptions) -> dict[str, Any]:
    """Run the workloads of ``options`` and return the report (the JSON document) as a dict.

    Raises :class:`BenchError` when the run cannot be carried out and ValueError for invalid
    options. Prints progress on stderr unless ``options.quiet``.
    """
    return Runner(options).run()
