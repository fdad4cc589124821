"""The timing hooks at the store and SMTP edges: each call reports its duration and result to
the daemon's metrics while one is attached, and to nothing otherwise."""

from __future__ import annotations

import pytest
from postroom.errors import StoreUnavailable
from postroom.store import calls
from postroom.store.calls import StoreCalls
from sqlalchemy import exc as sa_exc


@pytest.fixture
def store_threads():
    threads = StoreCalls()
    yield threads
    threads.shutdown()


@pytest.fixture
def seen():
    got: list[tuple[float, str, str]] = []
    calls.observe.hook = lambda seconds, result, subject: got.append((seconds, result, subject))
    yield got
    calls.observe.hook = None


def _lost() -> None:
    raise sa_exc.OperationalError("SELECT 1", {}, ConnectionError("server closed the connection"))


def _bug() -> None:
    raise ValueError("a bug, not the store")


async def test_store_calls_report_ok_unavailable_and_error(seen, store_threads):
    assert await store_threads.run(lambda: 42) == 42
    with pytest.raises(StoreUnavailable):
        await store_threads.run(_lost)
    with pytest.raises(ValueError):
        await store_threads.run(_bug)
    assert [result for _, result, _ in seen] == ["ok", "unavailable", "error"]
    assert all(seconds >= 0 for seconds, _, _ in seen)


async def test_without_a_hook_nothing_is_reported(store_threads):
    assert calls.observe.hook is None
    assert await store_threads.run(lambda: "fine") == "fine"
