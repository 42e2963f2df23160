"""Summaries of samples: percentiles and a CDF small enough for a JSON report."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["summarize_ns", "cdf_points", "median"]

QUANTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p99_9", 0.999))


def _sorted(samples: Sequence[int]) -> Any:
    try:
        import numpy as np
    except ImportError:
        return sorted(samples)
    return np.sort(np.asarray(samples, dtype=np.int64))


def _pick(ordered: Sequence[int], q: float) -> int:
    # Nearest rank (the smallest sample with at least q of the samples at or below it): every
    # reported percentile is a latency that was actually observed.
    index = max(0, math.ceil(q * len(ordered)) - 1)
    return int(ordered[index])


def summarize_ns(samples: Sequence[int]) -> dict[str, float | int | None]:
    """``count``, ``min``, ``mean``, ``p50``, ``p90``, ``p99``, ``p99_9``, ``max`` in ms.

    Samples are nanoseconds; every figure is None when there are none.
    """
    n = len(samples)
    if n == 0:
        return {"count": 0, "min": None, "mean": None, "p50": None, "p90": None,
                "p99": None, "p99_9": None, "max": None}
    ordered = _sorted(samples)
    out: dict[str, float | int | None] = {"count": n, "min": int(ordered[0]) / 1e6}
    total = ordered.sum() if hasattr(ordered, "sum") else sum(ordered)
    out["mean"] = int(total) / n / 1e6
    for name, q in QUANTILES:
        out[name] = _pick(ordered, q) / 1e6
    out["max"] = int(ordered[-1]) / 1e6
    return out


def cdf_points(samples: Sequence[int], points: int = 200) -> list[list[float]]:
    """``[[latency_ms, fraction], ...]``: the empirical CDF at ``points`` evenly spaced ranks,
    plus the tail (99%, 99.9%, 99.99%, max) so a plot shows it.
    """
    n = len(samples)
    if n == 0:
        return []
    ordered = _sorted(samples)
    ranks = {min(n - 1, (i * (n - 1)) // max(points - 1, 1)) for i in range(points)}
    for q in (0.99, 0.999, 0.9999):
        ranks.add(min(n - 1, max(0, math.ceil(q * n) - 1)))
    ranks.add(n - 1)
    return [[int(ordered[r]) / 1e6, (r + 1) / n] for r in sorted(ranks)]


def median(values: Sequence[float | None]) -> float | None:
    """The median of the values that are not None; None when there are none."""
    present = sorted(v for v in values if v is not None)
    if not present:
        return None
    mid = len(present) // 2
    if len(present) % 2:
        return present[mid]
    return (present[mid - 1] + present[mid]) / 2
