"""Handler timing: a histogram of durations and a wrapper that times a synchronous handler."""

from collections.abc import Callable, Sequence
from typing import Any

from typing_extensions import disjoint_base

def monotonic() -> float:
    """The clock the wrapper reads, in seconds (only differences mean anything)."""

@disjoint_base
class Histogram:
    """Counts of durations per bucket (``bounds``: upper bounds in seconds, increasing, at most
    32; one bucket more for what is past the last), their sum, and the calls that raised.

    Raises ``ValueError`` for empty, decreasing or more than 32 bounds."""

    bounds: tuple[float, ...]

    def __init__(self, bounds: Sequence[float]) -> None: ...
    def observe(self, seconds: float) -> None:
        """Count one duration of ``seconds``."""
    def failed(self) -> None:
        """Count one call that raised."""
    def snapshot(self) -> tuple[list[int], float, int]:
        """(counts per bucket, not cumulative; sum of the durations; errors), copied."""

@disjoint_base
class Timed:
    """``fn`` (a synchronous handler) timed into ``histogram``: its result is ``fn``'s; an
    exception from ``fn`` is counted in ``histogram``'s errors (unless it is an instance of
    ``ignored``) and re-raised."""

    fn: Callable[..., Any]
    histogram: Histogram
    ignored: tuple[type[BaseException], ...]

    def __init__(self, fn: Callable[..., Any], histogram: Histogram,
                 ignored: tuple[type[BaseException], ...] = ()) -> None: ...
    def __call__(self, *args: Any) -> Any: ...
