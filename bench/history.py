"""Topics with history, measured: what history costs a publish, and the herd after a deploy.

    python bench/history.py                 # both parts, both engines, N=1,000, herd 2,000
    python bench/history.py --quick         # small and short: about 15 s on 2 cores
    python bench/history.py --part herd --herd 10000 --processes 8    # a bigger machine

**Part 1, ``publish``: the cost of history on publish.** One hub process (started by this
script, ``history.py hub``: ``codec=melody.codecs.JSON``, ``hub.authorize(lambda *a: True)``,
``hub.configure_topic("hist", history_size=1000)``), N subscribers on topic ``plain`` and N on
``hist``, and one publisher connection sending ``{"type":"publish","data":{"topic":...}}``
as fast as the subscribers take them (at most ``--window`` publications in flight) or at
``--rate``. Phases alternate ``plain`` / ``hist`` in the same hub process, ``--repeats``
times; each phase measures, over ``--duration`` s after ``--warmup``, the hub's CPU per
delivered frame and the frames delivered per second, and then checks that every subscriber
received every publication of its topic exactly once, in order, with the exact text
published (``hist``: offsets contiguous, one per publication). Both engines: ``memory`` (no
backplane) and ``redis`` (``melody.RedisBackplane`` on a redis-server this script starts on a
free port, no persistence), where the broker's own counters (``INFO commandstats``, ``INFO
cpu``, ``INFO stats``) give the Redis commands, CPU and read events per publication, and the
hub's ``backplane_stream_batches`` the publications per round trip.

**Part 2, ``herd``: the thundering herd after a deploy.** ``--herd`` clients subscribe to a
topic with history on hub A (Redis engine) and receive ``--herd-before`` publications. A is
killed (SIGKILL: a deploy); ``--missed`` publications are made meanwhile through node B (a
second hub process on the same Redis); A is started again on the same port, and every client
reconnects at once and resubscribes with its position (offset, epoch). Measured from the new
process's READY: the time until every client is live (its reply said ``recovered: true`` and
held exactly the missed publications, in order), per-client time to live, the new hub's CPU,
Redis's CPU and commands. Then ``--herd-after`` live publications must reach every client,
once each, after the recovered ones.

Clients are melody's compiled sans-I/O codec under raw asyncio protocols (as in
``melody bench``), spread over ``--processes`` pinned processes; the hub gets ``--server-cpu``
(and so does redis-server, unless ``--redis-cpus``). Progress on stderr, a table on stdout,
JSON in ``bench/results/history-<time>.json``. Exit status 0 when every check passed, 1 when
one failed, 2 when the run could not happen.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import multiprocessing
import os
import random
import shlex
import signal
import string
import subprocess
import sys
import time
import traceback
import urllib.request
from array import array
from multiprocessing.connection import Connection as Pipe
from typing import Any, cast

import orjson
from cluster import redis_server
from compare import fill_defaults, ready_port, server_env, stop_process

import melody
from melody._core.connection import Connection
from melody.bench import BenchError
from melody.bench.client import upgrade_refused
from melody.bench.redis_probe import RedisProbeError, command_calls, info
from melody.bench.report import align, format_value, write_json
from melody.bench.stats import median, summarize_ns
from melody.bench.system import (
    cpu_seconds,
    environment,
    package_version,
    parse_cpus,
    pin,
    raise_nofile,
)
from melody.handshake import build_client_request

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULTS = {"connections": 1000, "herd": 2000, "duration": 5.0, "warmup": 1.0, "repeats": 3}
QUICK = {"connections": 200, "herd": 500, "duration": 2.0, "warmup": 0.5, "repeats": 1}

PLAIN, HIST, HERD = "plain", "hist", "herd"
#: Slots per client process in the shared int64 array.
SLOTS = 4
O_OPEN, O_DELIVERED, O_LIVE, O_FAILED = range(SLOTS)
_MAX_HEAD = 16384
_monotonic_ns = time.monotonic_ns


def others_cpu_seconds(exclude: set[int]) -> dict[int, float]:
    """CPU seconds so far of every user-space process but ``exclude`` (pid -> seconds).

    The difference between two of these is what the rest of the machine did meanwhile (a
    process started in between counts from zero). Kernel threads are left out: here they are
    mostly ksoftirqd carrying this benchmark's own loopback traffic. A count of
    ``/proc/stat`` would not do: its system time leaves softirq out, while the ticks a
    process spends in softirq are in that process's own time too.
    """
    out: dict[int, float] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for name in names:
        if not name.isdigit() or int(name) in exclude:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if not f.read(1):
                    continue  # a kernel thread
        except OSError:
            continue
        seconds = cpu_seconds(int(name))
        if seconds is not None:
            out[int(name)] = seconds
    return out


def others_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


# -- the hub (``history.py hub``) -------------------------------------------------------------

def hub_main(argv: list[str]) -> None:
    """The benchmark hub with topics: run as ``python bench/history.py hub --port 0``."""
    p = argparse.ArgumentParser(
        prog="history.py hub",
        description="The hub of bench/history.py: JSON codec, every client may subscribe and"
                    " publish, topics 'hist' and 'herd*' keep history; GET /stats. Prints"
                    " 'READY <port>' once listening.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--redis", default=None, metavar="URL",
                   help="the Redis engine: melody.RedisBackplane on this Redis")
    p.add_argument("--history-size", type=int, default=1000)
    p.add_argument("--fault", choices=["lose", "duplicate"], default=None,
                   help=argparse.SUPPRESS)  # the harness's own test: must make a check fail
    args = p.parse_args(argv)
    raise_nofile()
    melody.install_uvloop()
    asyncio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> None:
    from melody.codecs import JSON

    backplane = melody.RedisBackplane(args.redis) if args.redis else None
    hub = melody.Melody(melody.Config(compression=False), codec=JSON, backplane=backplane)
    hub.authorize(lambda *a: True)
    hub.configure_topic(HIST, history_size=args.history_size)
    hub.configure_topic(HERD + "*", history_size=args.history_size)

    if args.fault:
        # Publication 3 of every topic is left out (lose) or published twice (duplicate): the
        # clients' checks must see it. The built-in publish, otherwise, as melody.routing has it.
        fault = args.fault

        @hub.route("publish")
        def publish(session: melody.Session, data: Any) -> int:
            topic, payload = data["topic"], data.get("data")
            times = 1
            if isinstance(payload, str) and payload[:10] == "0000000003":
                times = 0 if fault == "lose" else 2
            for _ in range(times):
                if topic == HIST or topic.startswith(HERD):
                    hub.publish_json(topic, payload)
                else:
                    hub.publish_others(topic, orjson.dumps(
                        {"type": "publish", "topic": topic, "data": payload}).decode(), session)
            return 0

    @hub.handle_http
    def stats(request: melody.Request) -> tuple[int, list[tuple[str, str]], bytes] | None:
        if request.path != "/stats":
            return None
        body = {"server": "melody", "pid": os.getpid(), "stats": hub.stats()}
        return 200, [("Content-Type", "application/json")], json.dumps(body).encode()

    server = await hub.serve(args.host, args.port)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


# -- one client connection -------------------------------------------------------------------

def payload(seq: int, pad: str) -> str:
    """The ``data`` of publication ``seq``: its number then the run's fixed padding."""
    return f"{seq:010d} {pad}"


