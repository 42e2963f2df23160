"""``bench/history.py`` end to end, tiny: both engines, the herd, and checks that can fail.

The script starts its own hub processes and redis-server (``.ci/run`` installs it). No
timing is asserted: the test checks that every figure is reported next to its check, that a
clean run passes, and that a hub losing or duplicating one publication fails the run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "history.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="the harness reads /proc and forks"),
]

TINY = ["--connections", "40", "--herd", "60", "--missed", "20", "--repeats", "1",
        "--duration", "0.5", "--warmup", "0.2", "--processes", "2", "--timeout", "30"]


def _run(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    path = tmp_path / "history.json"
    done = subprocess.run([sys.executable, str(SCRIPT), *TINY, "--json", str(path), *extra],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    document = json.loads(path.read_text()) if path.exists() else None
    return done, document


def test_both_engines_and_the_herd_report_figures_and_lose_nothing(tmp_path: Path) -> None:
    # Never skipped for want of a Redis (as the cluster tests): .ci/run installs one.
    assert shutil.which("redis-server"), "no redis-server (apt-get install redis-server)"
    done, document = _run(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all checks passed" in done.stdout
    assert document["ok"] is True
    assert [p["engine"] for p in document["publish"]] == ["memory", "redis"]
    for part in document["publish"]:
        assert part["ok"], part
        assert {p["topic"] for p in part["phases"]} == {"plain", "hist"}
        for phase in part["phases"]:
            check = phase["check"]
            assert check["ok"] and check["drained"], check
            assert check["lost"] == check["duplicates"] == check["bad"] == 0
            assert phase["publishes"] > 0 and phase["frames"] > 0
        for topic in ("plain", "hist"):
            figures = part["medians"][topic]
            assert figures["server_cpu_us_per_frame"] > 0
            assert figures["frames_per_s"] > 0
            assert figures["client_cpu_pct"] is not None
        assert part["hist_vs_plain"]["server_cpu_us_per_frame"] > 0
    redis = document["publish"][1]["medians"]
    # Each publication to the topic with history is one script on Redis, sent in batches;
    # the plain topic runs none.
    assert redis["hist"]["redis_eval_per_publish"] > 0.5
    assert redis["plain"]["redis_eval_per_publish"] == 0
    assert redis["hist"]["publishes_per_round_trip"] >= 1
    assert redis["hist"]["redis_cpu_us_per_publish"] is not None
    assert "redis_eval_per_publish" not in document["publish"][0]["medians"]["hist"]

    herd = document["herd"]
    check = herd["check"]
    assert check["ok"], check
    assert check["live"] == 60 and check["not_recovered"] == 0 and check["wrong_count"] == 0
    assert check["lost"] == check["duplicates"] == 0
    figures = herd["figures"]
    assert figures["all_live_s"] is not None and figures["server_cpu_s"] >= 0
    assert figures["redis_eval_per_client"] >= 1  # one history read per resubscribe at least
    assert figures["live_ms_p99"] is not None


@pytest.mark.parametrize(("fault", "counter"), [("lose", "lost"), ("duplicate", "duplicates")])
def test_a_hub_that_loses_or_duplicates_a_publication_fails_the_run(
        tmp_path: Path, fault: str, counter: str) -> None:
    """The hub leaves out (or sends twice) publication 3 of each topic: both topics' checks
    must fail, and so must the run."""
    done, document = _run(tmp_path, "--part", "publish", "--engines", "memory",
                          "--hub-fault", fault)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "SOME CHECKS FAILED" in done.stdout
    assert document["ok"] is False
    (part,) = document["publish"]
    for phase in part["phases"]:
        assert not phase["check"]["ok"]
        assert phase["check"][counter] > 0, phase["check"]
