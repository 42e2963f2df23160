"""The Redis channels and keys of one ``channel_prefix``: one place that names them.

``RedisBackplane`` (the hubs) and ``melody.Publisher`` (any process without a hub) must put
the same bytes on the same channels; both take their names from :class:`RedisKeys`, so the
two cannot drift apart. ``P`` is the prefix:

``P:all``            hub-wide broadcasts
``P:user``           messages and disconnects for one user's sessions
``P:topic:T``        topic ``T``'s messages
``P:nodes``          the live nodes (presence of ``cluster_topic_len``)
``P:topic-options``  a hash, pattern -> JSON of ``TopicOptions``: what the hubs'
                     ``configure_topic`` set, so that a publisher knows which topics keep
                     history (see ``melody.backplane.redis``, "Topic options")
``P:stream:T``       topic ``T``'s history (see ``melody.backplane.redis_streams``)
``P:presence:T``     who is in topic ``T`` (see ``melody.backplane.redis_presence``)
"""

from __future__ import annotations

__all__ = ["RedisKeys"]


class RedisKeys:
    """The channel and key names of one ``channel_prefix`` (bytes, as Redis gets them)."""

    __slots__ = ("broadcast", "nodes", "prefix", "presence_prefix", "stream_prefix",
                 "topic_options", "topic_prefix", "user")

    def __init__(self, channel_prefix: str) -> None:
        if not channel_prefix:
            raise ValueError("channel_prefix must not be empty")
        #: The prefix itself, encoded.
        self.prefix = channel_prefix.encode()
        #: The hub-wide broadcast channel.
        self.broadcast = self.prefix + b":all"
        #: The channel of user envelopes (send_to_user, disconnect_user).
        self.user = self.prefix + b":user"
        #: What a topic's channel starts with.
        self.topic_prefix = self.prefix + b":topic:"
        #: The set of live node ids.
        self.nodes = self.prefix + b":nodes"
        #: The hash of the hubs' topic options (pattern -> JSON).
        self.topic_options = self.prefix + b":topic-options"
        #: What a topic's history stream key starts with.
        self.stream_prefix = self.prefix + b":stream:"
        #: What a topic's presence keys start with.
        self.presence_prefix = self.prefix + b":presence:"

    def topic(self, topic: str) -> bytes:
        """The channel of ``topic``."""
        return self.topic_prefix + topic.encode("utf-8", "surrogatepass")

    def stream(self, topic: str) -> tuple[bytes, bytes]:
        """The history stream key and the meta key (epoch, last offset) of ``topic``."""
        stream = self.stream_prefix + topic.encode("utf-8", "surrogatepass")
        return stream, stream + b":meta"
