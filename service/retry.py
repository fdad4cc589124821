"""The one backoff shape every retrying part uses: double the wait after each failure, capped.

Pure (no clock, no randomness); callers add jitter or honour a server's Retry-After on top.
"""

from __future__ import annotations

from datetime import timedelta

_MAX_EXPONENT = 62  # far beyond any cap; keeps 2**n from overflowing a timedelta


def doubling_delay(failures: int, *, base: timedelta, cap: timedelta) -> timedelta:
    """The wait after the ``failures``-th failure (1, 2, 3 …): base, 2·base, 4·base … ≤ cap."""
    exponent = min(max(failures - 1, 0), _MAX_EXPONENT)
    return timedelta(seconds=min(base.total_seconds() * 2.0**exponent, cap.total_seconds()))
