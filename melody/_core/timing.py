"""The interpreted version of the ``timing`` kernel (``timing.pyx``), documented by
``timing.pyi``: a histogram of handler durations and a wrapper that times a synchronous
handler into one. Same behaviour, Python lists for the counts and ``time.perf_counter`` for
the clock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any

__all__ = ["Histogram", "Timed", "monotonic"]


def monotonic() -> float:
    """The clock the wrapper reads, in seconds (only differences mean anything)."""
    return perf_counter()


class Histogram:
    """Counts of durations per bucket (``bounds``: upper bounds in seconds, increasing; one
    bucket more for what is past the last), their sum, and the calls that raised."""

    def __init__(self, bounds: Sequence[float]) -> None:
        values = [float(b) for b in bounds]
        if not values or values != sorted(values) or len(values) > 32:
            raise ValueError("bounds must be a non-empty increasing sequence of at most 32")
        self.bounds = tuple(values)
        self.size = len(values)
        self.counts = [0] * (len(values) + 1)
        self.total = 0.0
        self.errors = 0

    def observe(self, seconds: float) -> None:
        """Count one duration of ``seconds``."""
        i = 0
        bounds = self.bounds
        n = self.size
        # A linear search: a handful of compares on doubles, most calls end in the first few.
        while i < n and seconds > bounds[i]:
            i += 1
        self.counts[i] += 1
        self.total += seconds

    def failed(self) -> None:
        """Count one call that raised."""
        self.errors += 1

    def snapshot(self) -> tuple[list[int], float, int]:
        """(counts per bucket, not cumulative; sum of the durations; errors), copied."""
        return list(self.counts), self.total, self.errors


class Timed:
    """``fn`` (a synchronous handler) timed into ``histogram``: its result is ``fn``'s; an
    exception from ``fn`` is counted in ``histogram.errors`` (unless it is an instance of
    ``ignored``: a refusal, not a failure) and re-raised."""

    def __init__(self, fn: Callable[..., Any], histogram: Histogram,
                 ignored: tuple[type[BaseException], ...] = ()) -> None:
        self.fn = fn
        self.histogram = histogram
        self.ignored = ignored

    def __call__(self, *args: Any) -> Any:
        start = perf_counter()
        try:
            result = self.fn(*args)
        except BaseException as exc:
            self.histogram.observe(perf_counter() - start)
            if not isinstance(exc, self.ignored):
                self.histogram.failed()
            raise
        self.histogram.observe(perf_counter() - start)
        return result
