"""Schedule maths, pure: config schedule -> trigger -> fire times. No clock, no I/O.

Every function takes the times it needs as arguments; `schedule.runner` wires the result to
APScheduler and the store. A fire time is the claim key for (job, fire) in the store, so it
must come out identical on every replica and after every restart:

- cron: wall-clock times in the job's zone, with DST handled by `DstSafeCronTrigger` below;
- every: anchored at `INTERVAL_ANCHOR` (not at start-up), fire = anchor + k * interval,
  computed in exact integer microseconds in UTC;
- at: one fixed instant (a naive datetime means the job's zone).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.cron.expressions import AllExpression
from apscheduler.triggers.date import DateTrigger

from ..config.model import Config, JobConfig, ScheduleConfig

# Interval schedules count from here, in the job's zone, so every replica computes the same
# fires whenever it started. 2000-01-01 00:00 is a Saturday midnight: `every: 1d` fires at
# local midnight (winter offset), `every: 1w` on Saturdays.
INTERVAL_ANCHOR = datetime(2000, 1, 1)
_TICK = timedelta(microseconds=1)
# Fires missed more than this many at a time are not listed one by one (every: 1s, down a week).
MAX_LISTED_MISSES = 10_000


class DstSafeCronTrigger(CronTrigger):
    """APScheduler's CronTrigger with the two DST changes made to fire once per local day.

    What APScheduler 3.11 does on its own (checked for Europe/Berlin and America/New_York):
    - spring forward: a wall time inside the gap (02:30 on 2026-03-29 in Berlin) comes back as
      a datetime that does not exist ("02:30+01:00"); its instant is 03:30 CEST, one hour
      later, once. We keep that instant (the job runs once, shifted forward by the gap) and
      normalise the value to a real local time so its local date and display are right.
    - fall back: a wall time in the repeated hour (02:30 on 2026-10-25 in Berlin) fires twice,
      at 02:30 CEST and again at 02:30 CET. For a fixed-hour cron (hour field not `*`) we drop
      the second pass, as Vixie cron does: "30 2 * * *" means once a day. A cron whose hour
      field is `*` or `*/n` counts elapsed time and keeps both passes ("*/15 * * * *" keeps
      firing every 15 minutes through the repeated hour).
    The filter is stateless (it looks only at the candidate), so a process that starts inside
    the repeated hour makes the same choice as one that ran through it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        hour = next(f for f in self.fields if f.name == "hour")
        # RangeExpression and friends subclass AllExpression: test the exact type.
        self.fixed_hour = not any(type(e) is AllExpression for e in hour.expressions)

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        while True:
            fire: datetime | None = super().get_next_fire_time(previous_fire_time, now)
            if fire is None:
                return None
            fire = fire.astimezone(UTC).astimezone(self.timezone)
            if previous_fire_time is not None and _utc(fire) <= _utc(previous_fire_time):
                # a gap time normalised onto an instant we already returned
                previous_fire_time = now = fire
                continue
            if self.fixed_hour and _second_pass(fire):
                previous_fire_time = now = fire
                continue
            return fire


def _utc(value: datetime) -> datetime:
    """For comparing and subtracting: Python compares two datetimes that share a tzinfo by
    wall time, ignoring `fold`, so 02:30 CET would equal 02:30 CEST on a fall-back day."""
    return value.astimezone(UTC)


def _second_pass(local: datetime) -> bool:
    """True for the second occurrence of a wall time that happens twice (DST fall back)."""
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


