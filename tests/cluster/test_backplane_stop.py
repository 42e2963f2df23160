"""A hub's shutdown ends in bounded time whatever its broker client does.

CI once saw a hub that never finished its SIGTERM after a NATS restart (killed after 10 s):
``stop()`` cancelled the backplane's connection task once and awaited it, and a client library
may swallow a cancellation (nats-py's flush path catches ``CancelledError`` and carries on).
These tests give the real backplanes, on a real broker, a connection task that swallows
cancellations, and check that the hub still closes: with one swallowed (it is cancelled again),
and with all of them swallowed (``stop()`` gives up at its ``timeout`` and says so).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from cluster_support import is_nats

import melody
from melody.backplane.nats import NatsBackplane
from melody.backplane.redis import RedisBackplane

#: Far past the backplane's 1-second stop budget: a hang detector, not a speed check.
HANG = 30.0


def _stubborn(url: str, prefix: str, swallow: int) -> Any:
    """A backplane of ``url``'s engine whose connection task swallows ``swallow`` cancellations
    (the real task ends at the first one, then a stand-in for the library waits on) and ends at
    the next."""
    base: Any = NatsBackplane if is_nats(url) else RedisBackplane

    class Stubborn(base):  # type: ignore[misc, valid-type]
        swallowed = 0
        limit = swallow
        task: asyncio.Task[Any] | None = None

        async def _supervise(self) -> None:
            self.task = asyncio.current_task()
            try:
                await super()._supervise()
                return
            except asyncio.CancelledError:
                if self.swallowed >= self.limit:
                    raise
                self.swallowed += 1  # what a library that swallows it does: carry on,
            while True:  # and wait for something only another cancellation ends
                try:
                    await asyncio.get_running_loop().create_future()
                except asyncio.CancelledError:
                    if self.swallowed < self.limit:
                        self.swallowed += 1
                        continue
                    raise

    return Stubborn(url, channel_prefix=prefix, timeout=1.0)


async def _serve_then_close(backplane: Any) -> None:
    hub = melody.Melody(backplane=backplane)
    server = await hub.serve("127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANG
    while not backplane.stats()["connected"]:
        assert loop.time() < deadline, "the backplane never connected"
        await asyncio.sleep(0.01)
    server.close()
    hub.close()
    # asyncio.wait, not wait_for: a timed-out wait_for cancels wait_closed, and the old stop()
    # took that cancellation for its own and returned as if nothing had hung.
    closing = asyncio.ensure_future(hub.wait_closed(timeout=1))
    done, _ = await asyncio.wait({closing}, timeout=HANG)
    if not done:
        await _release(backplane)
        await closing
        pytest.fail(f"the hub's close still waited on its backplane after {HANG} s")
    closing.result()


async def _release(backplane: Any) -> None:
    # Let the stubborn task end, or the test's loop would wait for it forever when it closes
    # (as asyncio.run would: stop() can only leave such a task, not end it).
    task = backplane.task
    if task is None or task.done():
        return
    backplane.limit = 0
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)


@pytest.mark.asyncio
async def test_a_swallowed_cancellation_does_not_hang_the_hubs_close(
        broker: str, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    backplane = _stubborn(broker, prefix, swallow=1)
    with caplog.at_level(logging.WARNING, logger="melody.backplane"):
        await _serve_then_close(backplane)
    assert backplane.swallowed == 1
    assert not backplane.stats()["connected"]
    assert "did not end" not in caplog.text  # cancelled again, it ended


@pytest.mark.asyncio
async def test_a_task_that_never_ends_is_left_at_the_stop_deadline_with_a_warning(
        broker: str, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    backplane = _stubborn(broker, prefix, swallow=10**9)
    with caplog.at_level(logging.WARNING, logger="melody.backplane"):
        await _serve_then_close(backplane)
    assert backplane.swallowed >= 2
    assert "the connection task did not end within 1.0s of stop()" in caplog.text
    assert backplane.task is not None and not backplane.task.done()
    await _release(backplane)
