"""``melody.redis_backplane``: kept so that existing imports work.

The Redis backplane lives in ``melody.backplane.redis``; this module re-exports its names.
"""

from __future__ import annotations

from melody.backplane.redis import BackplaneError, RedisBackplane

__all__ = ["RedisBackplane", "BackplaneError"]