class Client(asyncio.Protocol):
    """One subscriber (or the publisher): melody's client codec over a raw asyncio protocol.

    Publications are checked in order against ``expect`` (the next sequence number due): a
    frame equal to the exact text expected is the fast path (one string comparison, the text
    built once per process); anything else is parsed and counted as a gap, a duplicate or a
    wrong frame. With history, publication ``seq`` must carry offset ``base + seq``.
    """

    __slots__ = ("_head", "base", "conn", "epoch", "expect", "key", "live_ns", "lost",
                 "opened", "recovered", "recovered_count", "reply", "texts", "topic",
                 "transport", "worker")

    def __init__(self, worker: Worker, topic: str) -> None:
        self.worker = worker
        self.topic = topic
        self.texts: dict[int, str] = worker.texts(topic, 0)
        self.transport: asyncio.Transport | None = None
        self.conn: Connection | None = None
        self.key = base64.b64encode(os.urandom(16)).decode("ascii")
        self._head = b""
        loop = worker.loop
        self.opened: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.reply: asyncio.Future[Any] | None = None
        self.expect = 1
        self.base = 0
        self.epoch = ""
        self.recovered: bool | None = None
        self.recovered_count = 0
        self.live_ns = 0

    def reset(self) -> None:
        """Forget the connection (keep the position) before connecting again."""
        loop = self.worker.loop
        self.transport = None
        self.conn = None
        self._head = b""
        self.opened = loop.create_future()
        self.lost = loop.create_future()
        self.reply = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)
        w = self.worker
        self.transport.write(build_client_request(w.host_header, "/", self.key))

    def connection_lost(self, exc: Exception | None) -> None:
        w = self.worker
        if self.conn is not None:
            w.open -= 1
            w.shared[w.base + O_OPEN] = w.open
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"lost during the handshake: {exc}"))
        if self.reply is not None and not self.reply.done():
            self.reply.set_exception(ConnectionError("connection lost before the reply"))
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is None:
            self._handshake(data)
            return
        texts = self.texts
        expect = self.expect
        got = 0
        for event in conn.receive_data(data):
            if event[0] == "text":
                msg = event[1]
                text = texts.get(expect)
                if text is None:
                    text = self.worker.text(self.topic, self.base, expect)
                if msg == text:
                    expect += 1
                    got += 1
                    continue
                self.expect = expect
                got += self._other(msg)
                expect = self.expect
                texts = self.texts
            elif event[0] == "fail":
                self.worker.errors.append(f"protocol error {event[1]}: {event[2]}")
                self.transport.close()  # type: ignore[union-attr]
        self.expect = expect
        w = self.worker
        if got:
            w.delivered += got
            w.shared[w.base + O_DELIVERED] = w.delivered
        out = conn.data_to_send()
        if out:
            self.transport.write(out)  # type: ignore[union-attr]

    def _other(self, msg: str) -> int:
        """A frame off the fast path: a reply, or a publication out of place. Returns 1 when
        it was the next publication due."""
        w = self.worker
        try:
            obj = orjson.loads(msg)
        except orjson.JSONDecodeError:
            w.bad += 1
            w.note(f"not JSON: {msg[:80]!r}")
            return 0
        if isinstance(obj, dict) and "type" not in obj and "id" in obj:
            if self.reply is not None and not self.reply.done():
                # Applied now, before the frames after it in this same read.
                result = self._on_reply(obj)
                if isinstance(result, BaseException):
                    self.reply.set_exception(result)
                else:
                    self.reply.set_result(result)
            else:
                w.bad += 1
                w.note(f"unexpected reply {msg[:80]!r}")
            return 0
        if (not isinstance(obj, dict) or obj.get("type") != "publish"
                or obj.get("topic") != self.topic or not isinstance(obj.get("data"), str)):
            w.bad += 1
            w.note(f"unexpected frame {msg[:80]!r}")
            return 0
        return self.publication(obj.get("offset"), obj["data"], msg)

    def publication(self, offset: Any, data: str, msg: str | None) -> int:
        """Check one publication (live, or from a subscribe reply when ``msg`` is None)."""
        w = self.worker
        try:
            seq = int(data[:10])
        except (ValueError, TypeError):
            w.bad += 1
            w.note(f"no sequence number in {data[:40]!r}")
            return 0
        expect = self.expect
        if seq < expect:
            w.duplicates += 1
            return 0
        if seq > expect:
            w.gaps += seq - expect
        self.expect = seq + 1
        if self.topic != PLAIN and offset != self.base + seq:
            w.bad += 1
            w.note(f"{self.topic}: publication {seq} has offset {offset}, not"
                   f" {self.base + seq}")
        elif msg is not None and msg != w.text(self.topic, self.base, seq):
            w.bad += 1
            w.note(f"publication {seq} is not the text published: {msg[:80]!r}")
        elif msg is None and data != payload(seq, w.pad):
            w.bad += 1
            w.note(f"recovered publication {seq} is not the data published")
        return 1

    def _handshake(self, data: bytes) -> None:
        head = self._head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            self._head = head
            if len(head) > _MAX_HEAD:
                self._fail("response head over 16 KiB")
            return
        self._head = b""
        why = upgrade_refused(head[: end + 4], self.key)
        if why is not None:
            self._fail(why)
            return
        w = self.worker
        self.conn = Connection(is_server=False, max_message_size=1 << 24)
        w.open += 1
        w.shared[w.base + O_OPEN] = w.open
        self.opened.set_result(None)
        if head[end + 4:]:
            self.data_received(head[end + 4:])

    def _fail(self, reason: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(reason))
        if self.transport is not None:
            self.transport.abort()

    def send(self, texts: list[str]) -> None:
        """Frame ``texts`` (masked, by the codec) and write them at once."""
        conn = self.conn
        assert conn is not None and self.transport is not None
        for text in texts:
            conn.send_text(text)
        self.transport.write(conn.data_to_send())

    async def subscribe(self, request_id: int, position: bool) -> dict[str, Any]:
        """Send ``subscribe`` (with this client's position when ``position``) and await the
        reply (applied as it arrives, see :meth:`_on_reply`); returns the reply's ``data``."""
        data: Any = self.topic
        if position:
            data = {"topic": self.topic, "offset": self.base + self.expect - 1,
                    "epoch": self.epoch}
        self.reply = self.worker.loop.create_future()
        self.send([orjson.dumps({"type": "subscribe", "id": request_id,
                                 "data": data}).decode()])
        result: dict[str, Any] = await self.reply
        self.reply = None
        return result

    def _on_reply(self, reply: dict[str, Any]) -> Any:
        """A subscribe reply: the position (fresh) or the publications recovered."""
        if not reply.get("ok"):
            return ConnectionError(f"subscribe refused: {reply.get('error')}")
        result: Any = reply.get("data")
        if self.topic == PLAIN:
            return {"subscribed": result}
        if self.recovered is None and not self.epoch:
            # A fresh subscribe, before anything of this run was published to the topic:
            # publication ``seq`` (from expect on) will carry offset ``base + seq``.
            self.base = result["offset"] - (self.expect - 1)
            self.texts = self.worker.texts(self.topic, self.base)
            self.epoch = result["epoch"]
            return result
        if result["epoch"] != self.epoch:
            self.worker.note(f"epoch changed: {self.epoch} -> {result['epoch']}")
        self.recovered = bool(result["recovered"])
        got = 0
        for p in result["publications"]:
            got += self.publication(p.get("offset"), p.get("data"), None)
        self.recovered_count = got
        w = self.worker
        if got:
            w.delivered += got
            w.shared[w.base + O_DELIVERED] = w.delivered
        return result


