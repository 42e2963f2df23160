"""The harness past one process and one address: source addresses (C100K), descriptor limits,
the progress bar, bench/scaling.py's planning. Real sockets on loopback addresses, a real hub."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from melody.bench.progress import Progress
from melody.bench.sources import check_bindable, ephemeral_ports, parse_sources, plan_sources
from melody.bench.system import raise_nofile

ROOT = Path(__file__).resolve().parent.parent

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="all of 127.0.0.0/8 is loopback on Linux only")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def test_source_address_specs() -> None:
    assert parse_sources("127.0.0.2-127.0.0.4") == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    assert parse_sources("127.0.0.9, 127.0.0.7") == ["127.0.0.9", "127.0.0.7"]
    assert parse_sources("3") == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    assert parse_sources("::1") == ["::1"]
    for bad in ("", "127.0.0.5-127.0.0.2", "300.1.1.1", "127.0.0.1-::1", "0"):
        with pytest.raises(ValueError):
            parse_sources(bad)


def test_source_addresses_are_planned_only_past_one_address_ports() -> None:
    per_address = int(ephemeral_ports() * 0.8)
    assert plan_sources("127.0.0.1", 1000, None) is None
    assert plan_sources("127.0.0.1", per_address, None) is None
    planned = plan_sources("127.0.0.1", 100_000, None)
    assert planned is not None and planned[0] == "127.0.0.1"
    assert len(planned) == -(-100_000 // per_address)
    assert len(set(planned)) == len(planned)
    # Not loopback, or not IPv4: the kernel's choice stands (nothing to spread over).
    assert plan_sources("::1", 100_000, None) is None
    assert plan_sources("example.org", 100_000, None) is None
    # An explicit spec always wins.
    assert plan_sources("127.0.0.1", 10, "127.0.0.5-127.0.0.6") == ["127.0.0.5", "127.0.0.6"]


@linux_only
def test_unconfigured_source_addresses_are_named() -> None:
    assert check_bindable(["127.0.0.1", "127.0.0.2", "127.0.0.254"]) == []
    # TEST-NET-1 (RFC 5737) is on no interface of a test machine.
    assert check_bindable(["127.0.0.2", "192.0.2.1"]) == ["192.0.2.1"]


def test_the_descriptor_limit_goes_up_where_it_may_and_stays_sane_where_not() -> None:
    resource = pytest.importorskip("resource")
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, hard = raise_nofile(before[1] + 1000 if before[1] != resource.RLIM_INFINITY
                              else 1 << 16)
    assert (soft, hard) == resource.getrlimit(resource.RLIMIT_NOFILE)
    # The soft limit reaches at least the old hard one (or the hard one rose with it).
    assert soft >= min(before[1], 1 << 20) or soft == resource.RLIM_INFINITY
    assert hard >= before[1] or before[1] == resource.RLIM_INFINITY


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_redraws_on_a_terminal_and_prints_lines_elsewhere() -> None:
    terminal = _Terminal()
    bar = Progress(stream=terminal)
    bar.show("connect", 0.5, "50,000/100,000 open")
    bar.show("connect", 1.0, "100,000/100,000 open")
    bar.end()
    out = terminal.getvalue()
    assert out.count("\r") == 2 and out.endswith("\n")
    assert "[############............]  50%" in out and "100%" in out

    log = io.StringIO()
    bar = Progress(stream=log)
    bar.show("connect", 0.5, "50,000/100,000 open")
    bar.end()
    assert log.getvalue() == "[connect] 50,000/100,000 open\n"

    quiet = _Terminal()
    Progress(enabled=False, stream=quiet).show("connect", 0.5, "x")
    assert quiet.getvalue() == ""


PEERS_HUB = """
import asyncio, collections, json, os
import melody

hub = melody.Melody()
peers = collections.Counter()

@hub.handle_connect
def on_connect(session):
    peers[session.remote_addr[0]] += 1

