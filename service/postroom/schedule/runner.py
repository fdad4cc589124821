"""Config jobs -> APScheduler 3.11 (memory job store, built from config on every start).

APScheduler 3 must not share a job store between processes, so each replica schedules every
job itself and the fire is claimed in our store under (job id, fire time) by the `on_fire`
callback; the fire times come from `schedule.fires` and agree across replicas.

Fire claims are leases (store.runs): `take_over_lapsed` looks every third of a lease for a
fire whose claimer stopped renewing it (killed or stalled mid-fire) and runs it here.

Time is the database's (clock_check): the scheduler's clock is ours corrected by the measured
offset, and while the offset is beyond its bound this replica takes no fires at all.

APScheduler's own executors call the job function without telling it which fire it is
running, so `_FireExecutor` (an executor is APScheduler's extension point for "how a due job
is run") hands the scheduled run times to `Scheduler._due` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from apscheduler.executors.base import BaseExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger

from ..clock import utcnow
from ..clock_check import ClockCheck
from ..config.model import Config, JobConfig
from ..errors import StoreUnavailable
from ..retry import sleep_or_stop
from ..store.calls import store_call
from ..store.runs import RunStore
from .fires import (
    RETRY,
    CatchUp,
    JobOverview,
    each_within_grace,
    fire_retry_delay,
    jobs_overview,
    make_trigger,
    next_fire,
    plan_catch_up,
    triage,
    without,
)

log = structlog.get_logger(__name__)

FireCallback = Callable[[str, datetime, str], Awaitable[None]]  # (job id, fire time UTC, "schedule"|"catch-up")
# At most this many skipped fires per job are written to the store at start (the newest ones,
# so the job's last fire moves past all of them); the rest are only counted in the log.
MAX_RECORDED_SKIPS = 100

__all__ = ["FireCallback", "JobOverview", "Scheduler", "jobs_overview"]


class _FireExecutor(BaseExecutor):
    """Runs a due job as `on_due(job_id, run_times, grace)` on the scheduler's event loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_due: Callable[[str, list[datetime], timedelta], Coroutine[Any, Any, None]],
        track: Callable[[asyncio.Task[None]], None],
    ):
        super().__init__()
        self._loop = loop
        self._on_due = on_due
        self._track = track

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        grace = timedelta(seconds=job.misfire_grace_time or 0)
        task = self._loop.create_task(self._on_due(job.id, list(run_times), grace))
        self._track(task)
        task.add_done_callback(lambda t: self._finished(job.id, t))

    def _finished(self, job_id: str, task: asyncio.Task[None]) -> None:
        # Frees the max_instances slot; `_due` logs its own failures, so this is only a backstop.
        if task.cancelled() or task.exception() is None:
            self._run_job_success(job_id, [])
        else:
            exc = task.exception()
            self._run_job_error(job_id, exc, exc.__traceback__ if exc else None)


