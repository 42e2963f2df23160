"""The upper bounds of every size, count and duration a user configures, and their checks.

Every numeric setting (``Config``, ``Compression``, ``RateLimit``, the client's options, the
middleware, the backplanes) is checked here at construction, against a lower *and* an upper
bound. The upper bounds are not taste: past them a value stops meaning what it says. A length
near 2**63 wraps when a header length is added to it; a duration near 1e300 overflows the event
loop's timer arithmetic (uvloop keeps milliseconds in 64 bits); a count of 2**62 queued frames is
a promise of memory no machine has. So a value out of range is refused with ``ValueError`` naming
the setting and the range, and no value reaches the core that its arithmetic cannot hold.
"""

from __future__ import annotations

import math

__all__ = [
    "MAX_MESSAGE_SIZE",
    "MAX_BUFFER_BYTES",
    "MAX_COUNT",
    "MAX_SECONDS",
    "check_int",
    "check_seconds",
    "check_rate",
]

#: The largest ``max_message_size`` anywhere (1 GiB). A message is held whole in memory,
#: reassembled and, with permessage-deflate, inflated; past this, stream the data another way.
MAX_MESSAGE_SIZE = 1 << 30
#: The largest byte budget of a queue or buffer (64 GiB: more than any machine here should
#: ever hold for one peer, and far below where byte arithmetic could wrap).
MAX_BUFFER_BYTES = 1 << 36
#: The largest count (queued messages, topics, tasks, connections...).
MAX_COUNT = 1 << 31
#: The longest duration in seconds (30 days): timers past it are a misconfiguration, and far
#: past it the event loop's millisecond arithmetic overflows.
MAX_SECONDS = 30 * 24 * 3600.0


def check_int(name: str, value: object, low: int, high: int) -> int:
    """``value`` as an int in ``low..high``; ValueError otherwise (bools are refused too:
    ``True`` as a size is always a mistake)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be {low}..{high}, got {value!r}")
    return value


def check_seconds(name: str, value: object, *, low: float = 0.0, high: float = MAX_SECONDS,
                  allow_zero: bool = False) -> float:
    """``value`` as a finite number of seconds, > ``low`` (>= with ``allow_zero``) and <=
    ``high``; ValueError otherwise (NaN, infinities and bools included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")
    if (number < low) if allow_zero else (number <= low):
        bound = f">= {low:g}" if allow_zero else f"> {low:g}"
        raise ValueError(f"{name} must be {bound} seconds, got {value!r}")
    if number > high:
        raise ValueError(f"{name} must be at most {high:g} seconds, got {value!r}")
    return number


def check_rate(name: str, value: object, *, low: float = 0.0, high: float = float(1 << 40),
               allow_low: bool = False) -> float:
    """``value`` as a finite number in ``(low, high]`` (``[low, high]`` with ``allow_low``);
    ValueError otherwise. For rates, bursts and factors."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number > high or (
            number < low if allow_low else number <= low):
        opener = "[" if allow_low else "("
        raise ValueError(f"{name} must be a finite number in {opener}{low:g}, {high:g}],"
                         f" got {value!r}")
    return number