@hub.handle_message
def on_message(session, msg):
    if msg.startswith("B"):
        hub.broadcast(msg)
    else:
        session.write(msg)

@hub.handle_http
def stats(request):
    if request.path == "/stats":
        return 200, [("Content-Type", "application/json")], json.dumps(
            {"pid": os.getpid(), "stats": hub.stats(), "peers": peers}).encode()
    return None

async def main():
    server = await hub.serve("127.0.0.1", 0)
    print("READY", server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()

asyncio.run(main())
"""


@linux_only
def test_connections_come_from_every_source_address(tmp_path: Path) -> None:
    """``--source-addresses``: the hub sees the connections arrive from each address in turn
    (the way 100,000 connections get past one address's ephemeral ports), and the run's
    checks still pass."""
    script = tmp_path / "peers_hub.py"
    script.write_text(PEERS_HUB)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            env=_env())
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split()[1])
        json_path = tmp_path / "report.json"
        done = subprocess.run(
            [sys.executable, "-m", "melody", "bench", f"ws://127.0.0.1:{port}/", "-n", "60",
             "--processes", "2", "--workload", "connect,latency", "--duration", "0.5",
             "--warmup", "0", "--rate", "20", "--source-addresses", "127.0.0.2-127.0.0.4",
             "--json", str(json_path), "--no-plot", "--quiet"],
            capture_output=True, text=True, timeout=120, env=_env(), cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as r:
            peers = json.loads(r.read())["peers"]
    finally:
        proc.terminate()
        proc.wait(10)
    # The 60 pool connections, 20 per address (the stats probes come from 127.0.0.1 over
    # plain HTTP and never upgrade).
    assert peers == {"127.0.0.2": 20, "127.0.0.3": 20, "127.0.0.4": 20}, peers
    report = json.loads(json_path.read_text())
    assert report["environment"]["pinning"]["source_addresses"] == [
        "127.0.0.2", "127.0.0.3", "127.0.0.4"]
    assert report["ok"] is True


def test_an_address_the_machine_lacks_is_refused_before_connecting(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "melody", "bench", "ws://127.0.0.1:9/", "-n", "5",
         "--workload", "connect", "--source-addresses", "192.0.2.1", "--quiet", "--no-plot"],
        capture_output=True, text=True, timeout=60, env=_env(), cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "cannot bind source address(es) 192.0.2.1" in done.stderr


def test_scaling_plans_what_the_machine_can_run() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import scaling
    finally:
        sys.path.remove(str(ROOT / "bench"))
    args = scaling.parse_args(["--workers", "1,2", "-n", "10000"])
    plan, why = scaling.plan_cell(args, "melody", 10_000, 1, [0, 1], 20_000)
    assert why is None and plan["cores"] == [0] and plan["clients"] == [1]
    # A Python peer has no multi-process broadcast.
    assert scaling.plan_cell(args, "picows", 10_000, 2, [0, 1], 20_000)[1] is not None
    # Two cores, W=2: nothing left for the clients unless shared, and then it says so.
    assert "no core" in str(scaling.plan_cell(args, "melody", 10_000, 2, [0, 1], None)[1])
    shared = scaling.parse_args(["--share-cores"])
    plan, why = scaling.plan_cell(shared, "melody", 10_000, 2, [0, 1], None)
    assert why is None and plan["shared"] and plan["clients"] == [0, 1]
    # Past one process's descriptors: a single process cannot, melody can with more workers.
    assert "descriptors" in str(scaling.plan_cell(args, "picows", 50_000, 1, [0, 1], 20_000)[1])
    more = scaling.parse_args(["--min-workers-for-limit"])
    plan, why = scaling.plan_cell(more, "melody", 100_000, 1, [0, 1], 20_000)
    assert why is None and plan["processes"] == 6 and plan["cores"] == [0]
    assert scaling.plan_cell(args, "melody", 8_000, 4, [0, 1], None)[1] is not None
