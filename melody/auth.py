"""Topic authorization helpers for ``hub.authorize`` (see ``melody.routing``).

``hub.authorize(fn)`` takes any ``fn(session, action, topic) -> bool``; :func:`roles` builds the
common one: topic patterns mapped to the roles allowed there, the roles read from the session's
keys (for example the ``roles`` claim of a JWT that ``melody.middleware.JWTAuth`` verified)::

    hub.authorize(melody.auth.roles(
        {"public:*": "*", "chat:*": {"user", "admin"}, "admin:*": {"admin"}},
        publish={"chat:*": {"user", "admin"}, "admin:*": {"admin"}},
    ))
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from melody.session import Session

__all__ = ["roles", "session_roles"]

Authorizer = Callable[["Session", str, str], bool]
RoleSpec = str | Iterable[str]

_MISSING = object()


def session_roles(session: Session, key: str) -> frozenset[str]:
    """The roles held in the session key ``key``.

    ``key`` may be a dotted path into nested mappings (``"claims.roles"``: the ``roles`` entry
    of the dict under ``claims``); a key that itself contains the dots is tried first. The
    value may be a list/set of role names or one string of space-separated names (the OAuth
    ``scope`` form). Missing or of another type: no roles.
    """
    value: Any = session.get(key, _MISSING)
    if value is _MISSING and "." in key:
        head, *rest = key.split(".")
        value = session.get(head, _MISSING)
        for part in rest:
            value = value.get(part, _MISSING) if isinstance(value, Mapping) else _MISSING
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, (list, tuple, set, frozenset)):
        return frozenset(v for v in value if isinstance(v, str))
    return frozenset()


class _Rules:
    """Patterns in order: exact names by dict lookup, wildcard patterns by one regex each."""

    __slots__ = ("exact", "patterns")

    def __init__(self, table: Mapping[str, RoleSpec]) -> None:
        self.exact: dict[str, frozenset[str]] = {}
        self.patterns: list[tuple[re.Pattern[str], frozenset[str]]] = []
        for pattern, allowed in table.items():
            names = frozenset((allowed,) if isinstance(allowed, str) else allowed)
            if any(c in pattern for c in "*?["):
                self.patterns.append((re.compile(fnmatch.translate(pattern)), names))
            else:
                self.exact[pattern] = names

    def allowed(self, topic: str) -> frozenset[str] | None:
        names = self.exact.get(topic)
        if names is not None:
            return names
        for regex, names in self.patterns:
            if regex.match(topic):
                return names
        return None


def roles(subscribe: Mapping[str, RoleSpec], publish: Mapping[str, RoleSpec] | None = None,
          *, key: str = "claims.roles") -> Authorizer:
    """An authorizer for ``hub.authorize``: topic patterns mapped to the roles allowed.

    Patterns are ``fnmatch`` globs (``"chat:*"``, ``"room:??"``) or exact names; an exact name
    wins, then the first matching glob in the mapping's order. A session may act on a topic
    when it holds one of the pattern's roles; ``"*"`` among the roles allows every session.
    A topic no pattern matches is refused. ``publish`` has its own table (default: the
    ``subscribe`` one). Roles are read with :func:`session_roles` under ``key`` (default
    ``"claims.roles"``, where ``JWTAuth`` puts a ``roles`` claim). Costs a dict lookup (plus
    a regex per glob tried) and a set intersection per decision.
    """
    sub_rules = _Rules(subscribe)
    pub_rules = _Rules(publish) if publish is not None else sub_rules

    def authorize(session: Session, action: str, topic: str) -> bool:
        rules = pub_rules if action == "publish" else sub_rules
        allowed = rules.allowed(topic)
        if allowed is None:
            return False
        if "*" in allowed:
            return True
        return not allowed.isdisjoint(session_roles(session, key))

    return authorize
