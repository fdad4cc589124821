"""Process-wide timing hooks: edges that have no metrics of their own (store calls, SMTP sends)
report each call's duration here, and a running daemon attaches its metrics.

A hook and not an import of ``postroom.metrics``: the edges stay free of Prometheus, and a
process without a daemon (the CLI, the tests of an edge) times into nothing.
"""

from __future__ import annotations

from collections.abc import Callable

TimingHook = Callable[[float, str, str], None]  # (seconds, result, subject: an account or "")


class Timings:
    """One edge's hook; ``hook`` is None (nothing listens) or the daemon's metrics method."""

    def __init__(self) -> None:
        self.hook: TimingHook | None = None

    def __call__(self, seconds: float, result: str, subject: str = "") -> None:
        hook = self.hook
        if hook is not None:
            hook(seconds, result, subject)