# -- a client process ------------------------------------------------------------------------

class Worker:
    """The connections of one client process (or of the coordinator: the publisher)."""

    def __init__(self, index: int, shared: Any, options: dict[str, Any]) -> None:
        self.index = index
        self.loop = asyncio.get_running_loop()
        self.shared = memoryview(shared).cast("B").cast("q")
        self.base = index * SLOTS
        self.pad = options["pad"]
        self.host_header = ""
        self.clients: list[Client] = []
        self.open = 0
        self.delivered = 0
        self.live = 0
        self.failed = 0
        self.gaps = self.duplicates = self.bad = 0
        self.errors: list[str] = []
        self._texts: dict[tuple[str, int], dict[int, str]] = {}

    def note(self, error: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(error)

    def texts(self, topic: str, base: int) -> dict[int, str]:
        """The cache of expected frame texts of ``topic`` (offsets from ``base``)."""
        key = (topic, base)
        found = self._texts.get(key)
        if found is None:
            found = self._texts[key] = {}
        return found

    def text(self, topic: str, base: int, seq: int) -> str:
        """The exact frame a subscriber of ``topic`` gets for publication ``seq``: the hub's
        JSON, built here independently (orjson keeps key order: the documented wire order)."""
        cache = self.texts(topic, base)
        text = cache.get(seq)
        if text is None:
            if len(cache) >= 8192:
                cache.clear()  # all clients move forward together: old entries are done
            obj: dict[str, Any] = {"type": "publish", "topic": topic}
            if topic != PLAIN:
                obj["offset"] = base + seq
            obj["data"] = payload(seq, self.pad)
            text = cache[seq] = orjson.dumps(obj).decode()
        return text

    async def connect(self, client: Client, host: str, port: int) -> None:
        await self.loop.create_connection(lambda: client, host, port)
        await client.opened

    async def open_clients(self, url: tuple[str, int], topics: list[str],
                           concurrency: int) -> dict[str, Any]:
        """Open one client per entry of ``topics`` and subscribe each (fresh) to it."""
        host, port = url
        self.host_header = f"{host}:{port}"
        sem = asyncio.Semaphore(concurrency)

        async def one(topic: str, i: int) -> Client:
            client = Client(self, topic)
            async with sem:
                await self.connect(client, host, port)
                await client.subscribe(i, position=False)
            return client

        clients = await asyncio.gather(*(one(t, i) for i, t in enumerate(topics)))
        self.clients.extend(clients)
        return {"opened": len(clients)}

    def check(self, last: dict[str, int]) -> dict[str, Any]:
        """Whether every client got every publication of its topic up to ``last[topic]``."""
        missing = behind = 0
        for c in self.clients:
            due = last.get(c.topic, 0) + 1
            if c.expect < due:
                missing += due - c.expect
                behind += 1
        return {"lost": self.gaps + missing, "duplicates": self.duplicates, "bad": self.bad,
                "clients_behind": behind, "errors": self.errors[:5]}

    async def herd(self, url: tuple[str, int], missed: int, timeout: float) -> dict[str, Any]:
        """Reconnect every client (all at once) and resubscribe it from its position."""
        host, port = url
        self.host_header = f"{host}:{port}"
        start = _monotonic_ns()
        deadline = time.monotonic() + timeout
        retries = 0
        not_recovered = 0
        wrong_count = 0

        async def one(client: Client, i: int) -> None:
            nonlocal retries, not_recovered, wrong_count
            delay = 0.05
            while True:
                client.reset()
                try:
                    await self.connect(client, host, port)
                    await client.subscribe(i, position=True)
                    break
                except (OSError, ConnectionError):
                    if client.transport is not None:
                        client.transport.abort()
                    retries += 1
                    if time.monotonic() + delay > deadline:
                        self.failed += 1
                        self.shared[self.base + O_FAILED] = self.failed
                        return
                    await asyncio.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 1.0)
            client.live_ns = _monotonic_ns() - start
            if not client.recovered:
                not_recovered += 1
            if client.recovered_count != missed:
                wrong_count += 1
                self.note(f"recovered {client.recovered_count} publications, not {missed}")
            self.live += 1
            self.shared[self.base + O_LIVE] = self.live

        await asyncio.gather(*(one(c, i) for i, c in enumerate(self.clients)))
        return {"live": self.live, "failed": self.failed, "retries": retries,
                "not_recovered": not_recovered, "wrong_count": wrong_count,
                "live_ms": [c.live_ns / 1e6 for c in self.clients if c.live_ns]}

    async def close_all(self) -> None:
        for c in self.clients:
            c.conn = None  # no longer counted: its connection_lost comes after the reset
            if c.transport is not None:
                c.transport.abort()
        self.clients.clear()
        self.open = self.delivered = self.live = self.failed = 0
        self.gaps = self.duplicates = self.bad = 0
        self.errors.clear()
        for o in range(SLOTS):
            self.shared[self.base + o] = 0
        self._texts.clear()


