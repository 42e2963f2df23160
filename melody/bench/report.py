"""Reports: the human table, the JSON file and the PNG plot.

The same list of headline figures (:data:`FIGURES`) drives the single-run table of
``melody bench`` and the side-by-side table of ``bench/compare.py``, so the two never disagree
on what a figure is called or which direction is better.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

__all__ = [
    "FIGURES",
    "Figure",
    "lookup",
    "extract",
    "format_value",
    "format_table",
    "align",
    "write_json",
    "plot",
]


class Figure(NamedTuple):
    """One headline figure: where it lives in a report and how to read it."""

    workload: str
    path: str            # dotted path under workloads.<workload>.figures
    label: str
    higher_is_better: bool
    digits: int


FIGURES: tuple[Figure, ...] = (
    Figure("connect", "handshakes_per_s", "connect: handshakes/s", True, 0),
    Figure("connect", "server_cpu_us_per_handshake", "connect: server CPU us/handshake", False,
           1),
    Figure("idle", "kib_per_connection", "idle: server KiB per connection", False, 1),
    Figure("latency", "latency_ms.p50", "latency p50 ms", False, 2),
    Figure("latency", "latency_ms.p99", "latency p99 ms", False, 2),
    Figure("latency", "latency_ms.p99_9", "latency p99.9 ms", False, 2),
    Figure("latency", "latency_ms.max", "latency max ms", False, 2),
    Figure("latency", "server_cpu_us_per_frame", "latency: server CPU us/frame", False, 2),
    Figure("saturation", "frames_per_s", "saturation: frames/s delivered", True, 0),
    Figure("saturation", "server_cpu_us_per_frame", "saturation: server CPU us/frame", False,
           2),
    Figure("saturation", "client_cpu_us_per_frame", "saturation: client CPU us/frame", False,
           2),
    Figure("json", "frames_per_s", "json: frames/s delivered", True, 0),
    Figure("json", "server_cpu_us_per_frame", "json: server CPU us/frame", False, 2),
    Figure("echo", "roundtrips_per_s", "echo: round trips/s", True, 0),
    Figure("echo", "rtt_ms.p50", "echo p50 ms", False, 3),
    Figure("echo", "rtt_ms.p99", "echo p99 ms", False, 3),
    Figure("echo", "server_cpu_us_per_roundtrip", "echo: server CPU us/round trip", False, 1),
    Figure("churn", "cycles_per_s", "churn: cycles/s", True, 0),
    Figure("churn", "rss_growth_pct", "churn: server RSS growth %", False, 2),
    Figure("churn", "server_cpu_us_per_cycle", "churn: server CPU us/cycle", False, 0),
    Figure("cluster", "frames_per_s", "cluster: frames/s delivered", True, 0),
    Figure("cluster", "saturation_server_cpu_us_per_frame", "cluster: server CPU us/frame",
           False, 2),
    Figure("cluster", "latency_ms.p50", "cluster latency p50 ms", False, 2),
    Figure("cluster", "latency_ms.p99", "cluster latency p99 ms", False, 2),
    Figure("cluster", "redis_publishes_per_broadcast", "cluster: Redis PUBLISH per broadcast",
           False, 2),
)


def lookup(report: Mapping[str, Any], figure: Figure) -> float | None:
    """The value of ``figure`` in a ``melody bench`` report, or None when absent."""
    node: Any = report.get("workloads", {}).get(figure.workload)
    if node is None:
        return None
    node = node.get("figures", {})
    for part in figure.path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, (int, float)) else None


def extract(report: Mapping[str, Any]) -> dict[str, Any]:
    """Headline values, checks, client-bound flags and the latency CDF of one report."""
    workloads = report.get("workloads", {})
    return {
        "values": {f"{f.workload}.{f.path}": lookup(report, f) for f in FIGURES},
        "ok": {name: w.get("check", {}).get("ok") for name, w in workloads.items()},
        "lost": {name: w.get("check", {}).get("lost") for name, w in workloads.items()},
        "bound": {name: bool(w.get("client_bound")) for name, w in workloads.items()},
        "contended": {name: bool(w.get("contended")) for name, w in workloads.items()},
        "cdf": workloads.get("latency", {}).get("figures", {}).get("cdf") or [],
    }


def format_value(value: float | None, digits: int) -> str:
    """``1,234`` / ``12.35``; ``-`` for a missing value."""
    if value is None:
        return "-"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def align(rows: Sequence[Sequence[str]], left: Sequence[int] = (0,)) -> str:
    """``rows`` as a text table: the first row a header with a rule under it, the columns in
    ``left`` left-aligned and the others (figures) right-aligned, two spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(widths[i]) if i in left else c.rjust(widths[i])
                       for i, c in enumerate(r)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _check_text(workload: Mapping[str, Any]) -> str:
    check = workload.get("check", {})
    parts = [f"lost {check.get('lost')}"]
    if check.get("server_drops") is not None:
        parts.append(f"drops {check['server_drops']}")
    if check.get("out_of_order"):
        parts.append(f"out-of-order {check['out_of_order']}")
    failed = check.get("failed", check.get("failed_connections"))
    if failed:
        parts.append(f"failed {failed}")
    verdict = "ok" if check.get("ok") else "FAILED"
    text = f"{verdict} ({', '.join(parts)})"
    if workload.get("client_bound"):
        text += " CLIENT-BOUND"
    if workload.get("contended"):
        text += " CONTENDED"
    if workload.get("figures", {}).get("overloaded"):
        text += " OVERLOADED"
    return text


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value:.0f}%"


