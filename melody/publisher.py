"""Publishing from anywhere: a Django view, a Celery task, a script, with no hub running.

::

    with melody.Publisher("redis://127.0.0.1:6379/0", channel_prefix="chat") as pub:
        pub.publish_json("room:1", {"text": "hi"})   # StreamPosition(offset=8, epoch=...)
        pub.broadcast("maintenance at noon")          # 2: the Redis subscribers reached
        pub.send_to_user("ann", "you have mail")
        pub.disconnect_user("bob", 4001, "banned")

    async with melody.AsyncPublisher(url, channel_prefix="chat") as pub:
        await pub.publish_json("room:1", {"text": "hi"})

A publisher talks to the Redis of the hubs' ``RedisBackplane`` with the same
``channel_prefix``, and puts on it exactly the bytes a hub's backplane would: the envelopes of
``melody.backplane.base`` (with a node id of the publisher's own, so that every hub delivers
them) on the channels of ``melody.backplane.redis_keys``; and, for a topic with history, the
same Lua script as the hubs (``melody.backplane.redis_streams``), which numbers, stores and
publishes the publication in one atomic step: it gets the next offset of the topic, like a
hub's publication, and clients recover it like any other.

Which topics keep history is the hubs' configuration (``hub.configure_topic``), which their
backplanes write to ``P:topic-options``; a publisher reads that hash when first needed, again
once it is ``options_refresh`` seconds old (at the next publish to a topic), and on demand
(:meth:`Publisher.refresh_topic_options`). So a hub's new ``configure_topic`` reaches the
publishers within ``options_refresh`` seconds. When hubs disagree on a pattern the last one
written wins (see ``melody.backplane.redis``, "Topic options").

What it promises: a call returns once Redis has taken the message (one round trip), and
raises ``melody.errors.BackplaneError`` when Redis is unreachable or refuses it: nothing is
dropped without an exception. Delivery is then the hubs' (at most once to the sessions
connected at that moment; exactly once within the history window for topics with history).
A call that raised may still have reached Redis (the reply was lost): retrying it may deliver
it twice. No retries are made by the publisher itself (pass ``retry=`` to redis-py to change
that).
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from melody.backplane.base import (
    encode_disconnect_envelope,
    encode_envelope,
    encode_user_envelope,
    new_node_id,
)
from melody.backplane.redis_keys import RedisKeys
from melody.backplane.redis_streams import PUBLISH_SCRIPT, publish_args, stream_head
from melody.codecs import JSON
from melody.delivery.history import StreamPosition
from melody.delivery.options import TopicOptions, TopicTable
from melody.errors import CLOSE_NORMAL, BackplaneError, check_close_code
from melody.limits import check_seconds

try:
    import redis
    import redis.asyncio
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "melody.Publisher needs the redis package: pip install 'melody[redis]'") from exc

__all__ = ["AsyncPublisher", "Publisher"]

#: What a publish returns: the position of the publication for a topic with history, else
#: the number of Redis subscribers (hub nodes) the PUBLISH reached.
PublishResult = int | StreamPosition


class _Step(NamedTuple):
    """One thing to send: a PUBLISH of ``envelope`` on ``channel``, or (``stream`` set) the
    history script with those two keys and ``args``."""

    channel: bytes
    envelope: bytes
    stream: tuple[bytes, bytes] | None = None
    args: tuple[Any, ...] = ()


class _Publishing:
    """What both publishers share, without I/O: names, envelopes, the topic options."""

    def __init__(self, url: str, channel_prefix: str, options_refresh: float,
                 history_meta_ttl: float, timeout: float) -> None:
        if isinstance(url, str) and url.startswith(("nats://", "tls://")):
            raise ValueError(f"{url!r} is a NATS URL: hubs with a NatsBackplane are published "
                             "to with melody.NatsPublisher (or AsyncNatsPublisher)")
        check_seconds("options_refresh", options_refresh, allow_zero=True)
        check_seconds("history_meta_ttl", history_meta_ttl, low=1.0)
        check_seconds("timeout", timeout)
        #: The Redis URL (as given).
        self.url = url
        #: The channels and keys, the same as the hubs' with this ``channel_prefix``.
        self.keys = RedisKeys(channel_prefix)
        #: This publisher's identity in its envelopes (no hub has it: every hub delivers).
        self.node_id = new_node_id()
        self._head = stream_head(self.node_id)
        self._options_refresh = float(options_refresh)
        self._meta_ttl_ms = int(history_meta_ttl * 1000)
        self._table = TopicTable()
        self._fetched = float("-inf")
        self.closed = False

    # -- the topic options ----------------------------------------------------------------

    def _stale(self) -> bool:
        return time.monotonic() - self._fetched >= self._options_refresh

    def _load(self, fields: dict[Any, Any]) -> None:
        # HGETALL's reply becomes the table; an entry that is not options is an error, not a
        # guess (a publication numbered wrongly cannot be taken back).
        table = TopicTable()
        for pattern, value in sorted(fields.items()):
            name = (pattern.decode("utf-8", "surrogatepass") if isinstance(pattern, bytes)
                    else str(pattern))
            try:
                table.configure(name, TopicOptions.from_json(value))
            except (ValueError, TypeError) as exc:
                raise BackplaneError(
                    f"{self.keys.topic_options.decode()} holds bad options for {name!r}: "
                    f"{exc}") from None
        self._table = table
        self._fetched = time.monotonic()

    def topic_options(self, topic: str) -> TopicOptions | None:
        """The options the hubs configured for ``topic`` as last read (None: nothing matches);
        no round trip."""
        return self._table.lookup(topic)

    # -- building messages ----------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise BackplaneError("publisher is closed")

    def _topic_step(self, topic: str, msg: Any, binary: bool) -> _Step:
        channel = self.keys.topic(topic)
        options = self._table.lookup(topic)
        if options is not None and options.history:
            if binary:
                raise TypeError(f"topic {topic!r} keeps history: its publications are text "
                                "(JSON), not binary")
            return _Step(channel, b"", self.keys.stream(topic),
                         publish_args(options, msg.encode("utf-8"), self._meta_ttl_ms,
                                      channel, self._head))
        return _Step(channel, encode_envelope(self.node_id, binary, _payload(msg, binary)))

    def _broadcast_step(self, msg: Any, binary: bool) -> _Step:
        return _Step(self.keys.broadcast,
                     encode_envelope(self.node_id, binary, _payload(msg, binary)))

    def _user_step(self, user: str, msg: Any, binary: bool) -> _Step:
        return _Step(self.keys.user,
                     encode_user_envelope(self.node_id, user, binary, _payload(msg, binary)))

    def _disconnect_step(self, user: str, code: int, reason: str) -> _Step:
        check_close_code(code)
        return _Step(self.keys.user, encode_disconnect_envelope(self.node_id, user, code, reason))

    def _failed(self, exc: BaseException) -> BackplaneError:
        return BackplaneError(f"redis at {self.url}: {exc}")


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


def _position(reply: Any) -> StreamPosition:
    offset, epoch = reply
    return StreamPosition(int(offset), epoch.decode("utf-8") if isinstance(epoch, bytes)
                          else str(epoch))


def _client_options(timeout: float, redis_options: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout,
                               # At most once, as the hubs: a lost reply is an exception for
                               # the caller to judge, never a silent second publish.
                               "retry": Retry(NoBackoff(), 0)}
    options.update(redis_options)
    return options


class Publisher(_Publishing):
    """Publish to a cluster of hubs through their Redis, from synchronous code.

    ``url`` and ``channel_prefix`` are those of the hubs' ``RedisBackplane``;
    ``history_meta_ttl`` should be theirs too (how long a topic's epoch outlives its last
    publish). ``options_refresh``: seconds the topic options read from Redis are used before
    being read again (0: before every publish). ``timeout``: to connect and for each reply.
    ``redis_options`` go to ``redis.Redis`` (``password=``, ``ssl_ca_certs=``, ...).

    Every method makes one round trip (plus one to read the topic options when they are
    stale), is safe to call from several threads (redis-py's connection pool), and raises
    ``BackplaneError`` when Redis is unreachable or refuses the command. Connecting is lazy:
    constructing one does not touch the network. Use it as a context manager, or call
    :meth:`close`.
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *,
                 channel_prefix: str = "melody", options_refresh: float = 5.0,
                 history_meta_ttl: float = 86_400.0, timeout: float = 5.0,
                 **redis_options: Any) -> None:
        super().__init__(url, channel_prefix, options_refresh, history_meta_ttl, timeout)
        self._redis = redis.Redis.from_url(url, **_client_options(timeout, redis_options))
        self._script = self._redis.register_script(PUBLISH_SCRIPT)

    def refresh_topic_options(self) -> dict[str, TopicOptions]:
        """Read the hubs' topic options from Redis now; return them (pattern -> options)."""
        self._check_open()
        try:
            fields = self._redis.hgetall(self.keys.topic_options)
        except redis.RedisError as exc:
            raise self._failed(exc) from exc
        self._load(fields)
        return self._table.patterns()

    def _send(self, step: _Step) -> Any:
        try:
            if step.stream is None:
                return int(self._redis.publish(step.channel, step.envelope))
            return _position(self._script(keys=list(step.stream), args=list(step.args)))
        except redis.RedisError as exc:
            raise self._failed(exc) from exc

    def _to_topic(self, topic: str, msg: Any, binary: bool,
                  text: bool = False) -> PublishResult:
        self._check_open()
        if self._stale():
            self.refresh_topic_options()
        if text:
            options = self._table.lookup(topic)
            if options is not None and options.history:
                msg = _json(msg)  # a text publication's data is the text as a JSON string
        result: PublishResult = self._send(self._topic_step(topic, msg, binary))
        return result

    def publish(self, topic: str, msg: str) -> PublishResult:
        """Send a text message to ``topic``'s subscribers on every hub.

        Returns the publication's :class:`~melody.StreamPosition` (offset, epoch) when the
        topic keeps history (``msg`` is then its ``data``, as a JSON string, as with
        ``hub.publish``), else how many Redis subscribers the PUBLISH reached (hub nodes
        subscribed to the topic: Redis' own reply). Raises ``BackplaneError`` (Redis
        unreachable), TypeError (``msg`` not a str).
        """
        return self._to_topic(topic, msg, False, text=True)

    def publish_json(self, topic: str, obj: Any) -> PublishResult:
        """:meth:`publish` ``obj`` as JSON (orjson); for a topic with history, ``obj`` is the
        publication's ``data``. TypeError when it cannot be encoded."""
        return self._to_topic(topic, _json(obj), False)

    def publish_binary(self, topic: str, msg: bytes | bytearray | memoryview) -> PublishResult:
        """Binary :meth:`publish`; TypeError for a topic with history (its data is JSON)."""
        return self._to_topic(topic, msg, True)

    def broadcast(self, msg: str) -> int:
        """Send a text message to every session of every hub; returns the Redis subscribers
        (hub nodes) reached."""
        self._check_open()
        result: int = self._send(self._broadcast_step(msg, False))
        return result

    def broadcast_json(self, obj: Any) -> int:
        """:meth:`broadcast` ``obj`` as JSON."""
        return self.broadcast(_json(obj))

    def broadcast_binary(self, msg: bytes | bytearray | memoryview) -> int:
        """Binary :meth:`broadcast`."""
        self._check_open()
        result: int = self._send(self._broadcast_step(msg, True))
        return result

    def send_to_user(self, user: str, msg: str) -> int:
        """Send a text message to every session of ``user`` (``session.user``) on every hub;
        returns the Redis subscribers (hub nodes) reached. ValueError for a user name over
        65,535 UTF-8 bytes."""
        self._check_open()
        result: int = self._send(self._user_step(user, msg, False))
        return result

    def send_to_user_json(self, user: str, obj: Any) -> int:
        """:meth:`send_to_user` ``obj`` as JSON."""
        return self.send_to_user(user, _json(obj))

    def send_to_user_binary(self, user: str, msg: bytes | bytearray | memoryview) -> int:
        """Binary :meth:`send_to_user`."""
        self._check_open()
        result: int = self._send(self._user_step(user, msg, True))
        return result

    def disconnect_user(self, user: str, code: int = CLOSE_NORMAL, reason: str = "") -> int:
        """Close every session of ``user`` on every hub with ``code`` and ``reason``; returns
        the Redis subscribers (hub nodes) reached. ValueError for a code that may not be sent
        (RFC 6455 7.4; 4000-4999 are the application's)."""
        self._check_open()
        result: int = self._send(self._disconnect_step(user, code, reason))
        return result

    def close(self) -> None:
        """Close the connections to Redis; later calls raise ``BackplaneError``."""
        if not self.closed:
            self.closed = True
            self._redis.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Publisher {self.url} prefix={self.keys.prefix.decode()!r}>"


