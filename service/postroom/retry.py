"""The one backoff shape every retrying part uses: double the wait after each failure, capped;
and the one way a loop waits between attempts: until a stop event or a timeout.

``doubling_delay`` is pure (no clock, no randomness); callers add jitter or honour a server's
Retry-After on top.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

_MAX_EXPONENT = 62  # far beyond any cap; keeps 2**n from overflowing a timedelta


def doubling_delay(failures: int, *, base: timedelta, cap: timedelta) -> timedelta:
    """The wait after the ``failures``-th failure (1, 2, 3 …): base, 2·base, 4·base … ≤ cap."""
    exponent = min(max(failures - 1, 0), _MAX_EXPONENT)
    return timedelta(seconds=min(base.total_seconds() * 2.0**exponent, cap.total_seconds()))


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds``, or less when ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
