"""``WorkerBus`` (``melody/backplane/local.py``) in one process: buses of unserved hubs linked
over real Unix sockets in a temporary directory, every body on asyncio and uvloop. What needs
worker processes (sessions, a supervisor, SIGKILL) is in ``tests/cluster/test_worker_bus.py``."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import uvloop

from melody import Melody
from melody.backplane import local_frames as frames
from melody.backplane.local import WorkerBus, socket_path
from melody.errors import BackplaneError

T = TypeVar("T")
WAIT = 10.0
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
Runner = Callable[[Callable[[], Awaitable[Any]]], Any]


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Runner:
    factory = LOOPS[request.param]

    def runner(main: Callable[[], Awaitable[T]]) -> T:
        async def bounded() -> T:
            async with asyncio.timeout(30):
                return await main()

        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(bounded())

    return runner


@pytest.fixture
def bus_dir() -> Iterator[str]:
    # Short on purpose (Unix socket paths): not pytest's tmp_path.
    with tempfile.TemporaryDirectory(prefix="mb-", dir="/tmp") as directory:
        yield directory


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(WAIT):
            while not predicate():
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for: {what}") from None


async def start(directory: str, slot: int, **options: Any) -> WorkerBus:
    bus = WorkerBus(directory, slot, reconnect_interval=0.02, report_interval=0, **options)
    hub = Melody(backplane=bus)
    await bus.start(hub)
    return bus


async def linked(buses: list[WorkerBus]) -> None:
    await wait_until(lambda: all(len(b.peers) == len(buses) - 1 for b in buses),
                     "every bus linked to every other")


def test_publish_goes_only_to_the_workers_with_interest(run: Runner, bus_dir: str) -> None:
    async def main() -> None:
        one, two, three = [await start(bus_dir, slot) for slot in (1, 2, 3)]
        try:
            await linked([one, two, three])
            one.subscribe("a")
            await wait_until(lambda: two.stats()["peer_topics"] == 1
                             and three.stats()["peer_topics"] == 1, "interest announced")
            two.publish("a", False, b"m:1")
            two.publish("b", False, b"m:2")  # nobody's topic: written to no one
            two.publish(None, True, b"m:3")  # hub-wide: to both
            # ``one``'s hub has no session in "a": read, and not delivered (ignored_unwanted).
            await wait_until(lambda: one.stats()["received"] == 1
                             and one.stats()["ignored_unwanted"] == 1
                             and three.stats()["received"] == 1, "deliveries")
            stats = two.stats()
            assert stats["published"] == 3
            assert stats["written"] == 3  # a to one; the broadcast to one and three
            assert stats["skipped_uninterested"] == 3  # a to three; b to one and three
            # The counts: one's topic, asked over the links.
            assert await two.cluster_topic_len("a") == 0  # the hub has no session in it
            # A subscribe and unsubscribe in one turn cost nothing on the wire.
            before = one.stats()["interest_sent"]
            one.subscribe("c")
            one.unsubscribe("c")
            await asyncio.sleep(0.05)
            assert one.stats()["interest_sent"] == before
            assert one.stats()["subscribe_coalesced"] == 1
            one.unsubscribe("a")
            await wait_until(lambda: two.stats()["peer_topics"] == 0, "interest withdrawn")
        finally:
            for bus in (one, two, three):
                await bus.stop()

    run(main)


def test_a_restarted_slot_is_linked_again(run: Runner, bus_dir: str) -> None:
    async def main() -> None:
        one, two, three = [await start(bus_dir, slot) for slot in (1, 2, 3)]
        try:
            await linked([one, two, three])
            for victim in (1, 3):  # a lower slot (dialed by the others), then the highest
                old = one if victim == 1 else three
                await old.stop()
                await wait_until(lambda: len(two.peers) == 1, "the stopped slot dropped")
                new = await start(bus_dir, victim)
                if victim == 1:
                    one = new
                else:
                    three = new
                await linked([one, two, three])
            assert two.stats()["peer_losses"] == 2
            two.publish(None, False, b"m:after")
            await wait_until(lambda: one.stats()["received"] == 1
                             and three.stats()["received"] == 1, "the new slots receive")
        finally:
            for bus in (one, two, three):
                await bus.stop()

    run(main)


def test_a_stalled_peer_makes_messages_drop_with_their_reason(run: Runner,
                                                              bus_dir: str) -> None:
    async def main() -> None:
        # Slot 1 is a peer that announces interest and never reads.
        loop = asyncio.get_running_loop()
        accepted: list[asyncio.Transport] = []

        class Stalled(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
                accepted.append(transport)
                transport.pause_reading()
                transport.write(frames.hello(1, bytes(16)) + frames.interest("t", True))

        server = await loop.create_unix_server(Stalled, socket_path(bus_dir, 1))
        bus = await start(bus_dir, 2, max_queue=50, max_queue_bytes=64 << 10,
                          max_message_bytes=8 << 10)
        try:
            await wait_until(lambda: bus.stats()["peer_topics"] == 1, "the stalled peer")
            payload = bytes(4 << 10)
            for _ in range(40):  # in one turn: all of it waits in the bus's queue
                bus.publish("t", True, payload)
            stats = bus.stats()
            assert stats["dropped_outgoing_queue_bytes"] > 0
            assert stats["written"] + stats["dropped_outgoing"] == 40
            assert stats["queued_bytes"] <= 64 << 10
            bus.publish("t", True, bytes(9 << 10))
            assert bus.stats()["dropped_outgoing_too_large"] == 1
            # The kernel's buffers fill; what is held for the peer stays bounded.
            for _ in range(200):
                for _ in range(60):
                    bus.publish("t", True, bytes(1 << 10))
                await asyncio.sleep(0)
            stats = bus.stats()
            assert stats["queued"] <= 50
            assert stats["queued_bytes"] <= (64 << 10) + (1 << 10)
            assert stats["dropped_outgoing_queue_full"] + stats[
                "dropped_outgoing_queue_bytes"] > 0
            assert stats["dropped_outgoing"] == sum(stats[r] for r in (
                "dropped_outgoing_queue_full", "dropped_outgoing_queue_bytes",
                "dropped_outgoing_too_large"))
        finally:
            await bus.stop()
            server.close()
            for transport in accepted:
                transport.abort()

    run(main)


def test_a_peer_that_does_not_answer_makes_the_count_raise(run: Runner,
                                                             bus_dir: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        accepted: list[asyncio.BaseTransport] = []

        class Mute(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                transport = cast(asyncio.Transport, transport)
                accepted.append(transport)
                transport.write(frames.hello(1, bytes(16)))

        server = await loop.create_unix_server(Mute, socket_path(bus_dir, 1))
        bus = await start(bus_dir, 2, timeout=0.2)
        try:
            await wait_until(lambda: bus.peers == [1], "the mute peer")
            with pytest.raises(BackplaneError, match=r"workers \[1\] did not answer"):
                await bus.cluster_topic_len("t")
            # A peer that dies while asked counts as having nothing.
            waiting = asyncio.ensure_future(bus.presence_read("t"))
            await asyncio.sleep(0.02)
            for transport in accepted:
                transport.abort()
            assert await waiting == {}
        finally:
            await bus.stop()
            server.close()

    run(main)


def test_settings_are_checked(bus_dir: str) -> None:
    with pytest.raises(ValueError):
        WorkerBus(bus_dir, 0)
    with pytest.raises(ValueError):
        WorkerBus(bus_dir, 1, max_queue_bytes=1)
    with pytest.raises(ValueError):
        WorkerBus("/tmp/" + "d" * 120, 1)
    assert Path(WorkerBus(bus_dir, 4).path).name == "4.sock"


def test_a_bus_without_slots_refuses_history(run: Runner, bus_dir: str) -> None:
    async def main() -> None:
        bus = WorkerBus(bus_dir, 1)
        hub = Melody(backplane=bus)
        hub.configure_topic("hist:*", history_size=10)
        await bus.start(hub)
        try:
            with pytest.raises(BackplaneError, match="does not keep history"):
                hub.publish_json("hist:1", {"n": 1})
        finally:
            await bus.stop()

    run(main)


def test_the_owner_of_a_topic_is_the_same_for_every_worker(bus_dir: str) -> None:
    buses = [WorkerBus(bus_dir, slot, 3) for slot in (1, 2, 3)]
    owners = {bus.owner(f"hist:{n}") for bus in buses for n in range(100)}
    assert owners == {1, 2, 3}
    for n in range(100):
        assert len({bus.owner(f"hist:{n}") for bus in buses}) == 1


def test_history_of_a_topic_whose_owner_is_down_is_refused(run: Runner, bus_dir: str) -> None:
    async def main() -> None:
        bus = WorkerBus(bus_dir, 2, 2, timeout=0.5)
        hub = Melody(backplane=bus)
        hub.configure_topic("hist:*", history_size=10)
        await bus.start(hub)  # slot 1, the other owner, is not there
        try:
            topic = next(t for t in (f"hist:{n}" for n in range(100)) if bus.owner(t) == 1)
            with pytest.raises(BackplaneError, match="not linked"):
                hub.publish_json(topic, {"n": 1})
            with pytest.raises(BackplaneError, match="not linked"):
                await hub.history(topic)
            # A topic it owns works alone: numbered here.
            mine = next(t for t in (f"hist:{n}" for n in range(100)) if bus.owner(t) == 2)
            hub.publish_json(mine, {"n": 1})
            page = await hub.history(mine)
            assert [p.offset for p in page.publications] == [1]
        finally:
            await bus.stop()

    run(main)
