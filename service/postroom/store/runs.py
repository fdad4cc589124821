"""Fire claims and job runs.

A fire is claimed by inserting its (job_id, fire_time) row; the primary key makes exactly one
replica (or one restart) win it. A claim is a lease like a watch's or a message's: its holder
renews ``claimed_at`` while it runs the fire (``renew_fire``), and a claim still `running`
whose renewal is older than ``lease`` belonged to a process that died or stalled. Any
replica takes it over (``claim_fire``); re-running it is safe because the outbox dedups on
(job, fire, row), and the taken-over holder's run is closed `failed` so none stays `running`.

On PostgreSQL every claim time is the database's ``now()`` (``dbtime``): a replica whose
clock runs fast cannot see a live holder's claim as lapsed, nor claim a fire not yet due.

A run is `done` once its messages are queued; what became of them is read from the outbox
rows it made (``outbox.run_id``) each time runs are listed (``RunOutcome``), so a run whose
every message died reads `failed` without the sender writing to the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Text, and_, cast, false, func, insert, or_, select, true, update
from sqlalchemy.exc import IntegrityError

from .calls import StoreCalls
from .dbtime import db_earlier, db_now, shared_clock
from .engine import as_utc, to_utc
from .tables import fire_claims, job_runs, outbox

_RELEASED = datetime(2000, 1, 1, tzinfo=UTC)  # a claim time older than any lease
FIRE_LEASE = timedelta(minutes=10)  # when no lease is given (a store opened by the CLI)
# A fire is not claimed more than this ahead of its time by the database's clock: a replica
# whose clock runs fast waits (scheduler), and this is the store's own refusal if it did not.
EARLY_TOLERANCE = timedelta(seconds=2)


# An outbox row's status -> what a run's outcome counts it as (a queued row tried before is
# "deferred"; see _outcome_kind).
_OUTCOME_KINDS = {
    "queued": "queued",
    "sending": "queued",
    "held": "held",
    "sent": "sent",
    "bounced": "sent",
    "dead": "dead",
    "discarded": "dead",
}


@dataclass(frozen=True)
class RunOutcome:
    """What became of a run's messages: rows by state, and recipients refused for good."""

    queued: int = 0
    deferred: int = 0
    held: int = 0
    sent: int = 0
    dead: int = 0
    refused: int = 0  # recipients (not messages) the server refused at RCPT

    @property
    def total(self) -> int:
        return self.queued + self.deferred + self.held + self.sent + self.dead

    def describe(self) -> str:
        """ "sent 3, dead 1, refused 2": the non-zero counts, in a fixed order."""
        parts = [(k, getattr(self, k)) for k in ("queued", "deferred", "held", "sent", "dead", "refused")]
        return ", ".join(f"{k} {n}" for k, n in parts if n)


@dataclass(frozen=True)
class RunRecord:
    job_id: str
    fire_time: datetime | None
    trigger: str
    started_at: datetime
    finished_at: datetime | None
    status: str  # as written when the run ended (running | done | failed | skipped)
    messages: int
    error: str | None
    id: int = 0
    outcome: RunOutcome = field(default_factory=RunOutcome)

    @property
    def state(self) -> str:
        """The run's outcome as a person reads it: `failed` too when it queued messages and
        every one of them died (nothing went out), not `done`."""
        o = self.outcome
        if self.status == "done" and o.total and o.dead == o.total:
            return "failed"
        return self.status

    @property
    def why(self) -> str | None:
        """The run's error, or for one failed by its messages, what became of them."""
        if self.error:
            return self.error
        if self.state == "failed":
            return f"every message died ({self.outcome.describe()}); see `postroom outbox --dead`"
        return None