def format_table(report: Mapping[str, Any]) -> str:
    """The human table of one ``melody bench`` run: figure, value, check, CPU."""
    env = report.get("environment", {})
    pinning = env.get("pinning", {})
    o = report.get("options", {})
    lines = [
        f"melody bench {report['target']['url']}  N={o.get('connections', 0):,}  "
        f"{pinning.get('client_processes')} client process(es) on CPUs "
        f"{pinning.get('client_cpus')}, server pid {report['target'].get('server_pid')}"
        f"{' on CPU ' + str(pinning.get('server_cpu')) if pinning.get('server_pinned') else ''}",
        f"{env.get('cpu_model')}, Python {env.get('python')}, "
        f"melody {env.get('versions', {}).get('melody')}",
        "",
    ]
    header = ("figure", "value", "check", "client cpu", "server cpu", "other cpu")
    rows: list[tuple[str, ...]] = []
    workloads = report.get("workloads", {})
    shown: set[str] = set()
    for figure in FIGURES:
        w = workloads.get(figure.workload)
        if w is None:
            continue
        first = figure.workload not in shown
        shown.add(figure.workload)
        cpu = w.get("cpu", {})
        rows.append((
            figure.label,
            format_value(lookup(report, figure), figure.digits),
            _check_text(w) if first else "",
            _pct(cpu.get("client_pct")) if first else "",
            _pct(cpu.get("server_pct")) if first else "",
            _pct(cpu.get("other_pct")) if first else "",
        ))
    lines.append(align([header, *rows], left=(0, 2)))
    notes = []
    for name, w in workloads.items():
        if w.get("client_bound"):
            notes.append(f"{name}: client-bound ({w.get('client_bound_reason')}): the load "
                         "generator, not the server, may set this figure")
        notes.extend(f"{name}: {n}" for n in w.get("notes", []))
    if notes:
        lines.append("")
        lines.extend(notes)
    lines.append("")
    lines.append("all checks passed" if report.get("ok") else "SOME CHECKS FAILED")
    return "\n".join(lines)


def write_json(report: Mapping[str, Any], path: str) -> None:
    """Write ``report`` as indented JSON (parent directories created)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=1, sort_keys=False, default=_jsonable)
        f.write("\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


_BARS = (
    ("saturation.frames_per_s", "saturation", "saturation: frames/s delivered"),
    ("json.frames_per_s", "json", "json: frames/s delivered"),
    ("echo.roundtrips_per_s", "echo", "echo: round trips/s"),
    ("connect.handshakes_per_s", "connect", "connect: handshakes/s"),
    ("idle.kib_per_connection", "idle", "idle: server KiB per connection (lower is better)"),
    ("churn.cycles_per_s", "churn", "churn: connect/echo/close cycles/s"),
)


def plot(path: str, labels: Sequence[str], values: Mapping[str, Mapping[str, float | None]],
         cdfs: Mapping[str, Sequence[Sequence[float]]],
         bound: Mapping[str, Mapping[str, bool]], title: str,
         contended: Mapping[str, Mapping[str, bool]] | None = None) -> bool:
    """Write the PNG: the latency CDF per server and one bar chart per throughput figure.

    Bars measured on a client-bound load generator are hatched ``//``, bars from a phase
    during which other processes loaded the machine dotted. Returns False (and writes
    nothing) when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(2, 4, figsize=(20, 9))
    ax = axes[0][0]
    for label in labels:
        points = cdfs.get(label) or []
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], label=label)
    ax.set_xscale("log")
    ax.set_xlabel("publish-to-receive latency (ms, log scale)")
    ax.set_ylabel("fraction of deliveries")
    ax.set_title("latency CDF")
    ax.grid(True, which="both", alpha=0.3)
    if any(cdfs.get(label) for label in labels):
        ax.legend()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    panels = [a for row in axes for a in row][1:]
    for ax in panels[len(_BARS):]:
        ax.axis("off")
    for ax, (key, workload, name) in zip(panels, _BARS):
        heights = [values.get(label, {}).get(key) or 0.0 for label in labels]
        bars = ax.bar(range(len(labels)), heights,
                      color=[colors[i % len(colors)] for i in range(len(labels))])
        for bar, label in zip(bars, labels):
            if bound.get(label, {}).get(workload):
                bar.set_hatch("//")
            elif contended is not None and contended.get(label, {}).get(workload):
                bar.set_hatch("..")
            value = values.get(label, {}).get(key)
            ax.annotate(format_value(value, 1 if key.startswith("idle") else 0),
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=15)
        ax.set_title(name, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(title + "\n(hatched //: client-bound, the load generator was saturated;"
                 " dotted: contended, other processes loaded the machine)", fontsize=11)
    fig.tight_layout()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
