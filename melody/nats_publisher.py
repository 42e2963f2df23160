"""Publishing from anywhere through NATS: ``melody.Publisher``'s twin for ``NatsBackplane``.

::

    with melody.NatsPublisher("nats://127.0.0.1:4222", channel_prefix="chat") as pub:
        pub.publish_json("room:1", {"text": "hi"})   # StreamPosition(offset=8, epoch=...)
        pub.broadcast("maintenance at noon")
        pub.send_to_user("ann", "you have mail")
        pub.disconnect_user("bob", 4001, "banned")

    async with melody.AsyncNatsPublisher(url, channel_prefix="chat") as pub:
        await pub.publish_json("room:1", {"text": "hi"})

A publisher puts on NATS exactly what a hub's ``NatsBackplane`` with the same
``channel_prefix`` would: the envelopes of ``melody.backplane.base`` (with a node id of the
publisher's own, so that every hub delivers them) on the subjects of
``melody.backplane.nats_subjects``; and, for a topic with history, a publication to the
topic's JetStream stream (made, with a new epoch, if missing, as a hub would), which numbers
it: it gets the topic's next offset, every hub following the topic delivers it, and clients
recover it like any other. Which topics keep history is the hubs' configuration, read from
the options stream (``melody.backplane.nats_options``) when first needed, again once it is
``options_refresh`` seconds old, and on demand. Needs only ``nats-py``, not Redis.

What it promises: a call returns once the server has taken the message (a plain message: one
PING round trip after it; a publication with history: JetStream's acknowledgement, after a
look at the stream for its epoch: two round trips), and raises
``melody.errors.BackplaneError`` when NATS is unreachable or refuses it. Unlike Redis, NATS
does not say how many subscribers a plain message reached: those calls return None. A
publication's epoch is the stream's when it was looked at, a moment before the publication:
were the stream made again in between (a server losing its store at that instant), the offset
would belong to the new epoch. No retries are made.

``NatsPublisher`` (synchronous) runs an ``AsyncNatsPublisher`` on an event loop in a thread of
its own (nats-py is asyncio only): each call waits for its result, at most ``timeout`` plus a
second; it may be called from several threads.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from melody.backplane.base import (
    encode_disconnect_envelope,
    encode_envelope,
    encode_user_envelope,
    new_node_id,
)
from melody.backplane.nats_options import read_topic_options
from melody.backplane.nats_streams import ack_error, ensure_stream
from melody.backplane.nats_subjects import NatsNames
from melody.codecs import JSON
from melody.delivery.history import StreamPosition
from melody.delivery.options import TopicOptions, TopicTable
from melody.errors import CLOSE_NORMAL, BackplaneError, check_close_code
from melody.limits import check_seconds

try:
    import nats
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "melody.NatsPublisher needs the nats-py package: pip install 'melody[nats]'") from exc

__all__ = ["AsyncNatsPublisher", "NatsPublisher"]

_T = TypeVar("_T")


def _payload(msg: Any, binary: bool) -> bytes:
    if binary:
        if not isinstance(msg, (bytes, bytearray, memoryview)):
            raise TypeError(f"a binary message is bytes-like, not {type(msg).__name__}")
        return bytes(msg)
    if not isinstance(msg, str):
        raise TypeError(f"a text message is a str, not {type(msg).__name__}")
    return msg.encode("utf-8")


def _json(obj: Any) -> str:
    text = JSON.encode(obj)
    return text if isinstance(text, str) else text.decode("utf-8")


class AsyncNatsPublisher:
    """Publish to a cluster of hubs through their NATS, from asyncio code (see the module
    docstring). ``url`` and ``channel_prefix`` are those of the hubs' ``NatsBackplane``;
    ``options_refresh``: seconds the topic options are used before being read again (0:
    before every publish to a topic); ``timeout``: to connect and for each reply;
    ``nats_options`` go to ``nats.connect``. Connecting is lazy (at the first call) and
    happens again at the next call after the connection was lost. Use it in one event loop;
    ``async with`` it, or ``await`` :meth:`aclose`.
    """

    def __init__(self, url: str | list[str] = "nats://127.0.0.1:4222", *,
                 channel_prefix: str = "melody", options_refresh: float = 5.0,
                 timeout: float = 5.0, **nats_options: Any) -> None:
        check_seconds("options_refresh", options_refresh, allow_zero=True)
        check_seconds("timeout", timeout)
        urls = [url] if isinstance(url, str) else list(url)
        if not urls or not all(isinstance(u, str) and "://" in u for u in urls):
            raise ValueError(f"not a NATS URL: {url!r}")
        #: The NATS URL (as given).
        self.url = url
        #: The subjects and streams, the same as the hubs' with this ``channel_prefix``.
        self.names = NatsNames(channel_prefix)
        #: This publisher's identity in its envelopes (no hub has it: every hub delivers).
        self.node_id = new_node_id()
        self._urls = urls
        self._options_refresh = float(options_refresh)
        self._timeout = float(timeout)
        self._nats_options = nats_options
        self._table = TopicTable()
        self._fetched = float("-inf")
        self._nc: Any = None
        self._lock: asyncio.Lock | None = None
        self.closed = False

    async def _conn(self) -> Any:
        if self.closed:
            raise BackplaneError("publisher is closed")
        nc = self._nc
        if nc is not None and nc.is_connected:
            return nc
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._nc is not None and self._nc.is_connected:
                return self._nc
            options: dict[str, Any] = {
                "servers": self._urls, "allow_reconnect": False, "no_echo": True,
                "max_reconnect_attempts": 1, "reconnect_time_wait": 0,
                "connect_timeout": self._timeout, "flush_timeout": self._timeout,
                "name": f"melody-publisher-{self.node_id.hex()[:12]}"}
            options.update(self._nats_options)
            try:
                self._nc = await nats.connect(**options)
            except Exception as exc:
                raise self._failed(exc) from exc
            return self._nc

    def _failed(self, exc: BaseException) -> BackplaneError:
        return BackplaneError(f"nats at {self.url}: {exc}")

    async def refresh_topic_options(self) -> dict[str, TopicOptions]:
        """Read the hubs' topic options now; return them (pattern -> options)."""
        nc = await self._conn()
        try:
            patterns = await read_topic_options(nc, self.names, self._timeout)
        except BackplaneError:
            raise
        except Exception as exc:
            raise self._failed(exc) from exc
        table = TopicTable()
        for pattern, options in sorted(patterns.items()):
            table.configure(pattern, options)
        self._table = table
        self._fetched = time.monotonic()
        return table.patterns()

    def topic_options(self, topic: str) -> TopicOptions | None:
        """The options the hubs configured for ``topic`` as last read; no round trip."""
        return self._table.lookup(topic)

    async def _send(self, subject: str, envelope: bytes) -> None:
        nc = await self._conn()
        try:
            await nc.publish(subject, envelope)
            await nc.flush(timeout=self._timeout)
        except Exception as exc:
            raise self._failed(exc) from exc

    async def _store(self, topic: str, data: str, options: TopicOptions) -> StreamPosition:
        nc = await self._conn()
        js = nc.jetstream(timeout=self._timeout)
        subject = self.names.history(topic)[1]
        for _ in range(2):
            try:
                epoch, _state = await ensure_stream(js, self.names, topic, options)
                answer = await nc.request(subject, data.encode("utf-8"), timeout=self._timeout)
            except nats.errors.NoRespondersError:
                continue  # the stream went between the look and the publish: once more
            except BackplaneError:
                raise
            except Exception as exc:
                raise self._failed(exc) from exc
            error = ack_error(answer)
            if error is None:
                return StreamPosition(int(json.loads(answer.data)["seq"]), epoch)
            if error != "503":
                raise BackplaneError(f"publication to {topic!r} not stored: {error}")
        raise BackplaneError(f"publication to {topic!r} not stored: no stream took it")

    async def _to_topic(self, topic: str, msg: Any, binary: bool,
                        text: bool = False) -> StreamPosition | None:
        if time.monotonic() - self._fetched >= self._options_refresh:
            await self.refresh_topic_options()
        options = self._table.lookup(topic)
        if options is not None and options.history:
            if binary:
                raise TypeError(f"topic {topic!r} keeps history: its publications are text "
                                "(JSON), not binary")
            return await self._store(topic, _json(msg) if text else msg, options)
        await self._send(self.names.topic(topic),
                         encode_envelope(self.node_id, binary, _payload(msg, binary)))
        return None

    async def publish(self, topic: str, msg: str) -> StreamPosition | None:
        """Send a text message to ``topic``'s subscribers on every hub. Returns the
        publication's position when the topic keeps history (``msg`` is then its ``data``,
        as a JSON string, as with ``hub.publish``), else None. Raises ``BackplaneError``
        (NATS unreachable, or it refused), TypeError (``msg`` not a str)."""
        if not isinstance(msg, str):
            raise TypeError(f"a text message is a str, not {type(msg).__name__}")
        return await self._to_topic(topic, msg, False, text=True)

    async def publish_json(self, topic: str, obj: Any) -> StreamPosition | None:
        """:meth:`publish` ``obj`` as JSON; for a topic with history, ``obj`` is the
        publication's ``data``."""
        return await self._to_topic(topic, _json(obj), False)

    async def publish_binary(self, topic: str,
                             msg: bytes | bytearray | memoryview) -> StreamPosition | None:
        """Binary :meth:`publish`; TypeError for a topic with history (its data is JSON)."""
        return await self._to_topic(topic, msg, True)

    async def broadcast(self, msg: str) -> None:
        """Send a text message to every session of every hub."""
        await self._send(self.names.broadcast,
                         encode_envelope(self.node_id, False, _payload(msg, False)))

    async def broadcast_json(self, obj: Any) -> None:
        """:meth:`broadcast` ``obj`` as JSON."""
        await self.broadcast(_json(obj))

    async def broadcast_binary(self, msg: bytes | bytearray | memoryview) -> None:
        """Binary :meth:`broadcast`."""
        await self._send(self.names.broadcast,
                         encode_envelope(self.node_id, True, _payload(msg, True)))

    async def send_to_user(self, user: str, msg: str) -> None:
        """Send a text message to every session of ``user`` on every hub."""
        await self._send(self.names.user, encode_user_envelope(
            self.node_id, user, False, _payload(msg, False)))

    async def send_to_user_json(self, user: str, obj: Any) -> None:
        """:meth:`send_to_user` ``obj`` as JSON."""
        await self.send_to_user(user, _json(obj))

    async def send_to_user_binary(self, user: str, msg: bytes | bytearray | memoryview) -> None:
        """Binary :meth:`send_to_user`."""
        await self._send(self.names.user, encode_user_envelope(
            self.node_id, user, True, _payload(msg, True)))

    async def disconnect_user(self, user: str, code: int = CLOSE_NORMAL,
                              reason: str = "") -> None:
        """Close every session of ``user`` on every hub with ``code`` and ``reason``
        (ValueError for a code that may not be sent)."""
        check_close_code(code)
        await self._send(self.names.user,
                         encode_disconnect_envelope(self.node_id, user, code, reason))

    async def aclose(self) -> None:
        """Close the connection; later calls raise ``BackplaneError``."""
        if not self.closed:
            self.closed = True
            nc, self._nc = self._nc, None
            if nc is not None:
                try:
                    await nc.close()
                except Exception:
                    pass

    async def __aenter__(self) -> AsyncNatsPublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<AsyncNatsPublisher {self.url} prefix={self.names.prefix!r}>"


