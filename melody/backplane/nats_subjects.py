"""The NATS subjects and JetStream names of one ``channel_prefix``: one place that names them.

NATS subjects are tokens separated by ``.``; a token may not hold spaces, ``.``, ``*`` or
``>``. A melody topic may hold any of them, so a topic never goes into a subject as it is:
its *token* is ``x`` and the hex of its UTF-8 bytes (``chat:1`` -> ``x636861743a31``), or,
for a topic over 256 bytes, ``s`` and the SHA-256 of them (subjects stay short; the
backplane maps the subjects it subscribed back to their topics, so it never decodes one).
``P`` is the prefix (letters, digits, ``-`` and ``_`` only: it is also part of stream names):

``P.all``                     hub-wide broadcasts
``P.user``                    messages and disconnects for one user's sessions
``P.t.<token>``               a topic's messages (core NATS, interest-based)
``P.h.<token>``               a topic's publications with history (JetStream stream
                              ``P_h_<digest>``, one per topic: see ``nats_streams``)
``P.presence.<token>.<sid>``  one session's presence entry (stream ``P_presence``)
``P.count.<node>.<token>``    one node's subscriber count of a topic (same stream)
``P.options.<digest>``        one ``configure_topic`` pattern and its options (stream
                              ``P_options``: what ``melody.NatsPublisher`` reads)
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["NatsNames", "topic_token"]

_PREFIX = re.compile(r"[A-Za-z0-9_-]+")
# Topics up to this many UTF-8 bytes are hex-encoded whole; longer ones are hashed.
_HEX_BYTES = 256


def topic_token(topic: str) -> str:
    """The subject token of ``topic`` (see the module docstring)."""
    raw = topic.encode("utf-8", "surrogatepass")
    if len(raw) <= _HEX_BYTES:
        return "x" + raw.hex()
    return "s" + hashlib.sha256(raw).hexdigest()


class NatsNames:
    """The subjects and stream names of one ``channel_prefix``."""

    __slots__ = ("broadcast", "options_stream", "prefix", "presence_stream", "user")

    def __init__(self, channel_prefix: str) -> None:
        if not _PREFIX.fullmatch(channel_prefix):
            raise ValueError("channel_prefix must be letters, digits, '-' and '_' only "
                             "(it is part of NATS subjects and stream names)")
        self.prefix = channel_prefix
        #: The hub-wide broadcast subject.
        self.broadcast = channel_prefix + ".all"
        #: The subject of user envelopes.
        self.user = channel_prefix + ".user"
        #: The stream of presence entries and node counts.
        self.presence_stream = channel_prefix + "_presence"
        #: The stream of the hubs' topic options.
        self.options_stream = channel_prefix + "_options"

    def topic(self, topic: str) -> str:
        """The core subject of ``topic``'s messages."""
        return f"{self.prefix}.t.{topic_token(topic)}"

    def history(self, topic: str) -> tuple[str, str]:
        """The stream name and the subject of ``topic``'s publications with history."""
        digest = hashlib.sha256(topic.encode("utf-8", "surrogatepass")).hexdigest()[:40]
        return f"{self.prefix}_h_{digest}", f"{self.prefix}.h.{topic_token(topic)}"

    def presence(self, topic: str, session_id: str | None = None) -> str:
        """The subject of one session's entry in ``topic`` (None: all of the topic's, a
        wildcard)."""
        tail = ">" if session_id is None else session_id.encode().hex()
        return f"{self.prefix}.presence.{topic_token(topic)}.{tail}"

    def count(self, node_hex: str | None, topic: str) -> str:
        """The subject of a node's count of ``topic`` (None: every node's, a wildcard)."""
        return f"{self.prefix}.count.{node_hex or '*'}.{topic_token(topic)}"

    def options(self, pattern: str | None) -> str:
        """The subject of one ``configure_topic`` pattern's options (None: all, a
        wildcard)."""
        if pattern is None:
            return f"{self.prefix}.options.>"
        digest = hashlib.sha256(pattern.encode("utf-8", "surrogatepass")).hexdigest()[:40]
        return f"{self.prefix}.options.{digest}"

    def presence_subjects(self) -> list[str]:
        """The subjects the presence stream holds."""
        return [f"{self.prefix}.presence.>", f"{self.prefix}.count.>"]
