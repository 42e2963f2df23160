"""Per-topic options (``hub.configure_topic``): history, presence, join/leave messages.

A pattern is a topic name or a glob (``chat:*``, ``room:?``, ``feed:[ab]*``, matched with
:func:`fnmatch.fnmatchcase`). When several match a topic, the most specific wins: an exact
name over any glob, then the glob with the most literal (non-wildcard) characters, then the
one configured last. Lookups are cached per topic name, so a publish to a configured topic
pays one dict lookup, and a hub that configured nothing pays one truth test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fnmatch import fnmatchcase

import orjson

__all__ = ["TopicOptions", "TopicTable"]

_WILDCARDS = frozenset("*?[")
#: Topic names whose resolved options are cached; past it the cache starts over (a flood of
#: distinct names costs lookups, never memory).
_CACHE_LIMIT = 65_536


@dataclass(frozen=True, slots=True)
class TopicOptions:
    """What ``hub.configure_topic`` set for a pattern."""

    #: Publications kept per topic (0: no history; publications are not numbered).
    history_size: int = 0
    #: Seconds a publication is kept (None: until pushed out by ``history_size``).
    history_ttl: float | None = None
    #: Keep who is subscribed (``hub.presence``, ``hub.presence_stats``), cluster-wide.
    presence: bool = False
    #: Send ``join``/``leave`` messages to the topic's subscribers.
    join_leave: bool = False

    def __post_init__(self) -> None:
        if type(self.history_size) is not int or self.history_size < 0:
            raise ValueError(f"history_size must be an int >= 0, not {self.history_size!r}")
        if self.history_size > 1_000_000:
            raise ValueError("history_size above 1,000,000 publications per topic")
        ttl = self.history_ttl
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float))
                                or not math.isfinite(ttl) or ttl <= 0):
            raise ValueError(f"history_ttl must be a number of seconds > 0 or None, not {ttl!r}")
        for name in ("presence", "join_leave"):
            if type(getattr(self, name)) is not bool:
                raise ValueError(f"{name} must be True or False")
        if ttl is not None and self.history_size == 0:
            raise ValueError("history_ttl without history_size: nothing would be kept")

    def to_json(self) -> bytes:
        """These options as JSON (what a hub writes for a publisher to read):
        ``{"history_size": N, "history_ttl": seconds or null, "presence": bool,
        "join_leave": bool}``."""
        return orjson.dumps({"history_size": self.history_size,
                             "history_ttl": self.history_ttl,
                             "presence": self.presence, "join_leave": self.join_leave})

    @classmethod
    def from_json(cls, text: bytes | str) -> TopicOptions:
        """The options :meth:`to_json` wrote; ValueError when ``text`` is not such JSON
        (unknown fields are ignored, so that a newer hub's extra options do not break an
        older reader)."""
        try:
            fields = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"topic options are not JSON: {exc}") from None
        if not isinstance(fields, dict):
            raise ValueError("topic options are not a JSON object")
        return cls(history_size=fields.get("history_size", 0),
                   history_ttl=fields.get("history_ttl"),
                   presence=fields.get("presence", False),
                   join_leave=fields.get("join_leave", False))

    @property
    def tracked(self) -> bool:
        """True when subscribing and leaving are noted (presence or join/leave)."""
        return self.presence or self.join_leave

    @property
    def history(self) -> bool:
        """True when the topic keeps history (its publications carry offsets)."""
        return self.history_size > 0


def _specificity(pattern: str) -> tuple[int, int]:
    literal = sum(1 for c in pattern if c not in _WILDCARDS)
    exact = 0 if _WILDCARDS.intersection(pattern) else 1
    return exact, literal


class TopicTable:
    """Patterns and their options; :meth:`lookup` resolves a topic name."""

    __slots__ = ("_cache", "_exact", "_globs", "_order")

    def __init__(self) -> None:
        self._exact: dict[str, TopicOptions] = {}
        # (specificity, order, pattern, options), most specific first.
        self._globs: list[tuple[tuple[int, int], int, str, TopicOptions]] = []
        self._cache: dict[str, TopicOptions | None] = {}
        self._order = 0

    def __bool__(self) -> bool:
        return bool(self._exact) or bool(self._globs)

    def configure(self, pattern: str, options: TopicOptions) -> None:
        """Set ``options`` for ``pattern`` (replacing what that same pattern had)."""
        if not isinstance(pattern, str) or not pattern:
            raise ValueError("a topic pattern is a non-empty string")
        self._cache.clear()
        self._order += 1
        if not _WILDCARDS.intersection(pattern):
            self._exact[pattern] = options
            return
        self._globs = [g for g in self._globs if g[2] != pattern]
        self._globs.append((_specificity(pattern), self._order, pattern, options))
        self._globs.sort(key=lambda g: (g[0], g[1]), reverse=True)

    def lookup(self, topic: str) -> TopicOptions | None:
        """The options that apply to ``topic``, or None."""
        cache = self._cache
        try:
            return cache[topic]
        except KeyError:
            pass
        found = self._exact.get(topic)
        if found is None:
            for _, _, pattern, options in self._globs:
                if fnmatchcase(topic, pattern):
                    found = options
                    break
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[topic] = found
        return found

    def patterns(self) -> dict[str, TopicOptions]:
        """Every configured pattern and its options."""
        table = dict(self._exact)
        table.update({g[2]: g[3] for g in self._globs})
        return table
