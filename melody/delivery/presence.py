"""Who is in a topic: presence, presence stats, and join/leave messages.

For a topic configured with ``presence=True`` the hub keeps, cluster-wide, one entry per
subscribed session: ``session id -> {"user", "connected_at", "node"}``. With
``join_leave=True`` the topic's subscribers receive, when a session subscribes or leaves
(unsubscribe or disconnect)::

    {"type": "join",  "topic": "chat:1", "info": {"session": "...", "user": "...", ...}}
    {"type": "leave", "topic": "chat:1", "info": {...}}

(the session that joins does not get its own join; join and leave messages are not numbered
and not kept in history).

Without a backplane the entries live in this process. With ``RedisBackplane`` they live in
Redis (``melody.backplane.redis_presence``): each node writes its own sessions' entries and
refreshes them every ``presence_interval``; an entry not refreshed for ``presence_ttl``
seconds is gone from every read, so the sessions of a node that died drop out within
``presence_ttl`` (15 s by default) of its last refresh. ``NatsBackplane`` does the same in a
JetStream stream whose ``max_age`` is ``presence_ttl`` (``melody.backplane.nats_presence``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import orjson

from melody.delivery.engines import backplane_keeping

if TYPE_CHECKING:
    from melody._hubstate import HubState
    from melody.delivery.options import TopicOptions
    from melody.session import Session

__all__ = ["Presence", "PresenceStore"]


class PresenceStore(Protocol):
    """What a backplane that keeps presence offers (``RedisBackplane`` and
    ``NatsBackplane`` do)."""

    keeps_presence: bool

    def presence_add(self, topic: str, session_id: str, info: str) -> None: ...

    def presence_remove(self, topic: str, session_id: str) -> None: ...

    async def presence_read(self, topic: str) -> dict[str, str]: ...


class Presence:
    """One hub's presence (owned by its state: ``state_of(hub).presence``)."""

    def __init__(self, state: HubState) -> None:
        self._state = state
        # Without a backplane: topic -> session id -> info. With one: this node's sessions
        # in topics with presence, topic -> {session id: info JSON} (what it refreshes).
        self._local: dict[str, dict[str, str]] = {}

    def _store(self) -> PresenceStore | None:
        store: PresenceStore | None = backplane_keeping(self._state, "keeps_presence",
                                                         "presence")
        return store

    def _info(self, session: Session) -> dict[str, Any]:
        backplane = self._state.hub.backplane
        return {"session": session.id, "user": session.user,
                "connected_at": session.connected_at,
                "node": backplane.node_id.hex() if backplane is not None else "local"}

    # -- what the hub's state calls ------------------------------------------------------------

    def joined(self, session: Session, topic: str, options: TopicOptions) -> None:
        """``session`` subscribed to ``topic`` (which has presence or join/leave on)."""
        info = self._info(session)
        text = orjson.dumps(info).decode("utf-8")
        if options.presence:
            self._local.setdefault(topic, {})[session.id] = text
            store = self._store()
            if store is not None:
                store.presence_add(topic, session.id, text)
        if options.join_leave:
            self._announce("join", topic, text, session)

    def left(self, session: Session, topic: str, options: TopicOptions) -> None:
        """``session`` left ``topic`` (unsubscribed or disconnected)."""
        entries = self._local.get(topic)
        text = entries.pop(session.id, None) if entries is not None else None
        if entries is not None and not entries:
            del self._local[topic]
        if options.presence:
            store = self._store()
            if store is not None:
                store.presence_remove(topic, session.id)
        if options.join_leave:
            if text is None:
                text = orjson.dumps(self._info(session)).decode("utf-8")
            self._announce("leave", topic, text, None)

    def _announce(self, kind: str, topic: str, info: str, exclude: Session | None) -> None:
        state = self._state
        if state.closed:
            return
        text = ('{"type":"' + kind + '","topic":' + orjson.dumps(topic).decode("utf-8")
                + ',"info":' + info + "}")
        group = state.topics.get(topic)
        if group is not None:
            state.deliver(text, False, group, exclude.proto if exclude is not None else None)
        backplane = state.hub.backplane
        if backplane is not None:
            backplane.publish(topic, False, text.encode("utf-8"))

    def local(self) -> dict[str, dict[str, str]]:
        """This node's entries, topic -> session id -> info JSON (what a backplane
        refreshes)."""
        return self._local

    # -- reads -------------------------------------------------------------------------------------

    async def read(self, topic: str) -> dict[str, dict[str, Any]]:
        """Every session in ``topic`` on every node: session id -> info."""
        store = self._store()
        if store is None:
            raw = self._local.get(topic, {})
        else:
            raw = await store.presence_read(topic)
        return {sid: orjson.loads(info) for sid, info in raw.items()}

    async def stats(self, topic: str) -> dict[str, int]:
        """``{"sessions": n, "users": m}``: sessions in ``topic`` and distinct users among
        them (sessions without a user are not counted as users)."""
        entries = await self.read(topic)
        users = {info.get("user") for info in entries.values()} - {None}
        return {"sessions": len(entries), "users": len(users)}
