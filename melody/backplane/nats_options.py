"""The hubs' topic options on JetStream, for ``NatsBackplane`` and ``melody.NatsPublisher``.

What ``hub.configure_topic`` set lives in the stream ``P_options`` (file storage, one message
per subject, kept until replaced): the subject ``P.options.<digest of the pattern>`` holds
``{"pattern": ..., "options": {...}}`` (the options as ``TopicOptions.to_json`` writes them).
A hub writes every pattern it has when its backplane connects (before ``start`` returns, and
again after each reconnect: a server that lost its store gets them back) and each new one
when ``configure_topic`` is called. A publisher reads the last message of every subject. As
with Redis, hubs sharing a prefix should configure the same topics; when they disagree on a
pattern the last write wins, and patterns are never removed.
"""

from __future__ import annotations

from typing import Any

import orjson

from melody.backplane.nats_streams import fetch
from melody.backplane.nats_subjects import NatsNames
from melody.delivery.options import TopicOptions
from melody.errors import BackplaneError

try:
    from nats.js.api import DeliverPolicy, StorageType, StreamConfig
    from nats.js.errors import BadRequestError, NotFoundError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "melody.NatsBackplane needs the nats-py package: pip install 'melody[nats]'") from exc

__all__ = ["read_topic_options", "write_topic_options"]

_STREAM_NAME_IN_USE = 10058


async def write_topic_options(nc: Any, names: NatsNames,
                              patterns: dict[str, TopicOptions], timeout: float) -> None:
    """Write ``patterns`` (made the stream if missing) and wait one round trip."""
    if not patterns:
        return
    js = nc.jetstream(timeout=timeout)
    try:
        await js.add_stream(StreamConfig(
            name=names.options_stream, subjects=[names.options(None)],
            max_msgs_per_subject=1, storage=StorageType.FILE))
    except BadRequestError as exc:
        if exc.err_code != _STREAM_NAME_IN_USE:
            raise
    for pattern, options in patterns.items():
        payload = orjson.dumps({"pattern": pattern, "options": orjson.loads(options.to_json())})
        await nc.publish(names.options(pattern), payload)
    await nc.flush(timeout=timeout)


async def read_topic_options(nc: Any, names: NatsNames,
                             timeout: float) -> dict[str, TopicOptions]:
    """Every pattern the hubs wrote (an empty table when no hub ever wrote one). Raises
    ``BackplaneError`` for a message that is not options: a publication numbered by a wrong
    guess could not be taken back."""
    js = nc.jetstream(timeout=timeout)
    try:
        messages = await fetch(nc, js, names.options_stream, timeout,
                               deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                               filter_subject=names.options(None))
    except NotFoundError:
        return {}
    table: dict[str, TopicOptions] = {}
    for msg in messages:
        try:
            entry = orjson.loads(msg.data)
            table[str(entry["pattern"])] = TopicOptions.from_json(orjson.dumps(entry["options"]))
        except (ValueError, TypeError, KeyError) as exc:
            raise BackplaneError(f"{names.options_stream} holds bad options at {msg.subject}: "
                                 f"{exc}") from None
    return table
