"""A clock the test moves: code under test takes ``clock``/``now`` as a parameter, so time is
passed in, never patched."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

START = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta = timedelta(0), /, **parts: float) -> None:
        """Move on by ``delta`` and/or timedelta keyword parts: ``advance(minutes=5)``."""
        self.now += delta + timedelta(**parts)
