"""How a backplane tells its hub about trouble: throttled reports, counted drops, backoff.

Every backplane (Redis, NATS, the workers' bus) keeps the same promises here: an outage or a
drop reaches the hub's ``handle_error`` (``state.report(None, error)``), at most once per
``report_interval`` seconds (an outage retries often; a full queue drops often), the rest
counted and named in the next report; a dropped message is counted by reason and in
``dropped_outgoing``; reconnects wait a jittered, doubling delay. One class, so that the
three cannot drift apart.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

from melody.errors import BackplaneError

if TYPE_CHECKING:
    from melody._hubstate import HubState

__all__ = ["ReportsTrouble"]


class ReportsTrouble:
    """Mixed into a backplane, which sets these attributes in its ``__init__``/``start``."""

    _loop: asyncio.AbstractEventLoop | None
    _state: HubState | None
    _stopping: bool
    _last_report: float
    _report_interval: float
    _suppressed: int
    _counters: dict[str, int]
    #: Reconnect delays (backplanes that reconnect): the first, and the cap.
    _reconnect_min: float
    _reconnect_max: float
    #: What a drop's report starts with (names the backplane where its errors do not).
    _drop_prefix = ""

    def _complain(self, error: BackplaneError, cause: BaseException | None = None) -> None:
        # Report to handle_error, at most once per report_interval.
        loop = self._loop
        state = self._state
        if loop is None or state is None or self._stopping:
            return
        now = loop.time()
        if now - self._last_report < self._report_interval:
            self._suppressed += 1
            return
        self._last_report = now
        if self._suppressed:
            error.args = (f"{error.args[0]} ({self._suppressed} more since the last report)",)
            self._suppressed = 0
        if cause is not None:
            error.__cause__ = cause
        state.report(None, error)

    def _drop(self, reason: str, why: str, count: int = 1) -> None:
        # ``count`` messages not sent, for ``reason`` (one of the dropped_outgoing_* counters).
        counters = self._counters
        counters[reason] += count
        counters["dropped_outgoing"] += count
        self._complain(BackplaneError(f"{self._drop_prefix}{why}: message dropped"))

    def _backoff(self, attempt: int) -> float:
        # Full jitter over the upper half: reconnecting nodes do not stampede the broker.
        delay = min(self._reconnect_max, self._reconnect_min * 2 ** min(attempt, 30))
        return random.uniform(delay / 2, delay)