def worker_main(index: int, pipe: Pipe, shared: Any, options: dict[str, Any]) -> None:
    """A client process: raise RLIMIT_NOFILE, pin, then obey the coordinator's commands."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator stops it
    raise_nofile()
    pin(0, options["cpus"])
    melody.install_uvloop()
    asyncio.run(_worker_loop(index, pipe, shared, options))


async def _worker_loop(index: int, pipe: Pipe, shared: Any, options: dict[str, Any]) -> None:
    w = Worker(index, shared, options)
    # The pipe is read in a thread, not with loop.add_reader: that would make its socket
    # non-blocking, and a large reply would then fail half-written.
    while True:
        try:
            cmd, kwargs = await w.loop.run_in_executor(None, pipe.recv)
        except EOFError:
            return
        try:
            if cmd == "open":
                result: Any = await w.open_clients(**kwargs)
            elif cmd == "check":
                result = w.check(**kwargs)
            elif cmd == "herd":
                result = await w.herd(**kwargs)
            elif cmd in ("close", "exit"):
                result = await w.close_all()
            else:
                raise ValueError(f"unknown command {cmd!r}")
            pipe.send(("ok", result))
        except Exception:
            pipe.send(("error", traceback.format_exc()))
        if cmd == "exit":
            return


class Clients:
    """The client processes, commanded from the coordinator's event loop."""

    def __init__(self, count: int, options: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("fork")
        self.shared = ctx.RawArray("q", count * SLOTS)
        self.pipes: list[Pipe] = []
        self.procs: list[Any] = []
        for i in range(count):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(i, theirs, self.shared, options),
                               daemon=True)
            proc.start()
            theirs.close()
            self.pipes.append(mine)
            self.procs.append(proc)
        self.view = memoryview(self.shared).cast("B").cast("q")

    def total(self, slot: int) -> int:
        return sum(self.view[i * SLOTS + slot] for i in range(len(self.procs)))

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) or 0.0 for p in self.procs)

    async def ask(self, cmd: str, per_worker: list[dict[str, Any]] | None = None,
                  **kwargs: Any) -> list[Any]:
        """Send ``cmd`` to every process (``per_worker[i]`` merged into its arguments) and
        await every reply; raises BenchError with a process's traceback."""
        loop = asyncio.get_running_loop()
        for i, pipe in enumerate(self.pipes):
            pipe.send((cmd, dict(kwargs, **(per_worker[i] if per_worker else {}))))

        def receive(pipe: Pipe) -> Any:
            try:
                return pipe.recv()
            except EOFError:
                return ("error", "a client process died")

        # Threads, not loop.add_reader (see _worker_loop).
        futures = [loop.run_in_executor(None, receive, pipe) for pipe in self.pipes]
        replies = await asyncio.gather(*futures)
        for status, value in replies:
            if status != "ok":
                raise BenchError(f"client process failed:\n{value}")
        return [value for _, value in replies]

    def stop(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("exit", {}))
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()


# -- the coordinator -------------------------------------------------------------------------

