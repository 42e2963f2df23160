"""Which engine keeps a delivery feature: this process, or the hub's backplane."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from melody.errors import BackplaneError

if TYPE_CHECKING:
    from melody._hubstate import HubState

__all__ = ["backplane_keeping"]


def backplane_keeping(state: HubState, capability: str, feature: str) -> Any:
    """The hub's backplane when it keeps ``feature`` (its ``capability`` attribute is true);
    None without a backplane (the in-process engine serves). A backplane that cannot keep it
    is refused: each node keeping its own would give answers that differ per node."""
    backplane = state.hub.backplane
    if backplane is None:
        return None
    if not getattr(backplane, capability, False):
        raise BackplaneError(
            f"{type(backplane).__name__} does not keep {feature}: topics with {feature} "
            "across nodes need a backplane that does (RedisBackplane, NatsBackplane)")
    return backplane