class AsyncPublisher(_Publishing):
    """:class:`Publisher` for asyncio code (a FastAPI route, an aiohttp handler, a worker).

    A class of its own, with the same methods as coroutines, rather than ``async`` twins
    beside the sync ones: as ``redis.Redis``/``redis.asyncio.Redis`` and
    ``httpx.Client``/``httpx.AsyncClient`` do, so that each class has one colour, every
    method of an ``AsyncPublisher`` is awaited and none of a ``Publisher`` is, and a sync
    caller never needs an event loop. Same arguments, same results, same errors; built on
    ``redis.asyncio``. Use it in one event loop; ``async with`` it, or ``await`` :meth:`aclose`.
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *,
                 channel_prefix: str = "melody", options_refresh: float = 5.0,
                 history_meta_ttl: float = 86_400.0, timeout: float = 5.0,
                 **redis_options: Any) -> None:
        super().__init__(url, channel_prefix, options_refresh, history_meta_ttl, timeout)
        self._redis = redis.asyncio.Redis.from_url(url, **_client_options(timeout,
                                                                          redis_options))
        self._script = self._redis.register_script(PUBLISH_SCRIPT)

    async def refresh_topic_options(self) -> dict[str, TopicOptions]:
        """Read the hubs' topic options from Redis now; return them (pattern -> options)."""
        self._check_open()
        try:
            fields = await self._redis.hgetall(self.keys.topic_options)
        except redis.RedisError as exc:
            raise self._failed(exc) from exc
        self._load(fields)
        return self._table.patterns()

    async def _send(self, step: _Step) -> Any:
        try:
            if step.stream is None:
                return int(await self._redis.publish(step.channel, step.envelope))
            return _position(await self._script(keys=list(step.stream), args=list(step.args)))
        except redis.RedisError as exc:
            raise self._failed(exc) from exc

    async def _to_topic(self, topic: str, msg: Any, binary: bool,
                        text: bool = False) -> PublishResult:
        self._check_open()
        if self._stale():
            await self.refresh_topic_options()
        if text:
            options = self._table.lookup(topic)
            if options is not None and options.history:
                msg = _json(msg)  # a text publication's data is the text as a JSON string
        result: PublishResult = await self._send(self._topic_step(topic, msg, binary))
        return result

    async def publish(self, topic: str, msg: str) -> PublishResult:
        """:meth:`Publisher.publish`."""
        return await self._to_topic(topic, msg, False, text=True)

    async def publish_json(self, topic: str, obj: Any) -> PublishResult:
        """:meth:`Publisher.publish_json`."""
        return await self._to_topic(topic, _json(obj), False)

    async def publish_binary(self, topic: str,
                             msg: bytes | bytearray | memoryview) -> PublishResult:
        """:meth:`Publisher.publish_binary`."""
        return await self._to_topic(topic, msg, True)

    async def broadcast(self, msg: str) -> int:
        """:meth:`Publisher.broadcast`."""
        self._check_open()
        result: int = await self._send(self._broadcast_step(msg, False))
        return result

    async def broadcast_json(self, obj: Any) -> int:
        """:meth:`Publisher.broadcast_json`."""
        return await self.broadcast(_json(obj))

    async def broadcast_binary(self, msg: bytes | bytearray | memoryview) -> int:
        """:meth:`Publisher.broadcast_binary`."""
        self._check_open()
        result: int = await self._send(self._broadcast_step(msg, True))
        return result

    async def send_to_user(self, user: str, msg: str) -> int:
        """:meth:`Publisher.send_to_user`."""
        self._check_open()
        result: int = await self._send(self._user_step(user, msg, False))
        return result

    async def send_to_user_json(self, user: str, obj: Any) -> int:
        """:meth:`Publisher.send_to_user_json`."""
        return await self.send_to_user(user, _json(obj))

    async def send_to_user_binary(self, user: str, msg: bytes | bytearray | memoryview) -> int:
        """:meth:`Publisher.send_to_user_binary`."""
        self._check_open()
        result: int = await self._send(self._user_step(user, msg, True))
        return result

    async def disconnect_user(self, user: str, code: int = CLOSE_NORMAL,
                              reason: str = "") -> int:
        """:meth:`Publisher.disconnect_user`."""
        self._check_open()
        result: int = await self._send(self._disconnect_step(user, code, reason))
        return result

    async def aclose(self) -> None:
        """Close the connections to Redis; later calls raise ``BackplaneError``."""
        if not self.closed:
            self.closed = True
            await self._redis.aclose()

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<AsyncPublisher {self.url} prefix={self.keys.prefix.decode()!r}>"
