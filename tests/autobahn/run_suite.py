"""Run the Autobahn TestSuite (all 517 cases, through kosoku) against melody's echo hub.

    python tests/autobahn/run_suite.py [--no-uvloop] [--cases '1.*' ...] [--json FILE]

Starts ``echo_server.py`` as a subprocess on a free port, runs the cases group by group
(kosoku can wait forever on a server that stops answering, so every group has a deadline),
prints a table of verdicts per group, writes a JSON summary, and exits 1 if any case is FAILED,
UNIMPLEMENTED or ERROR, or a group timed out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

# (selection, deadline in seconds). 9.* pushes ~1 GB of 16 MiB messages; the rest is quick.
GROUPS: list[tuple[str, float]] = [
    ("1.*", 120), ("2.*", 60), ("3.*", 60), ("4.*", 60), ("5.*", 120), ("6.*", 180),
    ("7.*", 120), ("9.*", 900), ("10.*", 60), ("12.*", 600), ("13.*", 600),
]
ACCEPTED = {"OK", "NON-STRICT", "INFORMATIONAL"}


class EchoServer:
    """The echo hub in its own process, so that kosoku and melody do not share a core's loop."""

    def __init__(self, uvloop: bool) -> None:
        args = [sys.executable, str(HERE / "echo_server.py"), "--port", "0"]
        if not uvloop:
            args.append("--no-uvloop")
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, env=env, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "READY":
            self.proc.kill()
            raise RuntimeError(f"echo server did not start: {line!r}")
        self.port = int(line[1])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def run_group(url: str, selection: str, deadline: float) -> list[Any]:
    from kosoku import FailureError, run_fuzzingclient

    try:
        return list(await asyncio.wait_for(
            run_fuzzingclient(url, [selection], None, concurrency=2), deadline))
    except FailureError as failure:
        return list(failure.results)


def verdict(result: Any) -> tuple[str, str]:
    return result.behavior.value, result.behavior_close.value


def run_suite(cases: list[str] | None = None, uvloop: bool = True) -> dict[str, Any]:
    """Run the suite; return ``{"counts": ..., "bad": [...], "non_strict": [...], ...}``."""
    groups = [(c, 900.0) for c in cases] if cases else GROUPS
    server = EchoServer(uvloop)
    url = f"ws://127.0.0.1:{server.port}"
    counts: Counter[str] = Counter()
    bad: list[dict[str, str]] = []
    notable: list[dict[str, str]] = []
    timeouts: list[str] = []
    total = 0
    per_group: dict[str, dict[str, int]] = {}
    started = time.monotonic()
    try:
        for selection, deadline in groups:
            t0 = time.monotonic()
            try:
                results = asyncio.run(run_group(url, selection, deadline))
            except TimeoutError:
                timeouts.append(selection)
                print(f"{selection:6} TIMED OUT after {deadline:.0f}s", flush=True)
                continue
            group: Counter[str] = Counter()
            for result in results:
                behavior, close = verdict(result)
                # A case whose closing handshake failed counts as FAILED whatever its events.
                worst = behavior if result.passed else (
                    behavior if behavior not in ACCEPTED else "FAILED")
                group[worst] += 1
                counts[worst] += 1
                total += 1
                entry = {"case": result.case_id, "behavior": behavior, "close": close,
                         "result": result.result, "result_close": result.result_close}
                if behavior not in ACCEPTED or not result.passed:
                    bad.append(entry)
                elif behavior != "OK" or close != "OK":
                    notable.append(entry)
            per_group[selection] = dict(group)
            summary = " ".join(f"{k}={v}" for k, v in sorted(group.items()))
            print(f"{selection:6} {len(results):4} cases {time.monotonic() - t0:7.1f}s  {summary}",
                  flush=True)
    finally:
        server.stop()
    return {
        "loop": "uvloop" if uvloop else "asyncio",
        "total": total,
        "counts": dict(counts),
        "groups": per_group,
        "bad": bad,
        "not_ok": notable,
        "timeouts": timeouts,
        "seconds": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-uvloop", action="store_true", help="serve on asyncio's loop")
    parser.add_argument("--cases", action="append", help="case ids or globs (default: all)")
    parser.add_argument("--json", default="reports/autobahn-summary.json",
                        help="where to write the summary")
    args = parser.parse_args()
    report = run_suite(args.cases, uvloop=not args.no_uvloop)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"\n{report['total']} cases on {report['loop']} in {report['seconds']}s: "
          + ", ".join(f"{k} {v}" for k, v in sorted(report["counts"].items())))
    for entry in report["not_ok"]:
        print(f"  {entry['case']}: {entry['behavior']} / {entry['close']}")
    for entry in report["bad"]:
        print(f"  BAD {entry['case']}: {entry['behavior']} / {entry['close']}: {entry['result']}")
    if report["bad"] or report["timeouts"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
