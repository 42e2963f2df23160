"""What a hostile load costs the Redis backplane: memory while Redis stalls, and SUBSCRIBE
traffic under subscribe churn.

The hubs run in processes of their own, so that their memory is theirs alone to measure. This
file is also their program: ``python test_backplane_bounds.py --loop uvloop|asyncio`` serves one
hub on 127.0.0.1 (port 0), prints ``READY <port>`` once its backplane is connected and stops on
SIGTERM. ``MELODY_BACKPLANE_OPTIONS`` (JSON) holds extra ``RedisBackplane`` arguments; every
other setting is the default, as a user gets it. A client sends one command per message:

==================== ==========================================================================
``sub T`` / ``unsub T``  subscribe / unsubscribe this session; reply ``sub T True``
``pub T M`` / ``bc M``   ``hub.publish(T, M)`` / ``hub.broadcast(M)``
``flood N SIZE``     N ``broadcast_others`` of SIZE bytes each, yielding to the loop between two;
                     reply ``flood N``
``info``             reply ``info {json}``: ``hub.stats()`` and the process's memory
``mark``             ``info``, and the peak memory is measured from now on
==================== ==========================================================================

Those two tests use a redis-server of their own (``own_redis``): one stops it with SIGSTOP, the
other counts the commands it executed. The tests at the end run a backplane in this process,
on the session's Redis: drop reasons, coalescing, lingering, and the settings' ranges.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from cluster_support import Client, HubNode, RedisServer, fence, node_stats, wait_until

import melody
from melody.backplane import ENVELOPE_OVERHEAD
from melody.redis_backplane import BackplaneError, RedisBackplane

HOST = "127.0.0.1"
THIS = Path(__file__).resolve()

#: The issue's figures: 300 broadcasts of 1 MB while Redis is stopped for one second.
FLOOD = 300
FLOOD_SIZE = 1_000_000
STALL = 1.0
#: What a hub may grow beyond its outgoing byte bound while flooding: the message being built
#: (its str, its UTF-8 bytes and its envelope), the echo being read back, the allocator's slack.
#: Measured: 2-3 MiB. Before the byte bound the same flood grew a hub by 288 MiB to 1.1 GiB.
MARGIN = 16 << 20

#: Subscribe churn: cycles of one topic, then distinct topics subscribed and left, twice.
CYCLES = 10_000
TOPICS = 1_000
KEPT = 10
#: The churning node's settings: a linger longer than any pass of the churn (what is measured
#: is the design's bound, not how fast this machine sends 4,000 commands), and the default
#: pause between two batches of subscription changes.
LINGER = 5.0
SUBSCRIBE_INTERVAL = 0.01
#: How many SUBSCRIBE and UNSUBSCRIBE commands 10,000 cycles of one topic may cost, each.
MAX_COMMANDS_HOT = 5


# -- the hub program ------------------------------------------------------------------------

def _memory(reset: bool = False) -> dict[str, int]:
    """This process's resident size now and at its peak, in bytes; ``reset`` starts a new peak.

    Linux: VmRSS and VmHWM, the peak reset through ``/proc/self/clear_refs``. Elsewhere the
    peak since the process started (``ru_maxrss``), which cannot be reset, and no "now".
    """
    try:
        if reset:
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")  # 5: reset the peak resident size to the current one
        with open("/proc/self/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        return {"now": int(fields["VmRSS"].split()[0]) << 10,
                "peak": int(fields["VmHWM"].split()[0]) << 10}
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, bytes on macOS
        return {"now": 0, "peak": peak if sys.platform == "darwin" else peak << 10}


def make_hub() -> melody.Melody:
    options = json.loads(os.environ.get("MELODY_BACKPLANE_OPTIONS") or "{}")
    backplane = melody.RedisBackplane(
        os.environ["MELODY_REDIS_URL"], channel_prefix=os.environ["MELODY_CHANNEL_PREFIX"],
        **options)
    hub = melody.Melody(backplane=backplane)
    errors: list[str] = []

    @hub.handle_message
    async def on_message(session: melody.Session, text: str) -> None:
        command, _, rest = text.partition(" ")
        if command in ("sub", "unsub"):
            done = (hub.subscribe if command == "sub" else hub.unsubscribe)(session, rest)
            session.write(f"{command} {rest} {done}")
        elif command == "pub":
            topic, _, msg = rest.partition(" ")
            hub.publish(topic, msg)
        elif command == "bc":
            hub.broadcast(rest)
        elif command == "flood":
            count, size = map(int, rest.split())
            for k in range(count):
                head = f"m:flood:{k}:"
                hub.broadcast_others(head + "x" * (size - len(head)), session)
                await asyncio.sleep(0)  # as separate events would: the backplane may run
            session.write(f"flood {count}")
        elif command in ("info", "mark"):  # mark: info, and a new peak starts now
            session.write("info " + json.dumps({"stats": hub.stats(), "errors": errors[-20:],
                                                "memory": _memory(command == "mark")}))
        else:
            session.write(f"unknown {command}")

    @hub.handle_error
    def on_error(session: melody.Session | None, error: BaseException) -> None:
        errors.append(f"{type(error).__name__}: {error}")

    return hub


async def _serve() -> int:
    hub = make_hub()
    server: Any = await hub.serve(HOST, 0)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    assert hub.backplane is not None
    deadline = loop.time() + 20
    while not hub.backplane.stats()["connected"]:
        if loop.time() > deadline:
            print("backplane did not connect", file=sys.stderr, flush=True)
            return 2
        await asyncio.sleep(0.01)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.close()
    hub.close()
    await hub.wait_closed(timeout=2)
    return 0


# -- the tests ------------------------------------------------------------------------------

Nodes = Callable[..., list[HubNode]]
Clients = Callable[..., Awaitable[Client]]


async def _command_calls(url: str, *names: str) -> dict[str, int]:
    # What the broker itself executed (INFO commandstats), not what the hubs say they sent.
    r = aioredis.from_url(url)
    try:
        stats = await r.info("commandstats")
    finally:
        await r.aclose()
    return {name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in names}


@pytest.mark.asyncio
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_a_stalled_redis_costs_the_byte_bound_and_cuts_no_subscriber(
        own_redis: RedisServer, hub_nodes: Nodes, clients: Clients, loop: str) -> None:
    a, b = hub_nodes(own_redis.url, 2, loop=loop, script=THIS)
    flooder = await clients(a.url, "flooder@a")
    listener = await clients(b.url, "listener@b")
    reply = await flooder.command("mark")
    before_a = json.loads(reply[5:])
    before_b = await listener.info()
    bound = melody.RedisBackplane().max_queue_bytes

    assert own_redis.process is not None
    own_redis.process.send_signal(signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        assert await flooder.command(f"flood {FLOOD} {FLOOD_SIZE}") == f"flood {FLOOD}"
        await asyncio.sleep(max(0.0, STALL - (time.monotonic() - stopped)))
    finally:
        own_redis.process.send_signal(signal.SIGCONT)

    async def drained() -> bool:
        a_stats = await node_stats(flooder)
        b_stats = await node_stats(listener)
        sent = a_stats["backplane_published"] - before_a["stats"]["backplane_published"]
        got = b_stats["backplane_received"] - before_b["stats"]["backplane_received"]
        return a_stats["backplane_queued"] == 0 and got == sent

    await wait_until(drained, "node a's queue drained and node b received all it sent")
    after_a = await flooder.info()
    after_b = await listener.info()
    sa, sb = after_a["stats"], after_b["stats"]

    # Memory: the outgoing queue held at most its byte bound (plus the message in hand), and
    # the backlog went out max_batch_bytes at a time, each step waiting for the echo to be read.
    base = before_a["memory"]["now"] or before_a["memory"]["peak"]  # no "now": the peak
    growth = after_a["memory"]["peak"] - base
    assert growth <= bound + MARGIN, f"hub grew {growth >> 20} MiB (bound {bound >> 20})"

    # Every flood message was either published or dropped, and each drop has its reason.
    def delta(key: str) -> int:
        return int(sa[key] - before_a["stats"][key])

    published, dropped = delta("backplane_published"), delta("backplane_dropped_outgoing")
    assert published + dropped == FLOOD
    assert published >= 1 and delta("backplane_dropped_outgoing_queue_bytes") >= 1
    assert dropped == (delta("backplane_dropped_outgoing_queue_bytes")
                       + delta("backplane_dropped_outgoing_queue_full")
                       + delta("backplane_dropped_outgoing_too_large"))
    assert sa["backplane_lost_while_down"] == 0
    assert delta("backplane_publish_syncs") >= 1

    # Redis cut no connection: no outage on either node, and the other node got the rest.
    for stats in (sa, sb):
        assert stats["backplane_outages"] == 0 and stats["backplane_reconnects"] == 0
        assert stats["backplane_connected"] == 1
    assert sb["backplane_received"] - before_b["stats"]["backplane_received"] == published
    assert not any("BackplaneError" in e for e in after_a["errors"] + after_b["errors"]
                   if "unreachable" in e)
    assert a.alive() and b.alive()


@pytest.mark.asyncio
async def test_subscribe_churn_costs_redis_a_bounded_number_of_commands(
        own_redis: RedisServer, hub_nodes: Nodes, clients: Clients,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MELODY_BACKPLANE_OPTIONS", json.dumps(
        {"unsubscribe_linger": LINGER, "subscribe_interval": SUBSCRIBE_INTERVAL}))
    a, b = hub_nodes(own_redis.url, 2, script=THIS)
    publisher = await clients(a.url, "publisher@a")
    churner = await clients(b.url, "churner@b")
    roamer = await clients(b.url, "roamer@b")  # a session holds 1,000 topics at most
    start = await _command_calls(own_redis.url, "subscribe", "unsubscribe")

    # One topic, subscribed and left 10,000 times; each command waits for its reply, so the
    # backplane gets the chance to send a command between any two.
    for _ in range(CYCLES):
        await churner.subscribe("hot")
        await churner.unsubscribe("hot")
    await churner.subscribe("hot")
    hot = await _command_calls(own_redis.url, "subscribe", "unsubscribe")
    assert hot["subscribe"] - start["subscribe"] <= MAX_COMMANDS_HOT, (start, hot)
    assert hot["unsubscribe"] - start["unsubscribe"] <= MAX_COMMANDS_HOT, (start, hot)

    # 1,000 distinct topics, subscribed then left, twice; the first ten are kept.
    began = time.monotonic()
    topics = [f"t{k}" for k in range(TOPICS)]
    for _ in range(2):
        for topic in topics:
            await roamer.subscribe(topic)
        for topic in topics:
            await roamer.unsubscribe(topic)
    for topic in topics[:KEPT]:
        await roamer.subscribe(topic)

    async def settled() -> bool:
        stats = await node_stats(churner)
        return (stats["backplane_channels"] == 2 + KEPT  # hub-wide, "hot", the kept
                and stats["backplane_lingering"] == 0
                and stats["backplane_pending_changes"] == 0)

    await wait_until(settled, "node b's subscriptions settled")
    end = await _command_calls(own_redis.url, "subscribe", "unsubscribe")
    # Each distinct topic was subscribed once (the second pass found them lingering), and the
    # commands came in batches: at most one of each kind per subscribe_interval (plus one
    # batch sent before ``began``), and never one per topic.
    batches = (time.monotonic() - began) / SUBSCRIBE_INTERVAL + 2
    for name in ("subscribe", "unsubscribe"):
        calls = end[name] - hot[name]
        assert calls <= min(batches, TOPICS), (name, hot, end, batches)
    stats = await node_stats(churner)
    assert stats["backplane_subscribed_channels"] == 1 + TOPICS  # "hot" and each topic once
    assert stats["backplane_unsubscribed_channels"] == TOPICS - KEPT
    # Every cycle's unsubscribe either lingered (the next subscribe resumed it) or cancelled
    # a SUBSCRIBE not sent yet.
    assert stats["backplane_linger_resumed"] + stats["backplane_subscribe_coalesced"] >= CYCLES

    # The node still receives what its sessions hold, and nothing else.
    await publisher.send("pub hot m:hot")
    for k in (0, KEPT - 1, KEPT, TOPICS - 1):
        await publisher.send(f"pub t{k} m:t{k}")
    await fence([publisher], [publisher, churner, roamer])
    assert churner.received() == Counter({"m:hot": 1})
    assert roamer.received() == Counter({"m:t0": 1, f"m:t{KEPT - 1}": 1})
    assert a.alive() and b.alive()


# -- the same bounds in one process, on the shared Redis ------------------------------------

async def _started(redis_url: str, prefix: str, **options: Any) -> tuple[
        RedisBackplane, list[BaseException]]:
    backplane = RedisBackplane(redis_url, channel_prefix=prefix, report_interval=0.0,
                               **options)
    hub = melody.Melody(backplane=backplane)
    reported: list[BaseException] = []
    hub.handle_error(lambda session, error: reported.append(error))
    await backplane.start(hub)
    return backplane, reported


@pytest.mark.asyncio
async def test_outgoing_drops_are_counted_by_reason(redis_url: str, prefix: str) -> None:
    backplane, reported = await _started(redis_url, prefix, max_queue=3,
                                         max_queue_bytes=64 << 10, max_message_bytes=32 << 10)
    try:
        fits = b"y" * ((32 << 10) - ENVELOPE_OVERHEAD)  # an envelope of max_message_bytes
        # No await in between: the writer task cannot run, what is queued stays queued.
        backplane.publish(None, True, fits + b"y")  # one byte over max_message_bytes
        backplane.publish(None, True, fits)
        backplane.publish(None, True, fits)          # 64 KiB held: max_queue_bytes
        backplane.publish(None, False, b"s")
        stats = backplane.stats()
        assert stats["dropped_outgoing_too_large"] == 1
        assert stats["dropped_outgoing_queue_bytes"] == 1
        assert stats["queued"] == 2 and stats["queued_bytes"] == 64 << 10
        await wait_until(lambda: backplane.stats()["queued"] == 0, "the queue drained")
        assert backplane.stats()["queued_bytes"] == 0
        for k in range(4):
            backplane.publish(None, False, b"s%d" % k)  # the fourth: max_queue
        stats = backplane.stats()
        assert stats["dropped_outgoing_queue_full"] == 1
        assert stats["dropped_outgoing"] == 3 and stats["published"] == 2
        errors = " ".join(str(e) for e in reported if isinstance(e, BackplaneError))
        for setting in ("max_message_bytes", "max_queue_bytes", "3 messages"):
            assert setting in errors, errors
        await wait_until(lambda: backplane.stats()["published"] == 5, "the rest published")
    finally:
        await backplane.stop()


@pytest.mark.asyncio
async def test_a_subscription_undone_before_it_was_sent_costs_no_command(
        redis_url: str, prefix: str) -> None:
    backplane, _ = await _started(redis_url, prefix)
    try:
        for _ in range(CYCLES):  # no await: the backplane's tasks cannot run in between
            backplane.subscribe("x")
            backplane.unsubscribe("x")
        stats = backplane.stats()
        assert stats["pending_changes"] == 0 and stats["subscribe_coalesced"] == CYCLES
        backplane.subscribe("y")  # one change sent after the churn, then confirmed
        await wait_until(lambda: backplane.stats()["channels"] == 2, "y confirmed")
        stats = backplane.stats()
        assert stats["subscribed_channels"] == 1 and stats["subscribe_batches"] == 1
    finally:
        await backplane.stop()


@pytest.mark.asyncio
async def test_a_left_channel_lingers_then_goes_and_its_messages_are_dropped(
        redis_url: str, prefix: str) -> None:
    backplane, _ = await _started(redis_url, prefix, unsubscribe_linger=0.3, max_lingering=2)
    r = aioredis.from_url(redis_url)
    try:
        for topic in ("a", "b", "c"):
            backplane.subscribe(topic)
        await wait_until(lambda: backplane.stats()["channels"] == 4, "a, b, c confirmed")
        backplane.unsubscribe("a")
        backplane.subscribe("a")  # back within the linger: no command
        backplane.unsubscribe("a")
        assert backplane.stats()["linger_resumed"] == 1
        # A message for a lingering channel reaches Redis's subscriber, not the hub.
        await r.publish(f"{prefix}:topic:a", b"n" * 16 + b"\x00late")
        await wait_until(lambda: backplane.stats()["ignored_unwanted"] == 1, "dropped")
        backplane.unsubscribe("b")
        backplane.unsubscribe("c")  # a third lingering channel: the oldest ("a") goes now
        stats = backplane.stats()
        assert stats["lingering"] == 2 and stats["linger_evicted"] == 1
        await wait_until(lambda: backplane.stats()["channels"] == 1, "the linger expired")
        stats = backplane.stats()
        assert stats["linger_expired"] == 2 and stats["unsubscribed_channels"] == 3
        assert stats["subscribed_channels"] == 3 and stats["received"] == 0
    finally:
        await r.aclose()
        await backplane.stop()


_SETTINGS_OUT_OF_RANGE: list[tuple[str, object]] = [
    *[(name, bad) for name in ("max_queue", "max_batch") for bad in (0, (1 << 31) + 1)],
    ("max_queue_bytes", (64 << 10) - 1), ("max_queue_bytes", (1 << 36) + 1),
    ("max_message_bytes", 1023), ("max_message_bytes", (8 << 20) + 1),  # > max_queue_bytes
    ("max_batch_bytes", 1023), ("max_batch_bytes", (64 << 20) + 1),
    ("max_lingering", -1), ("max_lingering", (1 << 31) + 1),
    ("unsubscribe_linger", -0.5), ("unsubscribe_linger", 31 * 86400.0),
    ("subscribe_interval", -0.5), ("subscribe_interval", 61.0),
    *[(name, bad) for name in ("timeout", "reconnect_min", "health_check_interval",
                               "presence_interval") for bad in (0, -1.0, 31 * 86400.0)],
    ("reconnect_max", 0.05), ("reconnect_max", 31 * 86400.0),   # below reconnect_min
    ("presence_ttl", 1.0), ("presence_ttl", 31 * 86400.0),      # not above presence_interval
    ("report_interval", -1.0), ("report_interval", 31 * 86400.0),
]
_NUMERIC_SETTINGS = sorted({name for name, _ in _SETTINGS_OUT_OF_RANGE})


@pytest.mark.parametrize(("name", "value"), _SETTINGS_OUT_OF_RANGE)
def test_a_setting_out_of_its_range_is_refused(name: str, value: object) -> None:
    options: dict[str, Any] = {name: value}
    with pytest.raises(ValueError, match=name):
        RedisBackplane(**options)


@pytest.mark.parametrize("value", [True, float("nan"), float("inf"), "1"])
@pytest.mark.parametrize("name", _NUMERIC_SETTINGS)
def test_a_setting_that_is_not_a_finite_number_is_refused(name: str, value: object) -> None:
    options: dict[str, Any] = {name: value}
    with pytest.raises(ValueError, match=name):
        RedisBackplane(**options)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A hub for test_backplane_bounds.py.")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    if parser.parse_args().loop == "uvloop":
        melody.install_uvloop()
    sys.exit(asyncio.run(_serve()))