class Run:
    """One run: the options, the hubs, the client processes, the publisher."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self.server_cpus: list[int] | None = None
        self.client_cpus: list[int] | None = None
        self.redis_cpus: list[int] | None = None
        if not args.no_pin and len(cpus) >= 2:
            self.server_cpus = [args.server_cpu if args.server_cpu is not None else cpus[0]]
            self.client_cpus = (parse_cpus(args.client_cpus) if args.client_cpus
                                else [c for c in cpus if c not in self.server_cpus])
            self.redis_cpus = (parse_cpus(args.redis_cpus) if args.redis_cpus
                               else self.server_cpus)
        rng = random.Random(args.seed)
        size = max(0, args.size - 11)
        self.pad = "".join(rng.choices(string.ascii_letters, k=size))
        self.hubs: list[subprocess.Popen[str]] = []
        self.redis_url: str | None = None
        self.redis_pid: int | None = None
        self.clients: Clients | None = None
        self.pub_worker: Worker | None = None
        self.seq: dict[str, int] = {}

    def ours(self) -> set[int]:
        """The pids of this run's processes: the coordinator, the clients, hubs, Redis."""
        pids = {os.getpid(), *(p.pid for p in self.hubs)}
        if self.clients is not None:
            pids.update(p.pid for p in self.clients.procs)
        if self.redis_pid is not None:
            pids.add(self.redis_pid)
        return pids

    def say(self, msg: str) -> None:
        if not self.args.quiet:
            print(msg, file=sys.stderr, flush=True)

    # -- processes ---------------------------------------------------------------------------

    def start_hub(self, port: int = 0, redis: bool = False) -> tuple[subprocess.Popen[str], int]:
        """Start ``history.py hub`` (pinned to the server CPU); its process and port."""
        cmd = [sys.executable, os.path.abspath(__file__), "hub", "--port", str(port),
               "--history-size", str(self.args.history_size)]
        if redis:
            assert self.redis_url is not None
            cmd += ["--redis", self.redis_url]
        if self.args.hub_fault:
            cmd += ["--fault", self.args.hub_fault]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
                                if self.args.quiet else None, env=server_env(), text=True)
        self.hubs.append(proc)
        pin(proc.pid, self.server_cpus)
        found = ready_port(proc)
        if found is None:
            raise BenchError(f"the hub did not start (exit code {proc.poll()})")
        return proc, found

    def stop_hubs(self) -> None:
        for proc in self.hubs:
            if proc.poll() is None:
                stop_process(proc)
        self.hubs.clear()

    async def hub_stats(self, port: int) -> dict[str, Any]:
        def get() -> dict[str, Any]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as r:
                stats: dict[str, Any] = json.loads(r.read())["stats"]
                return stats
        return await asyncio.get_running_loop().run_in_executor(None, get)

    def redis_snapshot(self) -> dict[str, float]:
        """Redis's CPU seconds, its command counts and its read events, now."""
        if self.redis_url is None:
            return {}
        cpu = info(self.redis_url, "cpu")
        commands = info(self.redis_url, "commandstats")
        stats = info(self.redis_url, "stats")
        snap = {"cpu_s": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
                "reads": float(stats.get("total_reads_processed", 0)),
                "commands": float(stats.get("total_commands_processed", 0))}
        for name in ("eval", "publish", "subscribe", "xadd", "xrange", "hincrby"):
            snap[name] = float(command_calls(commands, name))
        return snap

    # -- publishing ----------------------------------------------------------------------------

    async def publisher(self, port: int, topic: str | None = None) -> Client:
        """A publisher connection (subscribed to ``topic`` when given, to see its own)."""
        assert self.pub_worker is not None
        w = self.pub_worker
        w.host_header = f"127.0.0.1:{port}"
        client = Client(w, topic or PLAIN)
        await w.connect(client, "127.0.0.1", port)
        if topic is not None:
            await client.subscribe(0, position=False)
        return client

    def publish(self, pub: Client, topic: str, count: int) -> None:
        """Send the next ``count`` publications of ``topic`` in one write."""
        seq = self.seq.get(topic, 0)
        texts = [orjson.dumps({"type": "publish", "data": {
            "topic": topic, "data": payload(seq + k + 1, self.pad)}}).decode()
            for k in range(count)]
        self.seq[topic] = seq + count
        pub.send(texts)

    async def wait_delivered(self, target: int, timeout: float, stall: float = 3.0) -> bool:
        """Wait until the clients have received ``target`` frames in all; False after
        ``timeout`` s, or ``stall`` s without a frame more (some were lost)."""
        assert self.clients is not None
        deadline = time.monotonic() + timeout
        last, last_change = -1, time.monotonic()
        while True:
            now_delivered = self.clients.total(O_DELIVERED)
            if now_delivered >= target:
                return True
            now = time.monotonic()
            if now_delivered != last:
                last, last_change = now_delivered, now
            if now > deadline or now - last_change > stall:
                return False
            await asyncio.sleep(0.01)

    # -- part 1 --------------------------------------------------------------------------------

    async def publish_part(self, engine: str) -> dict[str, Any]:
        args = self.args
        assert self.clients is not None
        n = args.connections
        self.say(f"\n=== publish, {engine} engine: {n:,} subscribers on '{PLAIN}' and {n:,}"
                 f" on '{HIST}' ===")
        hub, port = self.start_hub(redis=engine == "redis")
        try:
            if engine == "redis":
                await self.wait_backplane(port)
            workers = len(self.clients.procs)
            topics = [PLAIN if i % 2 == 0 else HIST for i in range(2 * n)]
            shares = [{"topics": topics[i::workers]} for i in range(workers)]
            t = time.monotonic()
            await self.clients.ask("open", shares, url=("127.0.0.1", port),
                                   concurrency=args.connect_concurrency)
            self.say(f"  {2 * n:,} clients connected and subscribed in"
                     f" {time.monotonic() - t:.1f} s")
            pub = await self.publisher(port)
            self.seq = {}
            phases: list[dict[str, Any]] = []
            for r in range(args.repeats):
                order = [PLAIN, HIST] if r % 2 == 0 else [HIST, PLAIN]
                for topic in order:
                    phase = await self.phase(pub, hub.pid, port, topic, n, engine)
                    phase["repeat"] = r + 1
                    phases.append(phase)
            if pub.transport is not None:
                pub.transport.close()
            if hub.poll() is not None:
                raise BenchError(f"the hub exited during the run (code {hub.returncode})")
        finally:
            await self.clients.ask("close")
            self.stop_hubs()
        return summarize_publish(engine, phases)

    async def wait_backplane(self, port: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, KeyError):
                stats = await self.hub_stats(port)
                if stats.get("backplane_connected") == 1:
                    return
            await asyncio.sleep(0.05)
        raise BenchError(f"the hub on port {port} did not connect to Redis in {timeout:g} s")

    async def phase(self, pub: Client, hub_pid: int, port: int, topic: str, n: int,
                    engine: str) -> dict[str, Any]:
        """Publish to ``topic`` for warmup + duration; measure the window; check."""
        args = self.args
        clients = self.clients
        assert clients is not None
        delivered0 = clients.total(O_DELIVERED)
        first = self.seq.get(topic, 0)
        published = 0
        state: dict[str, Any] = {}
        loop_start = time.monotonic()
        measure_at = loop_start + args.warmup
        stop_at = measure_at + args.duration

        def snapshot() -> dict[str, Any]:
            return {"t": time.monotonic(), "server": cpu_seconds(hub_pid),
                    "clients": clients.cpu(), "me": cpu_seconds(os.getpid()),
                    "others": others_cpu_seconds(self.ours()),
                    "delivered": clients.total(O_DELIVERED), "published": published,
                    "redis": self.redis_snapshot() if engine == "redis" else {}}

        while True:
            now = time.monotonic()
            if "start" not in state and now >= measure_at:
                state["start"] = snapshot()
                state["hub_start"] = await self.hub_stats(port)
            if now >= stop_at:
                state["end"] = snapshot()
                state["hub_end"] = await self.hub_stats(port)
                break
            if args.rate:
                due = int((now - loop_start) * args.rate) - published
            else:
                in_flight = published * n - (clients.total(O_DELIVERED) - delivered0)
                due = args.window - -(-in_flight // n)
            if due > 0:
                self.publish(pub, topic, due)
                published += due
            await asyncio.sleep(0.001)
        drained = await self.wait_delivered(delivered0 + published * n, args.timeout)
        checks = await clients.ask("check", last=dict(self.seq))
        check = {
            "lost": sum(c["lost"] for c in checks),
            "duplicates": sum(c["duplicates"] for c in checks),
            "bad": sum(c["bad"] for c in checks),
            "clients_behind": sum(c["clients_behind"] for c in checks),
            "drained": drained,
            "errors": [e for c in checks for e in c["errors"]][:5],
        }
        check["ok"] = (drained and check["lost"] == 0 and check["duplicates"] == 0
                       and check["bad"] == 0 and check["clients_behind"] == 0)
        s, e = state["start"], state["end"]
        window = e["t"] - s["t"]
        frames = e["delivered"] - s["delivered"]
        pubs = e["published"] - s["published"]
        server_cpu = (e["server"] - s["server"]) if e["server"] is not None else None
        client_cpu = e["clients"] - s["clients"] + (e["me"] or 0) - (s["me"] or 0)
        figures: dict[str, Any] = {
            "frames_per_s": frames / window,
            "publishes_per_s": pubs / window,
            "server_cpu_us_per_frame": server_cpu / frames * 1e6 if server_cpu and frames
            else None,
            "server_cpu_pct": server_cpu / window * 100 if server_cpu is not None else None,
            "client_cpu_pct": client_cpu / window * 100,
            "client_cpu_us_per_frame": client_cpu / frames * 1e6 if frames else None,
        }
        redis_cpu = 0.0
        if s["redis"]:
            rs, re_ = s["redis"], e["redis"]
            redis_cpu = re_["cpu_s"] - rs["cpu_s"]
            hs, he = state["hub_start"], state["hub_end"]
            batches = (he.get("backplane_stream_batches", 0)
                       - hs.get("backplane_stream_batches", 0))
            pbatches = (he.get("backplane_publish_batches", 0)
                        - hs.get("backplane_publish_batches", 0))
            figures.update({
                "redis_cpu_us_per_publish": redis_cpu / pubs * 1e6 if pubs else None,
                "redis_cpu_pct": redis_cpu / window * 100,
                "redis_eval_per_publish": (re_["eval"] - rs["eval"]) / pubs if pubs else None,
                "redis_publish_per_publish": ((re_["publish"] - rs["publish"]) / pubs
                                              if pubs else None),
                "redis_commands_per_publish": ((re_["commands"] - rs["commands"]) / pubs
                                               if pubs else None),
                "redis_reads_per_publish": (re_["reads"] - rs["reads"]) / pubs if pubs else None,
                "publishes_per_round_trip": (pubs / (batches if topic == HIST else pbatches)
                                             if (batches if topic == HIST else pbatches)
                                             else None),
            })
        other = others_delta(s["others"], e["others"])
        figures["other_cpu_pct"] = other / window * 100 if other is not None else None
        flags = {
            "client_bound": (client_cpu / window) >= 0.9 * max(
                1, len(self.client_cpus or [])),
            "contended": other is not None and other / window >= args.contention_threshold,
        }
        self.say(f"  {topic:<5} {figures['frames_per_s']:>12,.0f} frames/s  server "
                 f"{format_value(figures['server_cpu_us_per_frame'], 3)} us/frame  clients "
                 f"{figures['client_cpu_pct']:.0f}%  published {self.seq[topic] - first:,}  "
                 + ("ok" if check["ok"] else f"FAILED {check}"))
        return {"topic": topic, "window_s": window, "frames": frames, "publishes": pubs,
                "figures": figures, "check": check, **flags}

    # -- part 2 --------------------------------------------------------------------------------

    async def herd_part(self) -> dict[str, Any]:
        args = self.args
        clients = self.clients
        assert clients is not None and self.redis_url is not None
        n = args.herd
        topic = f"{HERD}:{int(time.time())}"
        self.say(f"\n=== herd: {n:,} clients on '{topic}' (Redis engine), {args.missed} missed"
                 " while their hub is down ===")
        result: dict[str, Any] = {"topic": topic, "clients": n, "missed": args.missed}
        try:
            hub_a, port = self.start_hub(redis=True)
            _, port_b = self.start_hub(redis=True)
            await self.wait_backplane(port)
            await self.wait_backplane(port_b)
            workers = len(clients.procs)
            shares = [{"topics": [topic] * len(range(i, n, workers))} for i in range(workers)]
            t = time.monotonic()
            await clients.ask("open", shares, url=("127.0.0.1", port),
                              concurrency=args.connect_concurrency)
            self.say(f"  {n:,} clients subscribed to A in {time.monotonic() - t:.1f} s")
            pub = await self.publisher(port_b, topic)   # on node B, sees its own
            self.seq = {}
            delivered = clients.total(O_DELIVERED)
            self.publish(pub, topic, args.herd_before)
            before_ok = await self.wait_delivered(delivered + n * args.herd_before,
                                                  args.timeout)

            hub_a.send_signal(signal.SIGKILL)
            hub_a.wait()
            deadline = time.monotonic() + args.timeout
            while clients.total(O_OPEN) > 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            self.say(f"  hub A killed; every client saw its connection drop"
                     f" ({clients.total(O_OPEN)} still open)")
            self.publish(pub, topic, args.missed)
            while pub.expect <= self.seq[topic] and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            if pub.expect <= self.seq[topic]:
                raise BenchError("node B did not get its own publications back from Redis")
            self.say(f"  {args.missed} published through node B while A was down")

            spawned = time.monotonic()
            redis0 = self.redis_snapshot()
            hub_a2, _ = self.start_hub(port=port, redis=True)
            ready = time.monotonic()
            server0 = cpu_seconds(hub_a2.pid) or 0.0
            redis_ready = self.redis_snapshot()
            clients0 = clients.cpu()
            me0 = cpu_seconds(os.getpid()) or 0.0
            others0 = others_cpu_seconds(self.ours())
            herd_task = asyncio.ensure_future(clients.ask(
                "herd", url=("127.0.0.1", port), missed=args.missed, timeout=args.timeout))
            all_live: float | None = None
            while not herd_task.done():
                if all_live is None and clients.total(O_LIVE) >= n:
                    all_live = time.monotonic()
                    break
                await asyncio.sleep(0.002)
            replies = await herd_task
            end = time.monotonic()
            if all_live is None and clients.total(O_LIVE) >= n:
                all_live = end
            server1 = cpu_seconds(hub_a2.pid) or 0.0
            redis1 = self.redis_snapshot()
            client_cpu = clients.cpu() - clients0 + (cpu_seconds(os.getpid()) or 0.0) - me0
            others1 = others_cpu_seconds(self.ours())
            hub_after = await self.hub_stats(port)
            window = (all_live or end) - ready

            delivered = clients.total(O_DELIVERED)
            self.publish(pub, topic, args.herd_after)
            live_ok = await self.wait_delivered(delivered + n * args.herd_after, args.timeout)
            checks = await clients.ask("check", last=dict(self.seq))
            live_ms = [v for r in replies for v in r["live_ms"]]
            summary = summarize_ns([int(v * 1e6) for v in live_ms]) if live_ms else {}
            server_cpu = server1 - server0
            redis_cpu = redis1["cpu_s"] - redis_ready["cpu_s"]
            other = others_delta(others0, others1)
            check = {
                "live": sum(r["live"] for r in replies),
                "failed": sum(r["failed"] for r in replies),
                "not_recovered": sum(r["not_recovered"] for r in replies),
                "wrong_count": sum(r["wrong_count"] for r in replies),
                "lost": sum(c["lost"] for c in checks),
                "duplicates": sum(c["duplicates"] for c in checks),
                "bad": sum(c["bad"] for c in checks),
                "clients_behind": sum(c["clients_behind"] for c in checks),
                "before_ok": before_ok,
                "live_after_ok": live_ok,
                "errors": [e for c in checks for e in c["errors"]][:5],
            }
            check["ok"] = (check["live"] == n and not check["failed"]
                           and not check["not_recovered"] and not check["wrong_count"]
                           and not check["lost"] and not check["duplicates"]
                           and not check["bad"] and not check["clients_behind"] and live_ok
                           and before_ok)
            result.update({
                "figures": {
                    "start_s": ready - spawned,
                    "startup_cpu_s": server0,
                    "all_live_s": window if all_live is not None else None,
                    "live_ms_p50": summary.get("p50"),
                    "live_ms_p99": summary.get("p99"),
                    "live_ms_max": summary.get("max"),
                    "reconnect_retries": sum(r["retries"] for r in replies),
                    "server_cpu_s": server_cpu,
                    "server_cpu_us_per_client": server_cpu / n * 1e6,
                    "server_cpu_pct": server_cpu / window * 100 if window else None,
                    "redis_cpu_s": redis_cpu,
                    "redis_cpu_us_per_client": redis_cpu / n * 1e6,
                    "redis_cpu_pct": redis_cpu / window * 100 if window else None,
                    "redis_startup_commands": redis_ready["commands"] - redis0["commands"],
                    "redis_commands": redis1["commands"] - redis_ready["commands"],
                    "redis_commands_per_client": (redis1["commands"]
                                                  - redis_ready["commands"]) / n,
                    "redis_eval_per_client": (redis1["eval"] - redis_ready["eval"]) / n,
                    "redis_subscribe": redis1["subscribe"] - redis_ready["subscribe"],
                    "redis_reads_per_client": (redis1["reads"] - redis_ready["reads"]) / n,
                    "client_cpu_s": client_cpu,
                    "client_cpu_pct": client_cpu / window * 100 if window else None,
                    "other_cpu_pct": other / window * 100 if other is not None and window
                    else None,
                },
                "hub_stats": {k: v for k, v in hub_after.items() if k.startswith("backplane_")},
                "check": check,
                "contended": other is not None and window > 0
                and other / window >= args.contention_threshold,
            })
            self.say(f"  all {check['live']:,} live in {format_value(window, 3)} s after READY"
                     f" (p50 {format_value(summary.get('p50'), 1)} ms, p99"
                     f" {format_value(summary.get('p99'), 1)} ms); "
                     + ("ok" if check["ok"] else f"FAILED {check}"))
            if pub.transport is not None:
                pub.transport.close()
        finally:
            await clients.ask("close")
            self.stop_hubs()
        return result


def summarize_publish(engine: str, phases: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per topic and the hist/plain ratios of one engine's phases."""
    med: dict[str, dict[str, Any]] = {}
    for topic in (PLAIN, HIST):
        mine = [p for p in phases if p["topic"] == topic]
        keys = mine[0]["figures"].keys() if mine else []
        med[topic] = {k: median([p["figures"][k] for p in mine
                                 if p["figures"][k] is not None]) for k in keys}
    ratio = {}
    for k in ("server_cpu_us_per_frame", "frames_per_s"):
        a, b = med[PLAIN].get(k), med[HIST].get(k)
        ratio[k] = b / a if a and b else None
    return {"engine": engine, "phases": phases, "medians": med, "hist_vs_plain": ratio,
            "ok": all(p["check"]["ok"] for p in phases)}


# -- the report ------------------------------------------------------------------------------

PUBLISH_ROWS = (
    ("server_cpu_us_per_frame", "server CPU us/frame", 3),
    ("frames_per_s", "frames/s delivered", 0),
    ("publishes_per_s", "publishes/s", 0),
    ("server_cpu_pct", "server CPU % of a core", 0),
    ("client_cpu_pct", "client CPU % (all client processes)", 0),
    ("client_cpu_us_per_frame", "client CPU us/frame", 3),
    ("redis_cpu_pct", "Redis CPU % of a core", 0),
    ("redis_cpu_us_per_publish", "Redis CPU us/publish", 1),
    ("redis_eval_per_publish", "Redis EVAL per publish", 3),
    ("redis_publish_per_publish", "Redis PUBLISH per publish", 3),
    ("redis_commands_per_publish", "Redis commands per publish (scripts' too)", 3),
    ("publishes_per_round_trip", "publishes per round trip (node)", 1),
    ("redis_reads_per_publish", "Redis read events per publish", 3),
    ("other_cpu_pct", "other processes' CPU %", 0),
)

HERD_ROWS = (
    ("all_live_s", "time until all live, from READY (s)", 3),
    ("live_ms_p50", "per client: time to live p50 (ms)", 1),
    ("live_ms_p99", "per client: time to live p99 (ms)", 1),
    ("start_s", "new hub: spawn to READY (s)", 3),
    ("reconnect_retries", "reconnect attempts that failed", 0),
    ("server_cpu_s", "server CPU s (READY to all live)", 3),
    ("server_cpu_us_per_client", "server CPU us per client", 0),
    ("server_cpu_pct", "server CPU % of a core", 0),
    ("redis_cpu_s", "Redis CPU s", 3),
    ("redis_cpu_us_per_client", "Redis CPU us per client", 0),
    ("redis_commands_per_client", "Redis commands per client", 2),
    ("redis_eval_per_client", "Redis EVAL per client", 2),
    ("redis_subscribe", "Redis SUBSCRIBE commands", 0),
    ("client_cpu_pct", "client CPU % (all client processes)", 0),
    ("other_cpu_pct", "other processes' CPU %", 0),
)


def _check_text(checks: list[dict[str, Any]]) -> str:
    """``ok 0/0/0`` (or ``FAILED``): lost / duplicated / wrong frames, over ``checks``."""
    ok = all(c["ok"] for c in checks)
    return ("ok" if ok else "FAILED") + (
        f" {sum(c['lost'] for c in checks)}/{sum(c['duplicates'] for c in checks)}"
        f"/{sum(c['bad'] for c in checks)}")


def _flags(phases: list[dict[str, Any]]) -> str:
    flags = [name for name in ("client_bound", "contended") if any(p[name] for p in phases)]
    return ", ".join(f.replace("_", "-") for f in flags) or "-"


def table(document: dict[str, Any]) -> str:
    out: list[str] = []
    for part in document["publish"]:
        med = part["medians"]
        phases = part["phases"]
        rows = [["figure", PLAIN, HIST, "hist/plain"]]
        for key, label, digits in PUBLISH_ROWS:
            a, b = med[PLAIN].get(key), med[HIST].get(key)
            if a is None and b is None:
                continue
            ratio = f"{b / a:.2f}x" if key in ("server_cpu_us_per_frame", "frames_per_s",
                                               "client_cpu_us_per_frame") and a and b else ""
            rows.append([label, format_value(a, digits), format_value(b, digits), ratio])
        by_topic = {t: [p for p in phases if p["topic"] == t] for t in (PLAIN, HIST)}
        rows.append(["check: lost/duplicated/wrong",
                     *(_check_text([p["check"] for p in by_topic[t]]) for t in (PLAIN, HIST)),
                     ""])
        rows.append(["flags (any phase)", *(_flags(by_topic[t]) for t in (PLAIN, HIST)), ""])
        out.append(f"publish, {part['engine']} engine (medians of"
                   f" {len(phases) // 2} phases per topic)\n" + align(rows))
    herd = document.get("herd")
    if herd:
        f = herd["figures"]
        rows = [["figure", "value"]]
        rows += [[label, format_value(f.get(key), digits)] for key, label, digits in HERD_ROWS]
        c = herd["check"]
        rows.append(["check: live, recovered, exactly the missed",
                     ("ok" if c["ok"] else "FAILED")
                     + f" {c['live']:,}/{herd['clients'] - c['not_recovered']:,}"
                       f"/{herd['clients'] - c['wrong_count']:,} of {herd['clients']:,}"])
        rows.append(["check: lost/duplicated/wrong", f"{c['lost']}/{c['duplicates']}/{c['bad']}"])
        rows.append(["flags", "contended" if herd["contended"] else "-"])
        out.append(f"herd: {herd['clients']:,} clients recover {herd['missed']} missed"
                   f" publications after a SIGKILL of their hub (Redis engine)\n" + align(rows))
    return "\n\n".join(out)


# -- the command line ------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="python bench/history.py hub --help: the hub process it starts.")
    p.add_argument("--part", default="publish,herd",
                   help="publish, herd or both (default publish,herd)")
    p.add_argument("--engines", default="memory,redis",
                   help="publish: memory, redis or both (default memory,redis)")
    p.add_argument("-n", "--connections", type=int, default=None,
                   help="publish: subscribers per topic (default 1000; --quick 200)")
    p.add_argument("--repeats", type=int, default=None,
                   help="publish: plain/hist phase pairs, interleaved (default 3; --quick 1)")
    p.add_argument("--duration", type=float, default=None,
                   help="publish: seconds measured per phase (default 5; --quick 2)")
    p.add_argument("--warmup", type=float, default=None,
                   help="publish: seconds before measuring (default 1; --quick 0.5)")
    p.add_argument("--window", type=int, default=None,
                   help="publish: publications in flight at most, at saturation (default"
                        " 100,000 frames' worth, at least 32)")
    p.add_argument("--rate", type=float, default=0.0,
                   help="publish: publications/s instead of saturation (default 0: saturate)")
    p.add_argument("--size", type=int, default=64,
                   help="bytes of each publication's data (default 64)")
    p.add_argument("--history-size", type=int, default=1000,
                   help="history_size of the topics with history (default 1000)")
    p.add_argument("--herd", type=int, default=None,
                   help="herd: clients (default 2000; --quick 500)")
    p.add_argument("--missed", type=int, default=100,
                   help="herd: publications made while the hub is down (default 100)")
    p.add_argument("--herd-before", type=int, default=10,
                   help="herd: publications received before the deploy (default 10)")
    p.add_argument("--herd-after", type=int, default=10,
                   help="herd: live publications checked after recovery (default 10)")
    p.add_argument("--processes", type=int, default=None,
                   help="client processes (default: one per client CPU, at least 2)")
    p.add_argument("--connect-concurrency", type=int, default=64,
                   help="handshakes in flight per client process while setting up (default 64)")
    p.add_argument("--server-cpu", type=int, default=None,
                   help="CPU of the hub processes (default: the first available)")
    p.add_argument("--client-cpus", default=None,
                   help="CPUs of the client processes (default: the others)")
    p.add_argument("--redis-cpus", default=None,
                   help="CPUs of redis-server (default: the hub's)")
    p.add_argument("--no-pin", action="store_true", help="pin nothing to CPUs")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for deliveries or the herd (default 60)")
    p.add_argument("--contention-threshold", type=float, default=0.2,
                   help="other processes' CPU (in cores) that flags a phase contended")
    p.add_argument("--seed", type=int, default=1, help="padding seed (default 1)")
    p.add_argument("--quick", action="store_true",
                   help="N=200, herd 500, 2 s phases, 1 repeat (explicit options still win)")
    p.add_argument("--out", default=os.path.join(HERE, "results"),
                   help="directory for the JSON (default bench/results)")
    p.add_argument("--json", default=None, help="the JSON file (default in --out)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.add_argument("--hub-fault", choices=["lose", "duplicate"], default=None,
                   help=argparse.SUPPRESS)
    args = fill_defaults(p.parse_args(argv), DEFAULTS, QUICK)
    parts = set(args.part.split(","))
    engines = set(args.engines.split(","))
    if not parts or parts - {"publish", "herd"}:
        p.error("--part is publish, herd or publish,herd")
    if not engines or engines - {"memory", "redis"}:
        p.error("--engines is memory, redis or memory,redis")
    if args.window is None:
        args.window = max(32, 100_000 // args.connections)
    args.parts = [x for x in ("publish", "herd") if x in parts]
    args.engine_list = [x for x in ("memory", "redis") if x in engines]
    if args.size < 1 or args.connections < 1 or args.herd < 1 or args.missed < 1:
        p.error("--size, --connections, --herd and --missed must be positive")
    if args.missed + args.herd_before > args.history_size:
        p.error("--missed + --herd-before must fit in --history-size")
    return args


async def run(args: argparse.Namespace, r: Run) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    r.pub_worker = Worker(0, array("q", [0] * SLOTS), {"pad": r.pad})
    assert loop is r.pub_worker.loop
    document: dict[str, Any] = {"publish": [], "herd": None}
    with contextlib.ExitStack() as stack:
        if "herd" in args.parts or "redis" in args.engine_list:
            r.redis_url = stack.enter_context(redis_server(args.out))
            r.redis_pid = _redis_pid(r.redis_url)
            if r.redis_pid is not None:
                pin(r.redis_pid, r.redis_cpus)
            r.say(f"redis-server at {r.redis_url}")
        if "publish" in args.parts:
            for engine in args.engine_list:
                document["publish"].append(await r.publish_part(engine))
        if "herd" in args.parts:
            document["herd"] = await r.herd_part()
    return document


def _redis_pid(url: str) -> int | None:
    try:
        return int(info(url, "server")["process_id"])
    except (RedisProbeError, KeyError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["hub"]:
        hub_main(argv[1:])
        return 0
    args = parse_args(argv)
    soft, _ = raise_nofile()
    os.makedirs(args.out, exist_ok=True)
    started = time.time()
    r = Run(args)
    need = 2 * max(args.connections, args.herd) + 64
    processes = args.processes or max(2, len(r.client_cpus or [0]))
    if soft > 0 and need / processes > soft - 64:
        processes = -(-need // (soft - 64))  # each process holds its share of descriptors
    args.processes = processes
    r.say(f"{processes} client processes on CPUs {r.client_cpus or 'any'}; hubs on"
          f" {r.server_cpus or 'any'}; redis-server on {r.redis_cpus or 'any'}")
    r.clients = Clients(processes, {"pad": r.pad, "cpus": r.client_cpus})
    pin(0, r.client_cpus)
    melody.install_uvloop()
    try:
        document = asyncio.run(run(args, r))
    except BenchError as exc:
        print(f"bench/history.py: {exc}", file=sys.stderr)
        return 2
    finally:
        r.stop_hubs()
        r.clients.stop()
    ok = all(p["ok"] for p in document["publish"]) and (
        document["herd"] is None or document["herd"]["check"]["ok"])
    env = environment()
    # The hubs' Redis client parses replies in C with hiredis, else in Python: it matters
    # here (the herd's history reads are most of the hub's work without it).
    env["versions"].update({name: package_version(name) for name in ("redis", "hiredis")})
    command = "python bench/history.py " + " ".join(shlex.quote(a) for a in argv)
    document = {
        "tool": "bench/history.py",
        "command": command.strip(),
        "started_unix": round(started, 3),
        "elapsed_s": round(time.time() - started, 1),
        "options": {k: v for k, v in vars(args).items()},
        "pinning": {"server": r.server_cpus, "clients": r.client_cpus,
                    "redis": r.redis_cpus},
        "environment": env,
        **document,
        "ok": ok,
    }
    path = args.json or os.path.join(args.out,
                                     f"history-{time.strftime('%Y%m%d-%H%M%S')}.json")
    write_json(document, path)
    print(f"\n$ {document['command']}")
    print(f"{env.get('cpu_model')}, {env.get('cpu_count')} CPUs; Python {env.get('python')};"
          f" redis-py {env['versions']['redis']}, hiredis {env['versions']['hiredis']};"
          f" {processes} client processes\n")
    print(table(document))
    print(f"\nJSON: {path}")
    print(f"elapsed {document['elapsed_s']:.0f} s; "
          + ("all checks passed" if ok else "SOME CHECKS FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

