"""The handler-timing kernel (``melody._core.timing``), compiled and interpreted: buckets as
Prometheus reads them (a duration equal to a bound is in that bound's bucket), errors, and the
wrapper's transparency. No clock assertions: durations are fed in, or only counted."""

from __future__ import annotations

import types

import pytest

import melody._core
from melody._core import timing as compiled_timing

ENGINES = [pytest.param(compiled_timing, id="default"),
           pytest.param(melody._core.interpreted().timing, id="interpreted")]


@pytest.mark.parametrize("timing", ENGINES)
def test_durations_land_in_the_first_bucket_that_holds_them(timing: types.ModuleType) -> None:
    h = timing.Histogram((0.001, 0.01, 0.1))
    for seconds in (0.0, 0.0005, 0.001, 0.002, 0.01, 0.05, 0.1, 0.5, 100.0):
        h.observe(seconds)
    counts, total, errors = h.snapshot()
    assert counts == [3, 2, 2, 2]  # le=0.001 takes 0.001 itself; the last is +Inf
    assert total == pytest.approx(100.6635)
    assert errors == 0
    assert h.bounds == (0.001, 0.01, 0.1)


@pytest.mark.parametrize("timing", ENGINES)
def test_bad_bounds_are_refused(timing: types.ModuleType) -> None:
    for bounds in ((), (0.1, 0.01), tuple(float(i) for i in range(33))):
        with pytest.raises(ValueError):
            timing.Histogram(bounds)


@pytest.mark.parametrize("timing", ENGINES)
def test_the_wrapper_times_each_call_and_counts_what_raised(timing: types.ModuleType) -> None:
    class Refused(Exception):
        pass

    def handler(session: object, msg: str) -> str:
        if msg == "boom":
            raise ValueError(msg)
        if msg == "no":
            raise Refused(msg)
        return f"{session}:{msg}"

    h = timing.Histogram((1e-5, 1.0))
    timed = timing.Timed(handler, h, (Refused,))
    assert timed("s", "hi") == "s:hi"
    with pytest.raises(ValueError, match="boom"):
        timed("s", "boom")
    with pytest.raises(Refused):
        timed("s", "no")
    counts, total, errors = h.snapshot()
    assert sum(counts) == 3  # every call observed, the failed ones too
    assert total >= 0.0
    assert errors == 1  # the refusal is not an error
    assert timed.fn is handler and timed.histogram is h


@pytest.mark.parametrize("timing", ENGINES)
def test_the_clock_does_not_go_back(timing: types.ModuleType) -> None:
    readings = [timing.monotonic() for _ in range(1000)]
    assert readings == sorted(readings)
