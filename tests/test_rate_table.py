"""The token buckets of ``HandshakeRateLimit`` (``melody.middleware.RateTable``), with explicit
times, and the middleware's settings checks: no sockets, no clock (the middleware itself is
tested end to end in tests/production/test_middleware.py)."""

from __future__ import annotations

from typing import Any

import pytest

from melody.middleware import HandshakeRateLimit, RateTable


def test_rate_table_spends_refills_and_says_how_long_to_wait() -> None:
    table = RateTable(rate=2.0, burst=3, max_keys=10)
    assert [table.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert table.take("a", 0.0) == pytest.approx(0.5)  # one token at 2/s
    assert table.take("a", 0.25) == pytest.approx(0.25)  # a refusal spends nothing
    assert table.take("a", 0.5) == 0.0
    assert table.take("a", 0.5, spend=False) == pytest.approx(0.5)  # only asks
    assert table.take("b", 0.5) == 0.0  # keys are independent
    assert table.take("a", 100.0) == 0.0  # refilled, capped at the burst
    assert [table.take("a", 100.0) for _ in range(2)] == [0.0, 0.0]
    assert table.take("a", 100.0) > 0.0


def test_rate_table_memory_is_bounded_whatever_the_keys() -> None:
    table = RateTable(rate=1.0, burst=2, max_keys=100)
    for n in range(10_000):
        table.take(f"10.0.{n >> 8}.{n & 255}", 0.0)
    assert len(table) == 100  # the least recently seen were forgotten
    # A bucket seen full again is forgotten at once: idle addresses cost nothing.
    table = RateTable(rate=1.0, burst=2, max_keys=100)
    table.take("a", 0.0)
    assert len(table) == 1
    table.take("a", 50.0, spend=False)
    assert len(table) == 0


@pytest.mark.parametrize(("kwargs", "why"), [
    ({}, "needs per_ip, total or both"),
    ({"per_ip": 0}, "per_ip must be a finite number"),
    ({"per_ip": float("inf")}, "per_ip must be a finite number"),
    ({"per_ip": 1, "burst": 0}, "burst must be"),
    ({"total": 5, "burst": 2}, "burst needs per_ip"),
    ({"per_ip": 5, "total_burst": 2}, "total_burst needs total"),
    ({"per_ip": 5, "max_addresses": 0}, "max_addresses must be"),
])
def test_handshake_rate_limit_refuses_bad_settings(kwargs: dict[str, Any], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        HandshakeRateLimit(**kwargs)
