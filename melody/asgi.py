"""``melody.asgi``: kept so that existing imports work.

The ASGI adapter lives in ``melody.server.asgi`` (its docstring describes what it does); this
module re-exports its names.
"""

from __future__ import annotations

from melody.server.asgi import AsgiAdapter, request_from_scope

__all__ = ["AsgiAdapter", "request_from_scope"]