class Scheduler:
    def __init__(
        self,
        config: Config,
        runs: RunStore,
        on_fire: FireCallback,
        *,
        clock: Callable[[], datetime] = utcnow,
        clock_check: ClockCheck | None = None,
        shutdown_timeout: float = 30.0,
    ):
        self._config = config
        self._runs = runs
        self._on_fire = on_fire
        # With a clock check, time is the database's as best measured, and no fire is taken
        # while the two disagree beyond the bound.
        self._clock = clock_check.now if clock_check is not None else clock
        self._agrees: Callable[[], bool] = clock_check.agrees if clock_check is not None else lambda: True
        self._resuming: set[tuple[str, datetime]] = set()  # lapsed fires being taken over here
        self._shutdown_timeout = shutdown_timeout
        self._aps: AsyncIOScheduler | None = None
        self._scheduled: dict[str, tuple[str, BaseTrigger]] = {}  # job id -> (fingerprint, trigger)
        self._tasks: set[asyncio.Task[None]] = set()
        # Fires waiting for the store to come back: (job id, fire time UTC) -> their task.
        self._retries: dict[tuple[str, datetime], asyncio.Task[None]] = {}
        self._store_back = asyncio.Event()  # replaced each time it is set: wakes the waiting

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._aps = AsyncIOScheduler(
            event_loop=loop,
            timezone=ZoneInfo(self._config.timezone),
            jobstores={"default": MemoryJobStore()},
            executors={"default": _FireExecutor(loop, self._due, self._track)},
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": int(timedelta(hours=1).total_seconds()),
            },
        )
        started = self._clock()
        agrees = self._agrees()
        if not agrees:  # our clock could mark due fires missed (fast) or miss some (slow)
            log.warning("catch-up waits until this replica's clock agrees with the database's")
        for job_id, job in self._enabled_jobs(self._config).items():
            trigger = make_trigger(job.schedule, self._config.timezone)
            if agrees:
                await self._catch_up(job_id, job, trigger, started)
            self._schedule(job_id, job, trigger, after=started)
        self._aps.start()
        log.info("scheduler started", jobs=sorted(self._scheduled))

    async def shutdown(self) -> None:
        """Take no new fires; give running ones `shutdown_timeout` seconds, then cancel them."""
        if self._aps is not None and self._aps.running:
            self._aps.shutdown(wait=False)
        # A fire waiting for the store runs nothing now: no need to wait for it. Its claim is
        # not taken (another replica, or the next start's catch-up, runs it) or left
        # `running` by a try that lost the store (taken over once stale, at a start).
        for task in list(self._retries.values()):
            task.cancel()
        pending = {t for t in self._tasks if not t.done()}
        if pending:
            _, late = await asyncio.wait(pending, timeout=self._shutdown_timeout)
            for task in late:
                task.cancel()
            if late:
                log.warning("scheduler shutdown cancelled running fires", count=len(late))
                await asyncio.gather(*late, return_exceptions=True)

    def replace(self, config: Config) -> None:
        """Apply a reloaded config: add new jobs, reschedule changed ones, drop removed ones.

        A job whose schedule did not change keeps its place. Changed and new jobs start from
        their next fire after now; they do not back-fill. The callback should read the job's
        other settings (template, recipients) from the current config at fire time.
        """
        old = self._config
        self._config = config
        if self._aps is None:
            return
        now = self._clock()
        wanted = self._enabled_jobs(config)
        for job_id in list(self._scheduled):
            if job_id not in wanted or self._fingerprint(config, wanted[job_id]) != self._scheduled[job_id][0]:
                self._unschedule(job_id)
        for job_id, job in wanted.items():
            if job_id not in self._scheduled:
                self._schedule(job_id, job, make_trigger(job.schedule, config.timezone), after=now)
        log.info(
            "scheduler reloaded",
            jobs=sorted(self._scheduled),
            removed=sorted(set(self._enabled_jobs(old)) - set(wanted)),
        )

    async def store_back(self) -> None:
        """The store answers again after an outage: fires waiting for it are tried now, and
        the catch-up a start does runs again for fires no attempt of ours is waiting on (a
        fire whose first try never got as far as a claim)."""
        woken, self._store_back = self._store_back, asyncio.Event()
        woken.set()
        await self._catch_up_all("the store was unavailable")

    async def clock_back(self) -> None:
        """This replica's clock agrees with the database's again: fires it left alone meanwhile
        that no other replica ran are caught up, within their grace."""
        await self._catch_up_all("this replica's clock disagreed with the database's")

    async def _catch_up_all(self, why: str) -> None:
        if self._aps is None or not self._agrees():
            return
        now = self._clock()
        for job_id, job in self._enabled_jobs(self._config).items():
            if job_id not in self._scheduled:
                continue
            try:
                await self._catch_up(job_id, job, self._scheduled[job_id][1], now, away=why)
            except StoreUnavailable as exc:  # gone again: its next return tries once more
                log.warning("catch-up failed: the store is unavailable", job=job_id, error=str(exc))
                return

    async def take_over_lapsed(self, stop: asyncio.Event, every: float) -> None:
        """Every ``every`` seconds (from now), run the fires whose claim's lease lapsed — a
        replica died or stalled mid-fire, or a process before this one did — at any time, not
        only at a start. A store outage or a disagreeing clock is a pause, not an end."""
        while not stop.is_set():
            if self._agrees():
                try:
                    lapsed = await store_call(self._runs.unfinished_fires, now=self._clock())
                except StoreUnavailable as exc:
                    log.warning("lapsed fires not looked for: the store is unavailable", error=str(exc))
                    lapsed = []
                for job_id, fire_time in lapsed:
                    self._take_over(job_id, fire_time)
            await sleep_or_stop(stop, every)

    def _take_over(self, job_id: str, fire_time: datetime) -> None:
        job = self._enabled_jobs(self._config).get(job_id)
        key = (job_id, fire_time)
        if job is None or key in self._resuming or key in self._retries:
            return
        log.info("taking over a fire whose lease lapsed", job=job_id, fire_time=fire_time.isoformat())
        self._resuming.add(key)
        task = asyncio.get_running_loop().create_task(self._fire(job_id, fire_time, "resume", job.misfire_grace))
        task.add_done_callback(lambda _t: self._resuming.discard(key))
        self._track(task)

    @property
    def running(self) -> bool:
        return self._aps is not None and self._aps.running

    def next_fires(self) -> dict[str, datetime | None]:
        """Each enabled job's next fire time (None: nothing left to fire, e.g. a past `at`)."""
        now = self._clock()
        out: dict[str, datetime | None] = {}
        for job_id, job in self._enabled_jobs(self._config).items():
            aps_job = self._aps.get_job(job_id) if self._aps is not None else None
            if aps_job is not None:
                out[job_id] = aps_job.next_run_time
            elif self._aps is None:
                out[job_id] = next_fire(make_trigger(job.schedule, self._config.timezone), now, now)
            else:
                out[job_id] = None
        return out

    # -- internals ------------------------------------------------------------------------
    @staticmethod
    def _enabled_jobs(config: Config) -> dict[str, JobConfig]:
        return {job_id: job for job_id, job in config.jobs.items() if job.enabled}

    @staticmethod
    def _fingerprint(config: Config, job: JobConfig) -> str:
        return f"{job.schedule.model_dump_json()}|{config.job_timezone(job)}|{job.misfire_grace}"

    def _schedule(self, job_id: str, job: JobConfig, trigger: BaseTrigger, *, after: datetime) -> None:
        if self._aps is None:
            return
        # The first fire is computed from `after` (not from whenever APScheduler adds the job)
        # so no fire falls between the catch-up plan and the live schedule.
        first = next_fire(trigger, after, after)
        self._scheduled[job_id] = (self._fingerprint(self._config, job), trigger)
        if first is None:
            return  # a one-off `at` in the past: nothing to schedule
        self._aps.add_job(
            _never_called,
            trigger=trigger,
            id=job_id,
            name=job_id,
            next_run_time=first,
            misfire_grace_time=max(int(job.misfire_grace.total_seconds()), 1),
            coalesce=True,
            max_instances=1,
            replace_existing=True,
        )

    def _unschedule(self, job_id: str) -> None:
        self._scheduled.pop(job_id, None)
        if self._aps is not None and self._aps.get_job(job_id) is not None:
            self._aps.remove_job(job_id)

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _catch_up(
        self, job_id: str, job: JobConfig, trigger: BaseTrigger, started: datetime, *, away: str | None = None
    ) -> None:
        last = await store_call(self._runs.last_fire, job_id)
        plan = plan_catch_up(trigger, last_fire=last, started=started, now=started, grace=job.misfire_grace)
        plan = without(plan, {fire for waiting, fire in self._retries if waiting == job_id})
        runs = [plan.run] if plan.run is not None else []
        if away is not None:
            runs, plan = each_within_grace(plan, now=started, grace=job.misfire_grace)
        why = away or "postroom was down"
        await self._record_skips(job_id, plan, now=started, reason=f"missed while {why}")
        for fire in runs:
            log.info(
                "missed run caught up",
                job=job_id,
                fire_time=_utc(fire).isoformat(),
                late_s=round((_utc(started) - _utc(fire)).total_seconds()),
            )
            self._track(asyncio.get_running_loop().create_task(self._fire(job_id, fire, "catch-up", job.misfire_grace)))

    async def _due(self, job_id: str, run_times: list[datetime], grace: timedelta) -> None:
        """A live fire (run_times: one, or several APScheduler coalesced)."""
        if not self._agrees():
            log.warning(
                "fire left to the other replicas: this replica's clock disagrees with the database's",
                job=job_id,
                fire_times=[_utc(t).isoformat() for t in run_times],
            )
            return
        # APScheduler times fires by our clock; a little fast (within the bound) means a
        # little early by the database's: wait for the fire's time by the database's clock.
        early = (_utc(max(run_times)) - _utc(self._clock())).total_seconds()
        if early > 0:
            await asyncio.sleep(early)
        now = self._clock()
        plan = triage(run_times, now=now, grace=grace)
        try:
            await self._record_skips(job_id, plan, now=now, reason="fired too late (process busy or suspended)")
        except StoreUnavailable as exc:  # the fire to run matters more than the note of those skipped
            log.warning("skipped fires not recorded: the store is unavailable", job=job_id, error=str(exc))
        if plan.run is not None:
            await self._fire(job_id, plan.run, "schedule", grace)

    async def _fire(self, job_id: str, fire_time: datetime, trigger: str, grace: timedelta) -> None:
        """One try now; if the store failed it, the fire waits for the store in a task of its
        own (so the job's next fires are not held up) until its grace runs out. Trying again
        is safe: the fire's claim in the store lets one attempt of one replica run it."""
        fire_time = _utc(fire_time)
        if await self._attempt(job_id, fire_time, trigger) or (job_id, fire_time) in self._retries:
            return
        task = asyncio.get_running_loop().create_task(self._retry(job_id, fire_time, grace))
        self._retries[(job_id, fire_time)] = task
        task.add_done_callback(lambda _t: self._retries.pop((job_id, fire_time), None))
        self._track(task)

    async def _attempt(self, job_id: str, fire_time: datetime, trigger: str) -> bool:
        """True when the fire is done with (run, or failed for a reason a retry won't fix)."""
        try:
            await self._on_fire(job_id, fire_time, trigger)
        except asyncio.CancelledError:
            raise
        except StoreUnavailable as exc:
            log.warning(
                "job fire waits for the store",
                job=job_id,
                fire_time=fire_time.isoformat(),
                trigger=trigger,
                error=str(exc),
            )
            return False
        except Exception:
            log.exception("job fire failed", job=job_id, fire_time=fire_time.isoformat(), trigger=trigger)
        return True

    async def _retry(self, job_id: str, fire_time: datetime, grace: timedelta) -> None:
        attempt = 0
        while (delay := fire_retry_delay(fire_time, attempt=attempt, now=self._clock(), grace=grace)) is not None:
            back = self._store_back
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(back.wait(), delay.total_seconds())
            if await self._attempt(job_id, fire_time, RETRY):
                return
            attempt += 1
        log.error(
            "job fire not run: the store was unavailable for all of its misfire grace",
            job=job_id,
            fire_time=fire_time.isoformat(),
            grace_s=grace.total_seconds(),
        )

    async def _record_skips(self, job_id: str, plan: CatchUp, *, now: datetime, reason: str) -> None:
        skipped = plan.skipped
        if len(skipped) > MAX_RECORDED_SKIPS or plan.truncated:
            log.warning(
                "missed runs skipped",
                job=job_id,
                count=len(skipped),
                more=plan.truncated,
                first=_utc(skipped[0]).isoformat(),
                last=_utc(skipped[-1]).isoformat(),
                reason=reason,
            )
            skipped = skipped[-MAX_RECORDED_SKIPS:]
            quiet = True
        else:
            quiet = False
        if plan.run is not None:
            reason = f"{reason}; the newer fire {_utc(plan.run).isoformat()} runs instead"
        for fire in skipped:
            recorded = await store_call(self._runs.record_skip, job_id, _utc(fire), now=now, detail=reason)
            if recorded and not quiet:
                log.warning(
                    "missed run skipped",
                    job=job_id,
                    fire_time=_utc(fire).isoformat(),
                    late_s=round((_utc(now) - _utc(fire)).total_seconds()),
                    reason=reason,
                )


def _never_called() -> None:
    """APScheduler wants a callable per job; `_FireExecutor` runs `Scheduler._due` instead."""


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)