class RunStore:
    def __init__(self, engine: Engine, *, owner: str, calls: StoreCalls, lease: timedelta = FIRE_LEASE):
        self.engine = engine
        self.calls = calls  # the store's threads: store_call runs this part's methods there
        self.owner = owner
        self.lease = lease  # a claim not renewed for this long is taken over

    def claim_fire(self, job_id: str, fire_time: datetime, *, now: datetime, again: bool = False) -> bool:
        """True if this process now owns the fire; False if another has or had it, or (on
        PostgreSQL) the fire is not due yet by the database's clock.

        A claim still `running` whose lease lapsed belonged to a process that died; it is
        taken over (its messages are deduplicated in the outbox) and that process's run is
        closed. ``again``: this process tries again a fire whose earlier try lost the store; a
        claim still `running` under our own name is that try's (it lost the store mid-run, or
        never heard its claim committed).
        """
        fire_time = to_utc(fire_time)
        try:
            with self.engine.begin() as conn:
                if (
                    shared_clock(conn)
                    and fire_time > to_utc(conn.execute(select(func.now())).scalar_one()) + EARLY_TOLERANCE
                ):
                    return False
                conn.execute(
                    insert(fire_claims).values(
                        job_id=job_id,
                        fire_time=fire_time,
                        claimed_by=self.owner,
                        claimed_at=db_now(conn, now),
                        status="running",
                    )
                )
            return True
        except IntegrityError:
            pass
        with self.engine.begin() as conn:
            taken = conn.execute(
                update(fire_claims)
                .where(
                    fire_claims.c.job_id == job_id,
                    fire_claims.c.fire_time == fire_time,
                    fire_claims.c.status == "running",
                    or_(
                        fire_claims.c.claimed_at < db_earlier(conn, now, self.lease),
                        and_(fire_claims.c.claimed_by == self.owner, true() if again else false()),
                    ),
                )
                .values(claimed_by=self.owner, claimed_at=db_now(conn, now))
            )
            if taken.rowcount != 1:
                return False
            # The run of the try we take over (a dead replica's, or our own that lost the
            # store) ends here: a run is never left `running` without a live claim.
            conn.execute(
                update(job_runs)
                .where(job_runs.c.job_id == job_id, job_runs.c.fire_time == fire_time, job_runs.c.status == "running")
                .values(
                    status="failed",
                    finished_at=now,
                    error=f"taken over by {self.owner}: this try lost its claim (died, stalled or lost the store)",
                )
            )
            return True

    def renew_fire(self, job_id: str, fire_time: datetime, *, now: datetime) -> bool:
        """Keep our claim on a running fire. False: it is no longer ours (we stalled past the
        lease and another replica took it over)."""
        fire_time = to_utc(fire_time)
        with self.engine.begin() as conn:
            renewed = conn.execute(
                update(fire_claims)
                .where(
                    fire_claims.c.job_id == job_id,
                    fire_claims.c.fire_time == fire_time,
                    fire_claims.c.status == "running",
                    fire_claims.c.claimed_by == self.owner,
                )
                .values(claimed_at=db_now(conn, now))
            )
            return renewed.rowcount == 1

    def stored_messages(self, key_prefix: str) -> int:
        """How many of a fire's messages are in the outbox. A fire's messages are stored in
        one transaction, so any means all: a fire resumed after its claimer died then only
        records what is there, without fetching and rendering again."""
        like = key_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + ":%"
        with self.engine.connect() as conn:
            return int(conn.scalar(select(func.count()).where(outbox.c.dedup_key.like(like, escape="\\"))) or 0)

    def release_running_fires(self) -> int:
        """Single-node recovery at start: a fire left `running` belongs to a process that is
        gone, so it can be claimed again at once instead of after ``stale_after`` (a kill -9 in
        the middle of building a merge would otherwise leave it unsent for ten minutes, and
        for good when nothing resumes it later). It stays `running` for ``unfinished_fires``."""
        with self.engine.begin() as conn:
            return conn.execute(
                update(fire_claims).where(fire_claims.c.status == "running").values(claimed_at=_RELEASED)
            ).rowcount

    def finish_fire(
        self, job_id: str, fire_time: datetime, *, now: datetime, status: str, detail: str | None = None
    ) -> None:
        fire_time = to_utc(fire_time)
        with self.engine.begin() as conn:
            conn.execute(
                update(fire_claims)
                .where(fire_claims.c.job_id == job_id, fire_claims.c.fire_time == fire_time)
                .values(status=status, finished_at=now, detail=detail)
            )

    def record_skip(self, job_id: str, fire_time: datetime, *, now: datetime, detail: str) -> bool:
        """Mark a fire skipped (missed beyond grace). False if someone already had it."""
        fire_time = to_utc(fire_time)
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(fire_claims).values(
                        job_id=job_id,
                        fire_time=fire_time,
                        claimed_by=self.owner,
                        claimed_at=now,
                        status="skipped",
                        finished_at=now,
                        detail=detail,
                    )
                )
            return True
        except IntegrityError:
            return False

    def last_fire(self, job_id: str) -> datetime | None:
        """The newest fire time any process claimed or skipped for this job."""
        with self.engine.connect() as conn:
            last: datetime | None = conn.scalar(
                select(func.max(fire_claims.c.fire_time)).where(fire_claims.c.job_id == job_id)
            )
        return as_utc(last)

    def unfinished_fires(self, *, now: datetime) -> list[tuple[str, datetime]]:
        """Fires left `running` whose lease lapsed (their process died or stalled), oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(fire_claims.c.job_id, fire_claims.c.fire_time)
                .where(
                    and_(
                        fire_claims.c.status == "running", fire_claims.c.claimed_at < db_earlier(conn, now, self.lease)
                    )
                )
                .order_by(fire_claims.c.fire_time)
            )
            return [(j, as_utc(t)) for j, t in rows]

    # -- runs ------------------------------------------------------------------------------
    def start_run(self, job_id: str, *, fire_time: datetime | None, trigger: str, now: datetime) -> int:
        fire_time = to_utc(fire_time) if fire_time else None
        with self.engine.begin() as conn:
            result = conn.execute(
                insert(job_runs).values(
                    job_id=job_id,
                    fire_time=fire_time,
                    trigger=trigger,
                    started_at=now,
                    status="running",
                    messages=0,
                )
            )
            key = result.inserted_primary_key
            if key is None:  # every dialect we support returns the new id
                raise RuntimeError("the store did not return the new run's id")
            return int(key[0])

    def finish_run(
        self, run_id: int, *, now: datetime, status: str, messages: int = 0, error: str | None = None
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(job_runs)
                .where(job_runs.c.id == run_id)
                .values(
                    finished_at=now,
                    status=status,
                    messages=messages,
                    error=error,
                )
            )

    def recent_runs(self, *, limit: int = 50) -> list[RunRecord]:
        """The newest runs of every job, newest first, each with its outcome."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(job_runs).order_by(job_runs.c.id.desc()).limit(limit))
            return _with_outcomes(conn, [_record(r) for r in rows])

    def last_runs(self) -> dict[str, RunRecord]:
        """The newest run of each job, with its outcome."""
        newest = select(job_runs.c.job_id, func.max(job_runs.c.id).label("id")).group_by(job_runs.c.job_id).subquery()
        with self.engine.connect() as conn:
            rows = conn.execute(select(job_runs).join(newest, job_runs.c.id == newest.c.id))
            return {r.job_id: r for r in _with_outcomes(conn, [_record(r) for r in rows])}


