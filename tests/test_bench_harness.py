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
def bench_hub(name: str = "melody", *extra: str
              ) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """The benchmark hub of bench/servers/<name>_hub.py on a free port."""
    proc = subprocess.Popen([sys.executable, str(SERVERS / f"{name}_hub.py"), "--port", "0",
                             *extra], stdout=subprocess.PIPE, text=True, env=_env())
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
    with bench_hub() as (server, port):
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
    # "all" is every workload but cluster (several hub processes: its own test below).
    assert set(report["workloads"]) == {"connect", "idle", "latency", "saturation", "json",
                                        "echo", "churn"}
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
        if figure.path == "rss_growth_pct" or figure.workload == "cluster":
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
    assert w["json"]["figures"]["published"] > 0
    assert w["json"]["figures"]["delivered"] == w["json"]["figures"]["published"] * 50
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
    [str(ROOT / "bench" / "scaling.py"), "--help"],
    [str(ROOT / "bench" / "history.py"), "--help"],
    [str(ROOT / "bench" / "history.py"), "hub", "--help"],
    [str(ROOT / "bench" / "handler_overhead.py"), "--help"],
    *([str(p), "--help"] for p in sorted(SERVERS.glob("*_hub.py"))),
])
def test_every_script_has_help(script: list[str]) -> None:
    done = subprocess.run([sys.executable, *script], capture_output=True, text=True,
                          timeout=60, env=_env())
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="the server's CPU time is read from /proc")
def test_handler_overhead_measures_every_case_and_checks_the_echoes() -> None:
    # A tiny run of bench/handler_overhead.py: real hub processes, every case, both workloads.
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "handler_overhead.py"), "-m", "2000",
         "--warmup", "200", "-c", "2", "--rounds", "1"],
        capture_output=True, text=True, timeout=300, env=_env())
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    cases = {(s["workload"], s["case"]) for s in report["summary"]}
    assert cases == {(w, c) for w in ("echo", "route")
                     for c in ("off", "metrics", "otel-unsampled", "otel-sampled",
                               "metrics+otel")}
    for row in report["summary"]:
        assert row["lost"] == 0 and row["bad"] == 0, row
    assert all(r["messages"] == 2000 for r in report["runs"])


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


@pytest.mark.parametrize("server", ["melody", "picows", "websockets", "aiohttp"])
def test_the_json_workload_runs_against_every_hub(tmp_path: Path, server: str) -> None:
    """Each benchmark hub decodes the published JSON objects and broadcasts them as JSON; every
    receiver decodes every frame and checks the sequence numbers."""
    json_path = tmp_path / "report.json"
    with bench_hub(server) as (proc, port):
        done = subprocess.run(
            [sys.executable, "-m", "melody", "bench", f"ws://127.0.0.1:{port}/",
             "-n", "40", "--processes", "1", "--workload", "json", "--duration", "1",
             "--warmup", "0.2", "--json", str(json_path), "--no-plot", "--quiet",
             "--server-pid", str(proc.pid)],
            capture_output=True, text=True, timeout=120, env=_env(), cwd=tmp_path)
        assert proc.poll() is None, f"the {server} hub died during the run"
    assert done.returncode == 0, done.stdout + done.stderr
    workload = json.loads(json_path.read_text())["workloads"]["json"]
    figures, check = workload["figures"], workload["check"]
    assert figures["published"] > 0
    assert figures["delivered"] == figures["published"] * 40
    assert figures["frames_per_s"] > 0 and figures["server_cpu_us_per_frame"] is not None
    assert check["ok"] and check["lost"] == 0 and check["out_of_order"] == 0, check


BROKEN_JSON_HUB = """
import asyncio
import melody

hub = melody.Melody()

@hub.handle_message
def on_message(session, msg):
    if msg.startswith("{"):
        hub.broadcast(msg[:-1])  # the closing brace cut off: not JSON
    else:
        session.write(msg)

async def main():
    server = await hub.serve("127.0.0.1", 0)
    print("READY", server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()

asyncio.run(main())
"""


def test_a_hub_that_broadcasts_invalid_json_fails_the_json_check(tmp_path: Path) -> None:
    """Receivers decode every frame: text that is not the JSON object published is counted
    as unexpected, never as delivered, and the run fails instead of reporting a figure."""
    script = tmp_path / "broken_hub.py"
    script.write_text(BROKEN_JSON_HUB)
    json_path = tmp_path / "report.json"
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            env=_env())
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split()[1])
        done = subprocess.run(
            [sys.executable, "-m", "melody", "bench", f"ws://127.0.0.1:{port}/", "-n", "5",
             "--processes", "1", "--workload", "json", "--duration", "0.5", "--warmup", "0",
             "--json", str(json_path), "--no-plot", "--quiet"],
            capture_output=True, text=True, timeout=120, env=_env(), cwd=tmp_path)
    finally:
        proc.terminate()
        proc.wait(10)
    assert done.returncode == 1, done.stdout + done.stderr
    workload = json.loads(json_path.read_text())["workloads"]["json"]
    assert workload["figures"]["delivered"] == 0
    assert workload["check"]["ok"] is False and workload["check"]["lost"] > 0
    assert any("invalid JSON broadcast" in note for note in workload["notes"]), workload


def test_the_json_workload_refuses_a_size_too_small_for_its_object(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "melody", "bench", "ws://127.0.0.1:9/", "-n", "5",
         "--workload", "json", "--size", "40", "--quiet"],
        capture_output=True, text=True, timeout=60, env=_env(), cwd=tmp_path)
    assert done.returncode == 2
    assert "--size must be at least" in done.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="the cluster runs POSIX hub processes and a"
                    " redis-server, as tests/cluster does")
def test_the_cluster_workload_spreads_clients_over_nodes_and_publishes_once(
        tmp_path: Path) -> None:
    """bench/cluster.py: one hub process, then two sharing Redis; every receiver on either
    node gets every broadcast once, in order, and Redis executed exactly one PUBLISH per
    broadcast (counted by Redis itself, INFO commandstats)."""
    args = [sys.executable, str(ROOT / "bench" / "cluster.py"), "--quick", "-n", "60",
            "--duration", "1", "--warmup", "0.2", "--rate", "20", "--out", str(tmp_path),
            "--quiet"]
    if os.environ.get("MELODY_REDIS_URL"):
        # .ci/run's redis-server; without it, cluster.py starts a redis-server of its own and
        # fails (never skips) when there is none.
        args += ["--redis", os.environ["MELODY_REDIS_URL"]]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=_env(),
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all checks passed" in done.stdout
    (path,) = tmp_path.glob("cluster-*.json")
    document = json.loads(path.read_text())
    single = document["runs"]["single"][0]["workloads"]["cluster"]
    cluster = document["runs"]["cluster x2"][0]["workloads"]["cluster"]
    assert single["figures"]["nodes"] == 1 and cluster["figures"]["nodes"] == 2
    # Round-robin over the nodes: both hold half of the connections.
    assert cluster["figures"]["sessions_per_node"] == [30, 30]
    for workload in (single, cluster):
        figures, check = workload["figures"], workload["check"]
        assert check["ok"] and check["lost"] == 0 and check["out_of_order"] == 0, check
        assert figures["receivers"] == 60 and figures["frames_per_s"] > 0
        assert figures["latency_ms"]["p99"] is not None
    figures = cluster["figures"]
    assert figures["broadcasts"] > 0
    assert figures["redis_publishes"] == figures["broadcasts"]
    assert figures["redis_publishes_per_broadcast"] == 1.0
    # The single process has no backplane and no broker to count.
    assert single["figures"]["redis_publishes"] is None