class NatsPublisher:
    """:class:`AsyncNatsPublisher` for synchronous code (a Django view, a Celery task, a
    script): the same arguments, methods (not coroutines) and results, run on an event loop
    in a daemon thread of its own, started at construction. Use it as a context manager, or
    call :meth:`close` (which stops the thread)."""

    def __init__(self, url: str | list[str] = "nats://127.0.0.1:4222", *,
                 channel_prefix: str = "melody", options_refresh: float = 5.0,
                 timeout: float = 5.0, **nats_options: Any) -> None:
        self._async = AsyncNatsPublisher(url, channel_prefix=channel_prefix,
                                         options_refresh=options_refresh, timeout=timeout,
                                         **nats_options)
        self._wait = float(timeout) * 2 + 1.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="melody-nats-publisher", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str | list[str]:
        """The NATS URL (as given)."""
        return self._async.url

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._async.closed

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._async.closed or not self._thread.is_alive():
            coro.close()
            raise BackplaneError("publisher is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(self._wait)
        except TimeoutError:
            future.cancel()
            raise BackplaneError(f"nats at {self.url} did not answer within "
                                 f"{self._wait} s") from None

    def refresh_topic_options(self) -> dict[str, TopicOptions]:
        """:meth:`AsyncNatsPublisher.refresh_topic_options`."""
        return self._run(self._async.refresh_topic_options())

    def topic_options(self, topic: str) -> TopicOptions | None:
        """:meth:`AsyncNatsPublisher.topic_options`."""
        return self._async.topic_options(topic)

    def publish(self, topic: str, msg: str) -> StreamPosition | None:
        """:meth:`AsyncNatsPublisher.publish`."""
        return self._run(self._async.publish(topic, msg))

    def publish_json(self, topic: str, obj: Any) -> StreamPosition | None:
        """:meth:`AsyncNatsPublisher.publish_json`."""
        return self._run(self._async.publish_json(topic, obj))

    def publish_binary(self, topic: str,
                       msg: bytes | bytearray | memoryview) -> StreamPosition | None:
        """:meth:`AsyncNatsPublisher.publish_binary`."""
        return self._run(self._async.publish_binary(topic, msg))

    def broadcast(self, msg: str) -> None:
        """:meth:`AsyncNatsPublisher.broadcast`."""
        self._run(self._async.broadcast(msg))

    def broadcast_json(self, obj: Any) -> None:
        """:meth:`AsyncNatsPublisher.broadcast_json`."""
        self._run(self._async.broadcast_json(obj))

    def broadcast_binary(self, msg: bytes | bytearray | memoryview) -> None:
        """:meth:`AsyncNatsPublisher.broadcast_binary`."""
        self._run(self._async.broadcast_binary(msg))

    def send_to_user(self, user: str, msg: str) -> None:
        """:meth:`AsyncNatsPublisher.send_to_user`."""
        self._run(self._async.send_to_user(user, msg))

    def send_to_user_json(self, user: str, obj: Any) -> None:
        """:meth:`AsyncNatsPublisher.send_to_user_json`."""
        self._run(self._async.send_to_user_json(user, obj))

    def send_to_user_binary(self, user: str, msg: bytes | bytearray | memoryview) -> None:
        """:meth:`AsyncNatsPublisher.send_to_user_binary`."""
        self._run(self._async.send_to_user_binary(user, msg))

    def disconnect_user(self, user: str, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """:meth:`AsyncNatsPublisher.disconnect_user`."""
        self._run(self._async.disconnect_user(user, code, reason))

    def close(self) -> None:
        """Close the connection and stop the thread; later calls raise ``BackplaneError``."""
        if not self._thread.is_alive():
            return
        if not self._async.closed:
            future = asyncio.run_coroutine_threadsafe(self._async.aclose(), self._loop)
            try:
                future.result(self._wait)
            except Exception:
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(self._wait)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> NatsPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<NatsPublisher {self.url} prefix={self._async.names.prefix!r}>"
