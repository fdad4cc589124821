"""A watcher stopping while its store stalls still stops: giving the watch lease up goes through a
store thread and is waited for ``RELEASE_DEADLINE`` seconds at most, so the event loop keeps
turning meanwhile and the lease, if the write never lands, runs out by itself. The store is the
machine's PostgreSQL behind a TCP proxy that stops forwarding (a store that hangs)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import structlog
from postroom.incoming.watch_lease import RELEASE_DEADLINE, WatchLease
from postroom.store import Store
from postroom.store.calls import close_store
from structlog.testing import capture_logs

from tests.support.tcp_proxy import TcpProxy


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    forwarder = TcpProxy()
    yield forwarder
    forwarder.close()


async def test_a_watcher_stopping_on_a_stalled_store_gives_up_its_lease_within_the_deadline(pg_url, proxy):
    store = Store.open(proxy.url(pg_url), owner="replica-a")
    lease = WatchLease(store.leases, "alice/INBOX", structlog.get_logger("test"))
    loop = asyncio.get_running_loop()
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0.05)
            turns += 1

    try:
        assert await lease.acquire(asyncio.Event(), on_standby=lambda: None)
        proxy.stall()
        ticker = asyncio.create_task(count_turns())
        started = loop.time()
        with capture_logs() as logs:
            await lease.release()
        took = loop.time() - started
        ticker.cancel()
        assert RELEASE_DEADLINE - 0.5 <= took < RELEASE_DEADLINE + 3
        assert turns >= RELEASE_DEADLINE / 0.05 / 4  # the loop turned all along (sleeps run late under load)
        assert any("could not release the watch lease" in e["event"] for e in logs)
        assert not lease.held
    finally:
        proxy.restore()
        await close_store(store)
