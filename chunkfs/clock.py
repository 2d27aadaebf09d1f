"""Wall-clock time, in one replaceable place.

Everything that stamps or ages data (versions, tier policies, retention) asks
this module, so tests can move time forward without sleeping.
"""

from __future__ import annotations

import time

_offset_ns = 0


def now_ns() -> int:
    """Nanoseconds since the epoch, as chunkfs sees it."""
    return time.time_ns() + _offset_ns


def advance(seconds: float) -> None:
    """Move chunkfs's clock forward (tests only)."""
    global _offset_ns
    _offset_ns += int(seconds * 1e9)
