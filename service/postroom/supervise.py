"""Supervised background tasks: a long-running part that dies is logged at once, with its
traceback, counted as down (``TaskHealth``, which /readyz reports) and started again after a
doubling backoff, instead of vanishing silently.

Without this a task's exception sits in its Task object until someone awaits it - at shutdown:
a webhook queue killed by one bad header left every later match queued and undelivered, with
nothing in the log. A part whose ``run`` returns has finished (it saw ``stop``): no restart.

A part that stopped because the store is unavailable did not die: the store monitor already
tells /readyz and the log about the outage, so it is a pause — a one-line warning, not a
traceback, not counted down — and the part starts again every `STORE_PAUSE` until it answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

import structlog

from .errors import StoreUnavailable
from .retry import doubling_delay, sleep_or_stop

log = structlog.get_logger(__name__)

RESTART_BASE = timedelta(seconds=1)
RESTART_CAP = timedelta(minutes=2)
STORE_PAUSE = timedelta(seconds=1)


@dataclass
class TaskHealth:
    """Supervised tasks that are down now (died, waiting for their restart): name -> why."""

    down: dict[str, str] = field(default_factory=dict)


async def supervised(
    name: str,
    run: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
    *,
    health: TaskHealth | None = None,
    base: timedelta = RESTART_BASE,
    cap: timedelta = RESTART_CAP,
) -> None:
    """Run ``run()`` until it returns or ``stop`` is set; restart it whenever it raises.
    A run that lasted longer than ``cap`` starts the backoff over (it had recovered)."""
    health = health if health is not None else TaskHealth()
    failures = 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            await run()
            return
        except StoreUnavailable as exc:
            log.warning("background task paused: the store is unavailable", task=name, error=str(exc))
            delay = STORE_PAUSE.total_seconds()
            await sleep_or_stop(stop, delay)
            continue
        except Exception as exc:
            failures = 1 if time.monotonic() - started > cap.total_seconds() else failures + 1
            delay = doubling_delay(failures, base=base, cap=cap).total_seconds()
            health.down[name] = f"died ({type(exc).__name__}: {exc}); restarting in {delay:g} s"
            log.exception("background task died; restarting", task=name, failures=failures, restart_in=delay)
        await sleep_or_stop(stop, delay)
        health.down.pop(name, None)