class AnchoredIntervalTrigger(BaseTrigger):
    """Fires at anchor + k * interval, in exact microseconds (APScheduler's IntervalTrigger
    uses float timestamps and the start time, which replicas would not agree on)."""

    def __init__(self, interval: timedelta, *, timezone: ZoneInfo, anchor: datetime = INTERVAL_ANCHOR):
        if interval <= timedelta(0):
            raise ValueError("interval must be positive")
        self.interval = interval
        self.timezone = timezone
        self.anchor = (anchor if anchor.tzinfo else anchor.replace(tzinfo=timezone)).astimezone(UTC)

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime:
        # APScheduler asks for the fire after the previous one, or the first at or after now.
        lower = _utc(previous_fire_time) + _TICK if previous_fire_time is not None else _utc(now)
        steps = -((self.anchor - lower) // self.interval)  # ceiling division
        return (self.anchor + max(steps, 0) * self.interval).astimezone(self.timezone)

    def __str__(self) -> str:
        return f"every {self.interval} from {self.anchor.isoformat()}"


def make_trigger(schedule: ScheduleConfig, default_tz: str) -> BaseTrigger:
    zone = ZoneInfo(schedule.timezone or default_tz)
    if schedule.cron is not None:
        return DstSafeCronTrigger.from_crontab(schedule.cron, timezone=zone)
    if schedule.every is not None:
        return AnchoredIntervalTrigger(schedule.every, timezone=zone)
    if schedule.at is not None:
        at = schedule.at if schedule.at.tzinfo else schedule.at.replace(tzinfo=zone)
        return DateTrigger(run_date=at, timezone=zone)
    raise ValueError("schedule has none of cron, every, at")


def next_fire(trigger: BaseTrigger, after: datetime, now: datetime) -> datetime | None:
    """The first fire strictly after `after` and not before `now` (pass the same for both to
    ask "what comes next"). Aware, in the trigger's zone."""
    lower = max(_utc(after) + _TICK, _utc(now))
    fire: datetime | None = trigger.get_next_fire_time(None, lower)
    # DateTrigger answers its one date whatever `now` is; keep it only if it is still ahead.
    if fire is not None and _utc(fire) < lower:
        return None
    return fire


def fires_between(trigger: BaseTrigger, start: datetime, end: datetime, *, limit: int | None = None) -> list[datetime]:
    """Fires f with start < f <= end, oldest first (at most `limit` of them)."""
    fires: list[datetime] = []
    cursor = start
    while limit is None or len(fires) < limit:
        fire = next_fire(trigger, cursor, cursor)
        if fire is None or _utc(fire) > _utc(end):
            break
        fires.append(fire)
        cursor = fire
    return fires


@dataclass(frozen=True)
class CatchUp:
    run: datetime | None  # the one missed fire to run now, the newest within grace
    skipped: list[datetime]  # missed fires not to run: beyond grace, or coalesced into `run`
    truncated: bool = False  # more fires were missed beyond grace than are listed


def plan_catch_up(
    trigger: BaseTrigger, *, last_fire: datetime | None, started: datetime, now: datetime, grace: timedelta
) -> CatchUp:
    """What to do at start about fires missed while no process was running.

    Missed means: after the job's last recorded fire (any replica's) and at or before
    `started` (the live scheduler takes over from there). A job with no recorded fire is
    new and does not back-fill — except a one-off `at:`, whose single time can only have
    been missed. A missed fire at most `grace` before `now` may run; several such coalesce
    into the newest; the rest are skipped (and recorded so by the caller).
    """
    if last_fire is None:
        if isinstance(trigger, DateTrigger) and _utc(trigger.run_date) <= _utc(started):
            return triage([trigger.run_date], now=now, grace=grace)
        return CatchUp(run=None, skipped=[])
    cutoff = _utc(now) - grace  # a fire at or after the cutoff is within grace
    late = [
        f
        for f in fires_between(trigger, last_fire, min(_utc(started), cutoff), limit=MAX_LISTED_MISSES)
        if _utc(f) < cutoff
    ]
    truncated = len(late) == MAX_LISTED_MISSES
    in_grace = fires_between(trigger, max(_utc(last_fire), cutoff - _TICK), started)
    return triage(late + in_grace, now=now, grace=grace, truncated=truncated)


def triage(fires: list[datetime], *, now: datetime, grace: timedelta, truncated: bool = False) -> CatchUp:
    """Split due fires (oldest first) into the one to run and those to skip."""
    runnable = [f for f in fires if _utc(now) - _utc(f) <= grace]
    run = runnable[-1] if runnable else None
    return CatchUp(run=run, skipped=[f for f in fires if f != run], truncated=truncated)


def without(plan: CatchUp, pending: set[datetime]) -> CatchUp:
    """``plan`` minus the fires in ``pending`` (UTC): fires this process already tries again
    on its own are neither run a second time by a catch-up nor recorded as skipped by it."""
    run = plan.run if plan.run is not None and _utc(plan.run) not in pending else None
    return CatchUp(run=run, skipped=[f for f in plan.skipped if _utc(f) not in pending], truncated=plan.truncated)


def each_within_grace(plan: CatchUp, *, now: datetime, grace: timedelta) -> tuple[list[datetime], CatchUp]:
    """The catch-up when the store is back: every missed fire still within ``grace`` runs
    (oldest first), not only the newest — they were missed for want of a store, not of a
    process, and a replica may still be trying one of them; only those beyond grace are
    skipped (their own retries have given up by then too)."""
    fires = sorted([*plan.skipped, *([plan.run] if plan.run is not None else [])], key=_utc)
    runnable = [f for f in fires if _utc(now) - _utc(f) <= grace]
    return runnable, CatchUp(run=None, skipped=[f for f in fires if f not in runnable], truncated=plan.truncated)


# A fire whose store call failed is tried again after 1, 2, 4 … seconds, at most 30 apart
# (sooner when the store is seen back), for as long as its misfire grace lasts.
FIRE_RETRY_FIRST = timedelta(seconds=1)
RETRY = "retry"  # the trigger a fire's retry runs under (job_runs.trigger); its claim may be ours already
FIRE_RETRY_MAX = timedelta(seconds=30)


def fire_retry_delay(fire_time: datetime, *, attempt: int, now: datetime, grace: timedelta) -> timedelta | None:
    """How long to wait before try ``attempt`` (0 for the first retry) of a fire the store
    failed; None once the fire is beyond its grace (it would not run at a start either)."""
    deadline = _utc(fire_time) + grace
    if _utc(now) >= deadline:
        return None
    backoff: timedelta = FIRE_RETRY_FIRST * (2 ** min(attempt, 16))  # a bounded exponent: no overflow
    return min(backoff, FIRE_RETRY_MAX, deadline - _utc(now))


# -- `postroom jobs` ----------------------------------------------------------------------
@dataclass(frozen=True)
class JobOverview:
    name: str
    schedule: str  # as the user wrote it: "cron 0 8 * * mon-fri", "every 15m", "at 2027-..."
    timezone: str
    enabled: bool
    next_fire: datetime | None  # aware, in the job's zone; None if disabled or in the past


def jobs_overview(config: Config, *, now: datetime) -> list[JobOverview]:
    rows = []
    for name, job in config.jobs.items():
        zone = config.job_timezone(job)
        fire = next_fire(make_trigger(job.schedule, config.timezone), now, now) if job.enabled else None
        rows.append(
            JobOverview(
                name=name,
                schedule=schedule_text(job),
                timezone=zone,
                enabled=job.enabled,
                next_fire=fire.astimezone(ZoneInfo(zone)) if fire else None,
            )
        )
    return rows


def schedule_text(job: JobConfig) -> str:
    s = job.schedule
    if s.cron is not None:
        return f"cron {s.cron}"
    if s.every is not None:
        return f"every {format_duration(s.every)}"
    return f"at {s.at.isoformat() if s.at else '?'}"


def format_duration(value: timedelta) -> str:
    """15m, 1h, 90s, 1d: the largest unit that divides it exactly."""
    micros = value // _TICK
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if micros % (size * 1_000_000) == 0:
            return f"{micros // (size * 1_000_000)}{unit}"
    return f"{value.total_seconds()}s"