def _with_outcomes(conn: Any, records: Sequence[RunRecord]) -> list[RunRecord]:
    """The records with what became of their messages: one grouped count over the outbox,
    and the refused maps of only those rows that have refusals."""
    ids = [r.id for r in records if r.messages]
    if not ids:
        return list(records)
    counts: dict[int, dict[str, int]] = {}
    tried = (outbox.c.attempts > 0).label("tried")
    for run_id, status, was_tried, n in conn.execute(
        select(outbox.c.run_id, outbox.c.status, tried, func.count())
        .where(outbox.c.run_id.in_(ids))
        .group_by(outbox.c.run_id, outbox.c.status, tried)
    ):
        kind = _OUTCOME_KINDS.get(status, "queued")
        if kind == "queued" and status == "queued" and was_tried:
            kind = "deferred"
        tally = counts.setdefault(run_id, {})
        tally[kind] = tally.get(kind, 0) + n
    for run_id, refused in conn.execute(
        select(outbox.c.run_id, outbox.c.refused).where(
            outbox.c.run_id.in_(ids), cast(outbox.c.refused, Text).not_in(["{}", "null"])
        )
    ):
        tally = counts.setdefault(run_id, {})
        tally["refused"] = tally.get("refused", 0) + len(refused or {})
    return [replace(r, outcome=RunOutcome(**counts[r.id])) if r.id in counts else r for r in records]


def _record(row: Any) -> RunRecord:
    m = row._mapping
    return RunRecord(
        id=m["id"],
        job_id=m["job_id"],
        fire_time=as_utc(m["fire_time"]),
        trigger=m["trigger"],
        started_at=as_utc(m["started_at"]),
        finished_at=as_utc(m["finished_at"]),
        status=m["status"],
        messages=m["messages"],
        error=m["error"],
    )
