"""A load-generator process: its share of the connections, driven by the coordinator.

The coordinator (:mod:`melody.bench.runner`) starts one worker per client process and talks to
it over a pipe: one command, one reply (``("ok", result)`` or ``("error", traceback)``). Live
counters (connections open, broadcasts delivered, round trips, churn cycles) go through a
shared array of int64 instead, written as they change, so the coordinator can print progress,
measure rates over an exact window and let the publisher bound the messages in flight without
a message per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
import traceback
from array import array
from collections import Counter
from multiprocessing.connection import Connection as Pipe
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from melody.bench.client import BenchClient, make_json_payload, make_payload, seed_padding
from melody.bench.system import pin, raise_nofile, renice

__all__ = ["SLOTS", "SLOT", "Sampler", "Target", "Worker", "worker_main"]

#: int64 slots per worker in the shared array, and what each holds.
SLOTS = 8
SLOT = {
    "open": 0,          # connections open now
    "delivered": 1,     # broadcasts received in order since the phase started
    "roundtrips": 2,    # echo replies received in order since the phase started
    "published": 3,     # broadcasts sent by the publisher (worker 0) since the phase started
    "cycles": 4,        # churn cycles completed since the phase started
    "failed": 5,        # connections that failed since the phase started
    "connected": 6,     # connections opened since the phase started
}

_monotonic_ns = time.monotonic_ns
# Linux's IP_BIND_ADDRESS_NO_PORT (24; Python names it from 3.12 on): see _connect_from.
_BIND_ADDRESS_NO_PORT: int | None = getattr(
    socket, "IP_BIND_ADDRESS_NO_PORT", 24 if sys.platform.startswith("linux") else None)


class Target(NamedTuple):
    """One server to connect to: where, and the Host header and path of the upgrade."""

    host: str
    port: int
    host_header: str
    path: str

    @classmethod
    def parse(cls, text: str) -> Target:
        url = urlsplit(text)
        if url.scheme != "ws":
            raise ValueError(f"only ws:// URLs are supported, not {url.scheme}://")
        return cls(url.hostname or "127.0.0.1", url.port or 80, url.netloc,
                   (url.path or "/") + (f"?{url.query}" if url.query else ""))


class Sampler:
    """Keeps at most ``cap`` of the values added, evenly spread over the whole run.

    When full it keeps every other value and from then on records one value in two (then one
    in four, ...): the kept samples stay uniform in time, so percentiles are not biased towards
    the start of a phase, and memory stays bounded however long the phase is.
    """

    __slots__ = ("values", "cap", "stride", "skip", "count")

    def __init__(self, cap: int) -> None:
        self.values = array("q")
        self.cap = max(cap, 16)
        self.stride = 1
        self.skip = 0
        self.count = 0

    def add(self, value: int) -> None:
        self.count += 1
        if self.skip:
            self.skip -= 1
            return
        self.skip = self.stride - 1
        values = self.values
        values.append(value)
        if len(values) >= self.cap:
            self.values = values[::2]
            self.stride *= 2


class Worker:
    """The connections of one client process and the commands that drive them."""

    def __init__(self, index: int, pipe: Pipe, shared: Any, options: dict[str, Any]) -> None:
        self.index = index
        self.pipe = pipe
        self.loop = asyncio.get_running_loop()
        self.shared = memoryview(shared).cast("B").cast("q")
        self.nworkers = len(self.shared) // SLOTS
        base = index * SLOTS
        self.o_open = base + SLOT["open"]
        self.o_delivered = base + SLOT["delivered"]
        self.o_roundtrips = base + SLOT["roundtrips"]
        self.o_published = base + SLOT["published"]
        self.o_cycles = base + SLOT["cycles"]
        self.o_failed = base + SLOT["failed"]
        self.o_connected = base + SLOT["connected"]

        # Every server of the run (one, or the nodes of a cluster): connection i of this
        # process goes to targets[(index + i) % len(targets)], so worker 0's first connection,
        # the publisher's, is on the first server.
        self.targets = [Target.parse(u) for u in options.get("urls") or [options["url"]]]
        self.next_target = index
        # Source addresses to spread connections over (a run past one address's ephemeral
        # ports, see melody.bench.sources); None: the kernel chooses. Each process starts at
        # its own offset so that the processes share the addresses evenly.
        self.sources: list[str] | None = options.get("sources") or None
        self.next_source = index
        self.size: int = options["size"]
        self.timeout: float = options["timeout"]
        self.max_message_size = max(1 << 20, self.size * 2)
        self.sample_cap: int = options["sample_cap"]
        seed_padding(options["seed"])

        self.clients: list[BenchClient] = []
        self.open_count = 0
        self.errors: Counter[str] = Counter()

        # Per-phase counters (reset by rx_start / echo_start / churn).
        self.delivered = 0
        self.gaps = 0
        self.disorder = 0
        self.unexpected = 0
        self.protocol_errors = 0
        self.roundtrips = 0
        self.echo_sent = 0
        self.echo_running = False
        self.latency: Sampler | None = None
        self.rtt: Sampler | None = None
        self.receivers: list[BenchClient] = []
        # "B" + the 10 digits of each broadcast sequence number from prefix_base on (see
        # BenchClient.data_received), extended as the phase goes.
        self.prefix_base = 0
        self.prefixes: list[str] = []

        # The publisher (worker 0 only).
        self.next_seq = 1
        self.pub_client: BenchClient | None = None
        self.pub_mode = ""
        self.pub_json = False
        self.pub_active = False
        self.pub_count = 0
        self.pub_target = 0
        self.pub_window = 0
        self.pub_receivers = 0
        self.pub_rate = 0.0
        self.pub_t0 = 0.0
        self.pub_handle: asyncio.Handle | None = None
        self.pub_done: asyncio.Future[None] | None = None

        self.done: asyncio.Future[None] = self.loop.create_future()

    # -- bookkeeping called by the clients -----------------------------------------------------

    def client_opened(self, client: BenchClient) -> None:
        self.open_count += 1
        self.shared[self.o_open] = self.open_count

    def client_lost(self, client: BenchClient) -> None:
        self.open_count -= 1
        self.shared[self.o_open] = self.open_count

    def note_error(self, text: str) -> None:
        self.errors[text[:120]] += 1

    def extend_prefixes(self) -> None:
        """Make the expected-message prefixes of the next 4096 sequence numbers."""
        if len(self.prefixes) >= 1 << 20:
            return  # enough for any phase; beyond, receivers parse every number
        start = self.prefix_base + len(self.prefixes)
        self.prefixes.extend([f"B{seq:010d}" for seq in range(start, start + 4096)])

    # -- the command loop ----------------------------------------------------------------------

    async def run(self) -> None:
        self.loop.add_reader(self.pipe.fileno(), self._on_pipe)
        # libuv makes a polled descriptor non-blocking; replies (megabytes of latency samples)
        # must leave whole, so writes on the pipe block until the coordinator reads them.
        os.set_blocking(self.pipe.fileno(), True)
        try:
            await self.done
        finally:
            self.loop.remove_reader(self.pipe.fileno())
            for c in self.clients:
                if c.transport is not None:
                    c.transport.abort()

    def _on_pipe(self) -> None:
        try:
            while self.pipe.poll():
                name, args = self.pipe.recv()
                self.loop.create_task(self._command(name, args))
        except EOFError:
            # The coordinator is gone: nothing left to do.
            if not self.done.done():
                self.done.set_result(None)

    async def _command(self, name: str, args: tuple[Any, ...]) -> None:
        try:
            result = await getattr(self, "cmd_" + name)(*args)
            reply: tuple[str, Any] = ("ok", result)
        except Exception:
            reply = ("error", traceback.format_exc())
        try:
            self.pipe.send(reply)
        except (BrokenPipeError, OSError):
            if not self.done.done():
                self.done.set_result(None)

    async def cmd_exit(self) -> None:
        self.loop.call_soon(self._finish)

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    # -- connecting ----------------------------------------------------------------------------

    async def _open(self, target: Target | None = None) -> BenchClient:
        if target is None:
            target = self.targets[self.next_target % len(self.targets)]
            self.next_target += 1
        client = BenchClient(self, target)
        if self.sources is not None:
            source = self.sources[self.next_source % len(self.sources)]
            self.next_source += 1
            sock = await asyncio.wait_for(self._connect_from(source, target), self.timeout)
            await self.loop.create_connection(lambda: client, sock=sock)
        else:
            await asyncio.wait_for(
                self.loop.create_connection(lambda: client, target.host, target.port),
                self.timeout)
        try:
            await asyncio.wait_for(client.opened, self.timeout)
        except BaseException:
            if client.transport is not None:
                client.transport.abort()
            raise
        return client

    async def _connect_from(self, source: str, target: Target) -> socket.socket:
        """A socket connected to ``target`` from the address ``source``.

        bind() with port 0 picks the port at once, searching the whole ephemeral range for
        one free on that address: with tens of thousands bound it costs more per connection
        the more there are (measured: 600 connections/s at 50,000, 270/s at 80,000, all of it
        in the kernel's bind-conflict search). IP_BIND_ADDRESS_NO_PORT (Linux 4.2) leaves the
        port to connect(), which picks it by the whole address quadruple, in constant time.
        """
        family = socket.AF_INET6 if ":" in source else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if _BIND_ADDRESS_NO_PORT is not None and family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, _BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
            await self.loop.sock_connect(sock, (target.host, target.port))
        except BaseException:
            sock.close()
            raise
        return sock

    async def cmd_connect(self, count: int, concurrency: int) -> dict[str, Any]:
        """Open ``count`` connections, at most ``concurrency`` handshakes in flight."""
        shared = self.shared
        shared[self.o_failed] = 0
        shared[self.o_connected] = 0
        times = array("q")
        failed = 0
        opened: list[tuple[int, BenchClient]] = []
        remaining = iter(range(count))

        async def lane() -> None:
            nonlocal failed
            for i in remaining:
                t0 = _monotonic_ns()
                target = self.targets[(self.index + i) % len(self.targets)]
                try:
                    client = await self._open(target)
                except (TimeoutError, OSError, ConnectionError) as exc:
                    failed += 1
                    shared[self.o_failed] = failed
                    self.note_error(f"{type(exc).__name__}: {exc}")
                    continue
                times.append(_monotonic_ns() - t0)
                opened.append((i, client))
                shared[self.o_connected] = len(opened)

        t_start = _monotonic_ns()
        await asyncio.gather(*(lane() for _ in range(max(1, min(concurrency, count)))))
        t_end = _monotonic_ns()
        opened.sort(key=lambda pair: pair[0])
        self.clients.extend(client for _, client in opened)
        return {
            "ok": len(opened), "failed": failed, "t_start": t_start, "t_end": t_end,
            "handshake_ns": times, "errors": dict(self.errors), "open": self.open_count,
        }

    async def cmd_close_all(self, timeout: float) -> dict[str, Any]:
        """Close every connection with the closing handshake; abort those still open after
        ``timeout`` seconds."""
        clients = [c for c in self.clients if c.is_open]
        for c in clients:
            c.start_close()
        waiting = [c.lost_future for c in clients]
        if waiting:
            await asyncio.wait(waiting, timeout=timeout)
        clean = sum(1 for c in clients if c.lost_future.done() and c.close_received)
        aborted = 0
        for c in clients:
            if not c.lost_future.done():
                aborted += 1
                if c.transport is not None:
                    c.transport.abort()
        if clients:
            await asyncio.wait([c.lost_future for c in clients], timeout=1.0)
        self.clients = []
        self.pub_client = None
        return {"closed": len(clients), "clean": clean, "aborted": aborted,
                "open": self.open_count}

    # -- broadcast phases ----------------------------------------------------------------------

    async def cmd_rx_start(self, seq0: int, record_latency: bool) -> dict[str, Any]:
        """Start a broadcast phase: every open connection expects sequence ``seq0`` next."""
        self.receivers = [c for c in self.clients if c.is_open]
        for c in self.receivers:
            c.expect = seq0
        self.prefix_base = seq0
        self.prefixes = []
        self.extend_prefixes()
        self.delivered = self.gaps = self.disorder = self.unexpected = 0
        self.protocol_errors = 0
        self.latency = Sampler(self.sample_cap) if record_latency else None
        self.shared[self.o_delivered] = 0
        self.shared[self.o_published] = 0
        self.errors.clear()
        return {"receivers": len(self.receivers)}

    async def cmd_rx_end(self, next_seq: int) -> dict[str, Any]:
        """End a broadcast phase whose last message was ``next_seq - 1``: count what is missing."""
        tail = 0
        short = 0
        for c in self.receivers:
            if c.expect < next_seq:
                tail += next_seq - c.expect
                short += 1
        sampler = self.latency
        self.latency = None
        result = {
            "receivers": len(self.receivers),
            "delivered": self.delivered,
            "lost": self.gaps + tail,
            "connections_short": short,
            "out_of_order": self.disorder,
            "unexpected": self.unexpected,
            "protocol_errors": self.protocol_errors,
            "still_open": sum(1 for c in self.receivers if c.is_open),
            "latency_ns": sampler.values if sampler is not None else None,
            "latency_count": sampler.count if sampler is not None else 0,
            "errors": dict(self.errors),
        }
        self.receivers = []
        return result

    async def cmd_publish(self, mode: str, value: float, window: int,
                          receivers: int, kind: str = "B") -> dict[str, Any]:
        """Worker 0: start publishing broadcasts from its first connection.

        ``mode`` is ``"rate"`` (``value`` per second, stamped when sent), ``"window"`` (as fast
        as at most ``window`` broadcasts are in flight, until stopped) or ``"count"``
        (``value`` broadcasts under the same window). In flight means published but not yet
        delivered to all ``receivers``, counted across every worker through the shared array.
        ``kind`` is ``"B"`` (a stamped text broadcast) or ``"{"`` (a JSON object the hub decodes
        and broadcasts encoded again).
        """
        if kind not in ("B", "{"):
            raise ValueError(f"unknown broadcast kind {kind!r}")
        live = [c for c in self.clients if c.is_open]
        if not live:
            raise RuntimeError("no open connection to publish from")
        self.pub_client = live[0]
        self.pub_client.is_publisher = True
        self.pub_mode = mode
        self.pub_json = kind == "{"
        self.pub_count = 0
        self.pub_target = int(value) if mode == "count" else 0
        self.pub_rate = float(value) if mode == "rate" else 0.0
        self.pub_window = max(1, window)
        self.pub_receivers = max(1, receivers)
        self.pub_active = True
        self.pub_done = self.loop.create_future()
        self.pub_t0 = self.loop.time()
        if mode == "rate":
            self.pub_handle = self.loop.call_soon(self._pub_rate_tick)
        else:
            self.pub_handle = self.loop.call_soon(self._pub_poll)
        return {"seq0": self.next_seq}

    async def cmd_publish_wait(self, timeout: float) -> dict[str, Any]:
        """Worker 0: wait until a ``"count"`` publish has sent everything."""
        if self.pub_done is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.pub_done), timeout)
        return await self.cmd_publish_stop()

    async def cmd_publish_stop(self) -> dict[str, Any]:
        """Worker 0: stop publishing; return how many were sent and the next sequence number."""
        self.pub_active = False
        if self.pub_handle is not None:
            self.pub_handle.cancel()
            self.pub_handle = None
        if self.pub_client is not None:
            self.pub_client.is_publisher = False
        return {"published": self.pub_count, "next_seq": self.next_seq,
                "elapsed": self.loop.time() - self.pub_t0}

    def _publish_one(self) -> None:
        client = self.pub_client
        assert client is not None
        if not client.is_open:
            self.pub_active = False
            self.note_error("publisher connection lost")
            return
        seq = self.next_seq
        self.next_seq = seq + 1
        if self.pub_json:
            client.send_text(make_json_payload(seq, _monotonic_ns(), self.size))
        else:
            client.send_text(make_payload("B", seq, _monotonic_ns(), self.size))
        self.pub_count += 1
        self.shared[self.o_published] = self.pub_count

    def _pub_rate_tick(self) -> None:
        if not self.pub_active:
            return
        due = int((self.loop.time() - self.pub_t0) * self.pub_rate) + 1
        while self.pub_count < due and self.pub_active:
            self._publish_one()
        next_at = self.pub_t0 + self.pub_count / self.pub_rate
        self.pub_handle = self.loop.call_at(next_at, self._pub_rate_tick)

    def _in_flight_room(self) -> int:
        shared = self.shared
        delivered = 0
        for w in range(self.nworkers):
            delivered += shared[w * SLOTS + SLOT["delivered"]]
        per = self.pub_receivers
        in_flight = self.pub_count * per - delivered
        return (self.pub_window * per - in_flight) // per

    def publisher_kick(self) -> None:
        """The publisher received something: deliveries progressed, maybe there is room."""
        if self.pub_active and self.pub_mode != "rate":
            self._pub_fill()

    def _pub_fill(self) -> None:
        room = self._in_flight_room()
        while room > 0 and self.pub_active:
            if self.pub_mode == "count" and self.pub_count >= self.pub_target:
                self.pub_active = False
                if self.pub_done is not None and not self.pub_done.done():
                    self.pub_done.set_result(None)
                return
            self._publish_one()
            room -= 1
        if self.pub_mode == "count" and self.pub_count >= self.pub_target:
            self.pub_active = False
            if self.pub_done is not None and not self.pub_done.done():
                self.pub_done.set_result(None)

    def _pub_poll(self) -> None:
        # Other processes' deliveries show only in the shared array: look every half
        # millisecond as well as whenever the publisher's own connection receives.
        if not self.pub_active:
            return
        self._pub_fill()
        if self.pub_active:
            self.pub_handle = self.loop.call_later(0.0005, self._pub_poll)

    # -- echo ----------------------------------------------------------------------------------

    async def cmd_echo_start(self, count: int, record: bool, depth: int) -> dict[str, Any]:
        """Start closed-loop round trips on the first ``count`` open connections, ``depth``
        requests in flight on each."""
        live = [c for c in self.clients if c.is_open][:count]
        self.receivers = live
        self.roundtrips = self.echo_sent = 0
        self.gaps = self.disorder = self.unexpected = self.protocol_errors = 0
        self.rtt = Sampler(self.sample_cap) if record else None
        self.shared[self.o_roundtrips] = 0
        self.echo_running = True
        for c in live:
            c.echo_on = True
            c.echo_expect = c.echo_next
            c.send_echoes(depth)
        return {"connections": len(live)}

    async def cmd_echo_reset_samples(self) -> None:
        """Forget the round-trip times recorded so far (the end of the warm-up)."""
        if self.rtt is not None:
            self.rtt = Sampler(self.sample_cap)

    async def cmd_echo_stop(self, timeout: float) -> dict[str, Any]:
        """Stop sending; wait up to ``timeout`` s for the replies in flight; count the missing."""
        self.echo_running = False
        live = self.receivers
        deadline = self.loop.time() + timeout
        while self.loop.time() < deadline:
            if all(c.echo_expect >= c.echo_next or not c.is_open for c in live):
                break
            await asyncio.sleep(0.01)
        missing = sum(max(0, c.echo_next - c.echo_expect) for c in live)
        for c in live:
            c.echo_on = False
        sampler = self.rtt
        self.rtt = None
        self.receivers = []
        return {
            "connections": len(live), "sent": self.echo_sent, "roundtrips": self.roundtrips,
            "lost": self.gaps + missing, "out_of_order": self.disorder,
            "unexpected": self.unexpected, "protocol_errors": self.protocol_errors,
            "rtt_ns": sampler.values if sampler is not None else None,
            "rtt_count": sampler.count if sampler is not None else 0,
            "errors": dict(self.errors),
        }

    # -- churn ---------------------------------------------------------------------------------

    async def cmd_churn(self, duration: float, concurrency: int,
                        max_cycles: int) -> dict[str, Any]:
        """Connect, one echo, close; repeat on ``concurrency`` lanes for ``duration`` s."""
        shared = self.shared
        shared[self.o_cycles] = 0
        shared[self.o_failed] = 0
        self.roundtrips = self.echo_sent = 0
        self.gaps = self.disorder = self.unexpected = self.protocol_errors = 0
        self.errors.clear()
        cycles = failed = lost = unclean = 0
        deadline = self.loop.time() + duration

        async def lane() -> None:
            nonlocal cycles, failed, lost, unclean
            while self.loop.time() < deadline and (not max_cycles or cycles < max_cycles):
                try:
                    client = await self._open()
                except (TimeoutError, OSError, ConnectionError) as exc:
                    failed += 1
                    shared[self.o_failed] = failed
                    self.note_error(f"connect: {type(exc).__name__}: {exc}")
                    continue
                try:
                    waiter = self.loop.create_future()
                    client.echo_waiter = waiter
                    client.echo_expect = client.echo_next
                    client.send_echoes(1)
                    try:
                        await asyncio.wait_for(waiter, self.timeout)
                    except (TimeoutError, ConnectionError) as exc:
                        lost += 1
                        self.note_error(f"echo: {type(exc).__name__}: {exc}")
                    client.start_close()
                    try:
                        await asyncio.wait_for(asyncio.shield(client.lost_future),
                                               self.timeout)
                    except TimeoutError:
                        pass
                    if not client.lost_future.done() or not client.close_received:
                        unclean += 1
                finally:
                    if client.transport is not None and not client.lost_future.done():
                        client.transport.abort()
                cycles += 1
                shared[self.o_cycles] = cycles

        t0 = self.loop.time()
        await asyncio.gather(*(lane() for _ in range(max(1, concurrency))))
        return {
            "cycles": cycles, "failed": failed, "lost": lost + self.gaps,
            "out_of_order": self.disorder, "unclean_close": unclean,
            "elapsed": self.loop.time() - t0, "errors": dict(self.errors),
        }


def worker_main(index: int, pipe: Pipe, shared: Any, options: dict[str, Any]) -> None:
    """Entry point of a client process (``multiprocessing`` target)."""
    pin(0, options.get("cpus"))
    renice(0, options.get("nice"))
    raise_nofile(options.get("nofile"))

    async def main() -> None:
        worker = Worker(index, pipe, shared, options)
        await worker.run()

    if options.get("uvloop", True):
        try:
            import uvloop
        except ImportError:
            uvloop = None  # type: ignore[assignment]
        if uvloop is not None:
            uvloop.run(main())
            return
    asyncio.run(main())
