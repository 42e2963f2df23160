"""The Autobahn TestSuite against the echo hub: zero FAILED, zero UNIMPLEMENTED.

Runs in .ci/run (marker ``autobahn``): the whole suite (517 cases) on uvloop, and on asyncio's
default loop every protocol group except the throughput cases (9.*) and the long compression
sweeps (12.2-12.5, 13.2-13.7: the same code paths as 12.1/13.1 with more sizes and window
settings, several minutes each).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from run_suite import GROUPS, run_suite  # type: ignore[import-not-found]

pytestmark = [pytest.mark.autobahn, pytest.mark.timeout(3600)]


def _check(report: dict) -> None:
    Path("reports").mkdir(exist_ok=True)
    Path(f"reports/autobahn-{report['loop']}.json").write_text(json.dumps(report, indent=2))
    print(f"\nAutobahn on {report['loop']}: {report['total']} cases, {report['counts']}")
    assert not report["timeouts"], f"groups timed out: {report['timeouts']}"
    assert not report["bad"], "\n".join(
        f"{b['case']}: {b['behavior']}/{b['close']}: {b['result']} {b['result_close']}"
        for b in report["bad"])
    assert report["counts"].get("UNIMPLEMENTED", 0) == 0


def test_autobahn_full_suite_uvloop() -> None:
    report = run_suite(uvloop=True)
    assert report["total"] == 517, f"expected the 517 cases, ran {report['total']}"
    _check(report)


def test_autobahn_protocol_cases_asyncio() -> None:
    groups = [selection for selection, _ in GROUPS
              if selection not in ("9.*", "12.*", "13.*")] + ["12.1.*", "13.1.*"]
    report = run_suite(groups, uvloop=False)
    assert report["total"] > 250
    _check(report)
