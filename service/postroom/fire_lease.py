"""Keeping a fire's claim alive while it runs (store.runs: a claim is a lease).

The claimer renews the claim every third of its lease for as long as the fire runs: fetching
its data, rendering, storing its messages. A replica killed or stalled mid-fire stops renewing,
and any other replica takes the fire over once the lease has lapsed (the scheduler looks for
lapsed claims every third of a lease), so a fire never waits for some replica's next start.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import datetime

import structlog

from .clock import utcnow
from .errors import StoreUnavailable
from .store.calls import store_call
from .store.runs import RunStore

log = structlog.get_logger(__name__)


@contextlib.asynccontextmanager
async def holding_fire(
    runs: RunStore, job_id: str, fire_time: datetime, *, clock: Callable[[], datetime] = utcnow
) -> AsyncIterator[None]:
    """Renew our claim on (job_id, fire_time) while the body runs."""
    renewer = asyncio.create_task(_renew(runs, job_id, fire_time, clock), name=f"renew fire {job_id}")
    try:
        yield
    finally:
        renewer.cancel()
        await asyncio.gather(renewer, return_exceptions=True)


async def _renew(runs: RunStore, job_id: str, fire_time: datetime, clock: Callable[[], datetime]) -> None:
    every = runs.lease.total_seconds() / 3
    while True:
        await asyncio.sleep(every)
        try:
            ours = await store_call(runs.renew_fire, job_id, fire_time, now=clock())
        except StoreUnavailable as exc:  # a pause: the next renewal tries again
            log.warning("fire lease not renewed: the store is unavailable", job=job_id, error=str(exc))
            continue
        if not ours:
            # We stalled past the lease and another replica took the fire over; what we store
            # now is deduplicated against what it stores (outbox keys per fire and row).
            log.warning(
                "fire lease lost: another replica took the fire over",
                job=job_id,
                fire_time=fire_time.isoformat(),
            )
            return
