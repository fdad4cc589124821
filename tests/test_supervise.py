"""Supervised background tasks: one that dies is logged at once with its traceback and
restarted after a backoff; one that returns is done; a stop ends the backoff wait."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from postroom.supervise import TaskHealth, supervised
from structlog.testing import capture_logs


async def test_a_task_that_dies_is_logged_at_once_and_restarted():
    stop = asyncio.Event()
    runs: list[int] = []

    async def run() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise OverflowError("date value out of range")
        await stop.wait()

    health = TaskHealth()
    seen_down: list[str] = []

    async def watch_health() -> None:
        while not stop.is_set():
            seen_down.extend(health.down.values())
            await asyncio.sleep(0.005)

    with capture_logs() as logs:
        watching = asyncio.create_task(watch_health())
        task = asyncio.create_task(supervised("webhooks", run, stop, health=health, base=timedelta(seconds=0.05)))
        for _ in range(100):
            if len(runs) == 3:
                break
            await asyncio.sleep(0.02)
        assert len(runs) == 3  # died twice, restarted twice, now running
        assert not task.done() and health.down == {}  # up again: ready again
        assert any("OverflowError: date value out of range" in why for why in seen_down)  # /readyz said why
        stop.set()
        await asyncio.wait_for(task, 5)
        await watching
    died = [e for e in logs if e["event"] == "background task died; restarting"]
    assert [e["task"] for e in died] == ["webhooks", "webhooks"]
    assert all(e["exc_info"] for e in died) and [e["restart_in"] for e in died] == [0.05, 0.1]


async def test_a_stop_during_the_backoff_ends_it_without_a_restart():
    stop = asyncio.Event()
    runs: list[int] = []

    async def run() -> None:
        runs.append(1)
        raise RuntimeError("boom")

    with capture_logs():
        task = asyncio.create_task(supervised("webhooks", run, stop, base=timedelta(minutes=1)))
        await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(task, 5)
    assert runs == [1]
