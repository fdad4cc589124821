"""Schedule maths (pure, `now` passed in) and one real AsyncIOScheduler run."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from postroom.config.model import Config, ScheduleConfig
from postroom.errors import StoreUnavailable
from postroom.schedule.fires import (
    CatchUp,
    each_within_grace,
    fire_retry_delay,
    fires_between,
    jobs_overview,
    make_trigger,
    next_fire,
    plan_catch_up,
    without,
)
from postroom.schedule.runner import Scheduler
from postroom.store import Store

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def trigger(tz: str = "UTC", **schedule):
    return make_trigger(ScheduleConfig(**schedule), tz)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- DST ------------------------------------------------------------------------------------
DST_DAYS = [
    ("Europe/Berlin", datetime(2026, 3, 29)),  # spring forward: 02:00-03:00 does not exist
    ("Europe/Berlin", datetime(2026, 10, 25)),  # fall back: 02:00-03:00 happens twice
    ("America/New_York", datetime(2026, 3, 8)),
    ("America/New_York", datetime(2026, 11, 1)),
]


@pytest.mark.parametrize("cron", ["30 2 * * *", "0 8 * * *", "30 1 * * *", "0 2 * * *"])
@pytest.mark.parametrize(("zone", "day"), DST_DAYS)
def test_daily_cron_fires_once_per_local_day_across_dst(zone, day, cron):
    tz = ZoneInfo(zone)
    t = trigger(zone, cron=cron)
    start = (day - timedelta(days=3)).replace(tzinfo=tz)
    fires = fires_between(t, start, start + timedelta(days=7))
    local_days = Counter(f.astimezone(tz).date() for f in fires)
    assert len(local_days) == 7 and set(local_days.values()) == {1}
    assert day.date() in local_days
    instants = [f.astimezone(UTC) for f in fires]
    assert instants == sorted(set(instants))


def test_nonexistent_local_time_runs_once_shifted_forward():
    fires = fires_between(
        trigger("Europe/Berlin", cron="30 2 * * *"),
        datetime(2026, 3, 28, 12, tzinfo=BERLIN),
        datetime(2026, 3, 30, 12, tzinfo=BERLIN),
    )
    assert [f.astimezone(UTC) for f in fires] == [utc(2026, 3, 29, 1, 30), utc(2026, 3, 30, 0, 30)]
    # 02:30 did not exist that night; the fire is the real 03:30 CEST, shown as such.
    assert fires[0].isoformat() == "2026-03-29T03:30:00+02:00"


def test_repeated_hour_fires_on_first_pass_only_even_when_started_inside_it():
    t = trigger("Europe/Berlin", cron="30 2 * * *")
    first_pass = utc(2026, 10, 25, 0, 30)  # 02:30 CEST
    assert next_fire(t, utc(2026, 10, 25, 0, 0), utc(2026, 10, 25, 0, 0)).astimezone(UTC) == first_pass
    # A process that starts between the two 02:30s must not fire the second one (02:30 CET).
    inside = utc(2026, 10, 25, 1, 0)
    assert next_fire(t, inside, inside).astimezone(UTC) == utc(2026, 10, 26, 1, 30)


def test_hourly_cron_keeps_elapsed_time_through_both_changes():
    t = trigger("Europe/Berlin", cron="*/30 * * * *")
    for day in (datetime(2026, 3, 29, tzinfo=BERLIN), datetime(2026, 10, 25, tzinfo=BERLIN)):
        fires = [f.astimezone(UTC) for f in fires_between(t, day - timedelta(hours=3), day + timedelta(days=1))]
        assert {b - a for a, b in itertools.pairwise(fires)} == {timedelta(minutes=30)}


# -- intervals and one-offs -------------------------------------------------------------------
def test_interval_is_anchored_not_started():
    t = trigger("UTC", every=timedelta(minutes=15))
    for now in (utc(2026, 5, 1, 10, 7, 13), utc(2026, 5, 1, 10, 14, 59, 999999)):
        assert next_fire(t, now, now).astimezone(UTC) == utc(2026, 5, 1, 10, 15)
    # two "replicas" starting at different moments agree on every fire
    a = fires_between(t, utc(2026, 5, 1, 9, 1), utc(2026, 5, 1, 12))
    b = fires_between(t, utc(2026, 5, 1, 9, 44, 30), utc(2026, 5, 1, 12))
    assert a[-len(b) :] == b and all(f.minute % 15 == 0 and f.second == 0 for f in a)


def test_interval_anchor_is_midnight_in_the_jobs_zone():
    t = trigger("Europe/Berlin", every=timedelta(days=1))
    fire = next_fire(t, utc(2026, 1, 10, 12), utc(2026, 1, 10, 12))
    assert fire.astimezone(BERLIN).isoformat() == "2026-01-11T00:00:00+01:00"
    odd = trigger("UTC", every=timedelta(seconds=7))
    since_2000 = next_fire(odd, utc(2026, 1, 1), utc(2026, 1, 1)) - datetime(2000, 1, 1, tzinfo=UTC)
    assert since_2000 % timedelta(seconds=7) == timedelta(0)


def test_at_naive_means_the_jobs_zone_and_fires_once():
    t = trigger("Europe/Berlin", at=datetime(2027, 1, 4, 9, 0))
    now = utc(2026, 12, 1)
    assert next_fire(t, now, now).astimezone(UTC) == utc(2027, 1, 4, 8, 0)
    assert fires_between(t, now, utc(2028, 1, 1)) == [datetime(2027, 1, 4, 9, 0, tzinfo=BERLIN)]
    assert next_fire(t, utc(2027, 1, 4, 8, 0), utc(2027, 1, 4, 8, 0)) is None


# -- catch-up -----------------------------------------------------------------------------------
HOURLY = dict(cron="0 * * * *")


def test_new_job_does_not_back_fill():
    plan = plan_catch_up(
        trigger(**HOURLY),
        last_fire=None,
        started=utc(2026, 5, 1, 12, 10),
        now=utc(2026, 5, 1, 12, 10),
        grace=timedelta(hours=1),
    )
    assert plan == CatchUp(run=None, skipped=[])


def test_missed_fire_within_grace_runs_once():
    now = utc(2026, 5, 1, 12, 10)
    plan = plan_catch_up(
        trigger(**HOURLY), last_fire=utc(2026, 5, 1, 11), started=now, now=now, grace=timedelta(hours=1)
    )
    assert plan.run == utc(2026, 5, 1, 12) and plan.skipped == []


def test_missed_fires_coalesce_into_newest_and_older_ones_are_skipped():
    now = utc(2026, 5, 1, 12, 10)
    plan = plan_catch_up(
        trigger(**HOURLY), last_fire=utc(2026, 5, 1, 8), started=now, now=now, grace=timedelta(hours=3)
    )
    assert plan.run == utc(2026, 5, 1, 12)
    assert plan.skipped == [utc(2026, 5, 1, h) for h in (9, 10, 11)]


def test_missed_fire_beyond_grace_is_skipped_not_run():
    now = utc(2026, 5, 1, 12, 50)
    plan = plan_catch_up(
        trigger(**HOURLY), last_fire=utc(2026, 5, 1, 9), started=now, now=now, grace=timedelta(minutes=30)
    )
    assert plan.run is None
    assert plan.skipped == [utc(2026, 5, 1, h) for h in (10, 11, 12)]


def test_grace_boundary_is_inclusive_and_nothing_missed_when_up_to_date():
    now = utc(2026, 5, 1, 12, 30)
    plan = plan_catch_up(
        trigger(**HOURLY), last_fire=utc(2026, 5, 1, 11), started=now, now=now, grace=timedelta(minutes=30)
    )
    assert plan.run == utc(2026, 5, 1, 12) and plan.skipped == []
    plan = plan_catch_up(
        trigger(**HOURLY), last_fire=utc(2026, 5, 1, 12), started=now, now=now, grace=timedelta(minutes=30)
    )
    assert plan == CatchUp(run=None, skipped=[])


def test_catch_up_of_a_long_outage_is_bounded():
    now = utc(2026, 5, 1, 12)
    plan = plan_catch_up(
        trigger(every=timedelta(seconds=1)),
        last_fire=now - timedelta(days=2),
        started=now,
        now=now,
        grace=timedelta(seconds=10),
    )
    assert plan.truncated and plan.run == now
    assert len(plan.skipped) == 10_000 + 10


# -- overview -------------------------------------------------------------------------------------
def config(jobs: dict, **top) -> Config:
    base = {"accounts": {"alice": {"address": "alice@example.test", "smtp": {"host": "127.0.0.1"}}}}
    job_defaults = {"account": "alice", "template": "t", "to": ["bob@example.test"]}
    return Config.model_validate({**base, **top, "jobs": {k: {**job_defaults, **v} for k, v in jobs.items()}})


def test_jobs_overview_shows_next_fire_in_the_jobs_zone():
    cfg = config(
        {
            "orders-report": {"schedule": {"cron": "0 8 * * mon-fri", "timezone": "Europe/Berlin"}},
            "poll": {"schedule": {"every": "15m"}},
            "off": {"schedule": {"every": "1h"}, "enabled": False},
        },
        timezone="UTC",
    )
    rows = {r.name: r for r in jobs_overview(cfg, now=utc(2026, 5, 1, 10, 7))}  # a Friday
    assert rows["orders-report"].schedule == "cron 0 8 * * mon-fri"
    assert rows["orders-report"].next_fire.isoformat() == "2026-05-04T08:00:00+02:00"
    assert rows["poll"].schedule == "every 15m" and rows["poll"].timezone == "UTC"
    assert rows["poll"].next_fire == utc(2026, 5, 1, 10, 15)
    assert rows["off"].next_fire is None and not rows["off"].enabled


# -- the real scheduler ---------------------------------------------------------------------------
async def test_scheduler_fires_aligned_times_and_replace_removes_the_job(store: Store):
    calls: list[tuple[str, datetime, str]] = []
    two = asyncio.Event()

    async def on_fire(job_id: str, fire_time: datetime, trig: str) -> None:
        calls.append((job_id, fire_time, trig))
        if len(calls) >= 2:
            two.set()

    cfg = config({"tick": {"schedule": {"every": "1s"}}})
    scheduler = Scheduler(cfg, store.runs, on_fire)
    await scheduler.start()
    try:
        assert set(scheduler.next_fires()) == {"tick"}
        await asyncio.wait_for(two.wait(), timeout=10)
        first, second = calls[0][1], calls[1][1]
        assert {c[0] for c in calls} == {"tick"} and {c[2] for c in calls} == {"schedule"}
        assert first.tzinfo is not None and first.utcoffset() == timedelta(0)
        assert first.microsecond == 0 and second - first == timedelta(seconds=1)

        scheduler.replace(config({}))
        assert scheduler.next_fires() == {}
        seen = len(calls)
        await asyncio.sleep(1.5)
        assert len(calls) == seen
    finally:
        await scheduler.shutdown()


async def test_scheduler_start_catches_up_and_records_skips(store: Store):
    # Near the real time: APScheduler's live part runs on the real clock, and the next
    # scheduled fire (the next full hour) must stay ahead of it during the test.
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    now = hour + timedelta(minutes=10)
    store.runs.claim_fire("hourly", hour - timedelta(hours=4), now=hour - timedelta(hours=4))
    store.runs.claim_fire("fresh", hour, now=hour)  # already up to date
    calls: list[tuple[str, datetime, str]] = []
    done = asyncio.Event()

    async def on_fire(job_id: str, fire_time: datetime, trig: str) -> None:
        calls.append((job_id, fire_time, trig))
        done.set()

    cfg = config(
        {
            "hourly": {"schedule": {"cron": "0 * * * *"}, "misfire_grace": "30m"},
            "fresh": {"schedule": {"cron": "0 * * * *"}},
            "brand-new": {"schedule": {"cron": "0 * * * *"}},
        }
    )
    scheduler = Scheduler(cfg, store.runs, on_fire, clock=lambda: now)
    await scheduler.start()
    try:
        await asyncio.wait_for(done.wait(), timeout=10)
        assert calls == [("hourly", hour, "catch-up")]
        # the older misses were written down as skipped: nobody may run them later
        for back in (3, 2, 1):
            assert not store.runs.record_skip("hourly", hour - timedelta(hours=back), now=now, detail="again")
        assert store.runs.last_fire("brand-new") is None
        assert scheduler.next_fires()["hourly"].astimezone(UTC) == hour + timedelta(hours=1)
    finally:
        await scheduler.shutdown()


def test_one_off_missed_while_down_runs_within_grace_and_is_skipped_beyond():
    at = trigger(at=datetime(2026, 11, 26, 9, 0))
    started = utc(2026, 11, 26, 9, 30)
    within = plan_catch_up(at, last_fire=None, started=started, now=started, grace=timedelta(hours=1))
    assert within == CatchUp(run=utc(2026, 11, 26, 9, 0), skipped=[])
    late = utc(2026, 11, 26, 11, 0)
    beyond = plan_catch_up(at, last_fire=None, started=late, now=late, grace=timedelta(hours=1))
    assert beyond == CatchUp(run=None, skipped=[utc(2026, 11, 26, 9, 0)])
    # a cron job that never ran still does not back-fill
    cron = trigger(cron="0 9 * * *")
    assert plan_catch_up(cron, last_fire=None, started=started, now=started, grace=timedelta(hours=1)) == CatchUp(
        run=None, skipped=[]
    )


# -- fires the store failed -------------------------------------------------------------------
def test_a_fire_the_store_failed_is_retried_with_backoff_until_its_grace_ends():
    fire, grace = utc(2026, 11, 29, 8, 0), timedelta(minutes=2)
    delays = [fire_retry_delay(fire, attempt=n, now=fire + timedelta(seconds=1), grace=grace) for n in range(7)]
    assert delays == [timedelta(seconds=s) for s in (1, 2, 4, 8, 16, 30, 30)]
    assert fire_retry_delay(fire, attempt=3, now=fire + timedelta(seconds=115), grace=grace) == timedelta(seconds=5)
    assert fire_retry_delay(fire, attempt=0, now=fire + grace, grace=grace) is None
    assert fire_retry_delay(fire, attempt=10**6, now=fire, grace=grace) == timedelta(seconds=30)


def test_a_catch_up_leaves_the_fires_already_waiting_for_the_store_alone():
    t = trigger(every="5m")
    plan = plan_catch_up(
        t,
        last_fire=utc(2026, 11, 29, 8, 0),
        started=utc(2026, 11, 29, 8, 20),
        now=utc(2026, 11, 29, 8, 20),
        grace=timedelta(hours=1),
    )
    assert plan.run == utc(2026, 11, 29, 8, 20) and len(plan.skipped) == 3
    left = without(plan, {utc(2026, 11, 29, 8, 20), utc(2026, 11, 29, 8, 10)})
    assert left.run is None and left.skipped == [utc(2026, 11, 29, 8, 5), utc(2026, 11, 29, 8, 15)]


async def test_fires_the_store_failed_run_once_each_when_it_is_back(store: Store):
    """The real scheduler, every 1s, while the store is unavailable: each failed fire waits,
    the next fires are not held up, and on the store's return every one of them runs."""
    down = True
    tried: Counter[datetime] = Counter()
    ran: list[datetime] = []

    async def on_fire(job_id: str, fire_time: datetime, trig: str) -> None:
        tried[fire_time] += 1
        if down:
            raise StoreUnavailable("store: connection refused")
        ran.append(fire_time)

    scheduler = Scheduler(config({"tick": {"schedule": {"every": "1s"}}}), store.runs, on_fire)
    await scheduler.start()
    try:
        for _ in range(100):  # three fires failed, each with a retry of its own waiting
            await asyncio.sleep(0.05)
            if len(tried) >= 3:
                break
        failed = sorted(tried)[:3]
        down = False
        await scheduler.store_back()
        for _ in range(100):
            await asyncio.sleep(0.05)
            if set(failed) <= set(ran):
                break
        assert set(failed) <= set(ran)
        assert len(ran) == len(set(ran))
    finally:
        await scheduler.shutdown()


def test_when_the_store_is_back_every_missed_fire_within_grace_runs_not_only_the_newest():
    t = trigger(every="5m")
    now = utc(2026, 11, 29, 8, 20)
    plan = plan_catch_up(t, last_fire=utc(2026, 11, 29, 7, 0), started=now, now=now, grace=timedelta(minutes=12))
    runs, rest = each_within_grace(plan, now=now, grace=timedelta(minutes=12))
    assert runs == [utc(2026, 11, 29, 8, 10), utc(2026, 11, 29, 8, 15), utc(2026, 11, 29, 8, 20)]
    assert rest.run is None and rest.skipped[0] == utc(2026, 11, 29, 7, 5)
    assert rest.skipped[-1] == utc(2026, 11, 29, 8, 5) and len(rest.skipped) == 13
