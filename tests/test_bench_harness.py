"""``melody bench`` end to end: a real run against the melody benchmark hub on 127.0.0.1.

Small N and short phases: the test checks that every workload runs, reports its figures with
their correctness check (nothing lost) and the environment, and writes its JSON and PNG. It
asserts no timing: figures from a test machine mean nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import melody
from melody.bench.report import FIGURES, lookup
from melody.bench.stats import cdf_points, median, summarize_ns
from melody.bench.system import format_cpus, parse_cpus
from melody.bench.worker import Sampler

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ROOT / "bench" / "servers"

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@contextlib.contextmanager
def melody_hub() -> Iterator[tuple[subprocess.Popen[str], int]]:
    """The benchmark hub of bench/servers/melody_hub.py on a free port."""
    proc = subprocess.Popen([sys.executable, str(SERVERS / "melody_hub.py"), "--port", "0"],
                            stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY "), line
        yield proc, int(line.split()[1])
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("client_loop", ["uvloop", "asyncio"])
def test_every_workload_reports_figures_and_loses_nothing(tmp_path: Path,
                                                          client_loop: str) -> None:
    json_path = tmp_path / "report.json"
    png_path = tmp_path / "report.png"
    with melody_hub() as (server, port):
        args = [
            sys.executable, "-m", "melody", "bench", f"ws://127.0.0.1:{port}/",
            "--connections", "50", "--processes", "2", "--workload", "all",
            "--duration", "1", "--warmup", "0.2", "--settle", "0.3", "--rate", "20",
            "--echo-connections", "10", "--churn-concurrency", "5",
            "--json", str(json_path), "--png", str(png_path), "--quiet",
        ]
        if client_loop == "asyncio":
            args += ["--no-uvloop", "--no-pin"]
        done = subprocess.run(args, capture_output=True, text=True, timeout=180, env=_env(),
                              cwd=tmp_path)
        assert server.poll() is None, "the hub died during the run"
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all checks passed" in done.stdout

    report = json.loads(json_path.read_text())
    assert report["ok"] is True
    # The pid came from the hub's /stats; RSS and CPU figures need it.
    assert report["target"]["server_pid"] == server.pid
    assert set(report["workloads"]) == {"connect", "idle", "latency", "saturation", "echo",
                                        "churn"}
    for name, workload in report["workloads"].items():
        check = workload["check"]
        assert check["lost"] == 0, (name, check)
        assert check["out_of_order"] == 0, (name, check)
        # The melody hub publishes its drop counter: lost is checked against it, and the hub
        # was never asked to drop anything.
        assert check["server_drops"] == 0, (name, check)
        assert check["ok"] is True, (name, check)
        assert isinstance(workload["client_bound"], bool)
        assert workload["cpu"]["client_pct"] is not None
    for figure in FIGURES:
        if figure.path == "rss_growth_pct":
            continue  # None when the RSS did not move: a valid outcome
        assert lookup(report, figure) is not None, figure

    w = report["workloads"]
    assert w["connect"]["figures"]["opened"] == 50
    assert w["connect"]["check"]["failed"] == 0
    assert w["latency"]["figures"]["receivers"] == 50
    assert w["latency"]["figures"]["samples"] == (
        w["latency"]["figures"]["published"] * 50)
    assert w["saturation"]["figures"]["delivered"] == (
        w["saturation"]["figures"]["published"] * 50)
    assert w["echo"]["figures"]["connections"] == 10
    assert w["churn"]["figures"]["cycles"] > 0
    assert w["churn"]["check"]["failed_connections"] == 0

    env = report["environment"]
    assert env["versions"]["melody"]
    # The harness reports the core in use (the pure-Python one under MELODY_NO_EXTENSIONS=1).
    assert env["melody_compiled"] is melody.COMPILED
    assert env["pinning"]["client_processes"] == 2
    assert png_path.exists() or "skipped" in done.stdout


def test_a_server_that_is_not_there_is_reported_not_measured(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "melody", "bench", "ws://127.0.0.1:9/", "-n", "3",
         "--workload", "connect", "--timeout", "2", "--quiet", "--no-plot"],
        capture_output=True, text=True, timeout=60, env=_env(), cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no connection could be opened" in done.stderr


@pytest.mark.parametrize("script", [
    ["-m", "melody", "bench", "--help"],
    [str(ROOT / "bench" / "compare.py"), "--help"],
    *([str(p), "--help"] for p in sorted(SERVERS.glob("*_hub.py"))),
])
def test_every_script_has_help(script: list[str]) -> None:
    done = subprocess.run([sys.executable, *script], capture_output=True, text=True,
                          timeout=60, env=_env())
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout


def test_sampler_keeps_a_bounded_uniform_sample() -> None:
    sampler = Sampler(cap=100)
    for i in range(10_000):
        sampler.add(i)
    assert sampler.count == 10_000
    assert 50 <= len(sampler.values) < 100
    # Evenly spread: the kept values cover the whole run, not only its start.
    assert sampler.values[0] == 0 and sampler.values[-1] > 9_000


def test_percentiles_are_observed_values() -> None:
    samples = [i * 1_000_000 for i in range(1, 1001)]  # 1..1000 ms
    summary = summarize_ns(samples)
    assert summary["p50"] == 500.0 and summary["p99"] == 990.0 and summary["max"] == 1000.0
    assert summary["p99_9"] == 999.0 and summary["count"] == 1000
    points = cdf_points(samples, points=10)
    assert points[-1] == [1000.0, 1.0] and points[0][0] == 1.0
    assert summarize_ns([])["p50"] is None
    assert median([3.0, None, 1.0, 2.0]) == 2.0


def test_cpu_lists_round_trip() -> None:
    assert parse_cpus("0-2,5") == [0, 1, 2, 5]
    assert format_cpus([0, 1, 2, 5]) == "0-2,5"
    with pytest.raises(ValueError):
        parse_cpus("3-1")
