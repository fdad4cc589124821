"""Does this replica's clock agree with the database's? (PostgreSQL replicas only.)

Schedules are decided by the database's clock, like leases: the scheduler reads the time as
"ours plus the measured offset", and a fire is claimed only once due by the database's
``now()`` (store.runs). A replica whose clock is off by more than ``MAX_SKEW`` takes no fires
at all until it agrees again: its APScheduler times its fires by its own clock, early or late,
and the other replicas (whose clocks agree) fire them on time. It says so in the log, in
/readyz and in `postroom status` (its heartbeat row carries the offset).

SQLite is one process on one host: the database's clock is ours, and always agrees.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from .clock import utcnow

log = structlog.get_logger(__name__)

# Beyond this a replica takes no fires. Wide enough for the measurement's own error (half a
# round trip under load), narrow enough that no fire runs noticeably early or late.
MAX_SKEW = timedelta(seconds=2)


@dataclass
class ClockCheck:
    """The last measured offset (database minus ours); None: not measured yet, or SQLite."""

    shared: bool  # the database keeps the clock (PostgreSQL)
    offset: timedelta | None = None
    bound: timedelta = MAX_SKEW

    def now(self) -> datetime:
        """The database's time as this replica best knows it."""
        return utcnow() + (self.offset or timedelta(0))

    def agrees(self) -> bool:
        if not self.shared:
            return True
        return self.offset is not None and abs(self.offset) <= self.bound

    @property
    def offset_s(self) -> float | None:
        return None if self.offset is None else round(self.offset.total_seconds(), 3)

    def problem(self) -> str | None:
        """Why this replica takes no fires now, or None."""
        if self.agrees():
            return None
        if self.offset is None:
            return "the clock has not been compared with the database's yet"
        ahead = "behind" if self.offset > timedelta(0) else "ahead of"
        return (
            f"this host's clock is {abs(self.offset.total_seconds()):.1f} s {ahead} the database's "
            f"(more than {self.bound.total_seconds():.0f} s): it takes no scheduled fires until they "
            "agree; fix its time sync (NTP, chrony)"
        )

    def update(self, offset: timedelta | None) -> bool:
        """Record a new measurement; True when the replica agrees again after disagreeing."""
        first, before = self.offset is None, self.agrees()
        self.offset = offset
        after = self.agrees()
        if not after and (before or first):
            log.error("clock disagrees with the database's", offset_s=self.offset_s, problem=self.problem())
        elif after and not before and not first:
            log.info("clock agrees with the database's again", offset_s=self.offset_s)
            return True
        return False


def clock_note(offset: timedelta | None, bound: timedelta = MAX_SKEW) -> str:
    """A replica's clock for `postroom status`: its offset, and whether it takes fires."""
    if offset is None:
        return "-"
    seconds = offset.total_seconds()
    shown = f"{-seconds:+.1f} s"  # the replica's clock relative to the database's
    return shown if abs(offset) <= bound else f"{shown} OFF: takes no fires"
