"""The one way async code reaches the store: ``await store_call(fn, ...)`` (and
``await close_store(store)`` to close it).

Every store method is blocking (SQLAlchemy, a driver socket or a SQLite file), so it runs on
a small pool of threads of its own, never on the event loop and never on the loop's default
executor: a stalled PostgreSQL may hold every store thread, and rendering, file reads and
/metrics must still get theirs. The pool is bounded, so a stalled store queues calls instead
of growing threads without end.

This is also the store's error edge: a lost or refused connection, a timeout or a SQLite
file that cannot be opened become ``StoreUnavailable`` (transient: the caller retries later),
by one table. While the store is known to be unusable (``StoreGate.close``: its SQLite file
vanished under us) no call reaches it at all, so nothing is written to a file nobody can see
and nothing creates an empty one in its place.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, Protocol, TypeVar

from sqlalchemy import exc as sa_exc

from ..errors import ErrorTable, StoreUnavailable, map_errors
from ..timing import Timings

P = ParamSpec("P")
T = TypeVar("T")

STORE_THREADS = 6  # the engine's pool holds 5 (+5 overflow) connections; the probe needs one

# SQLAlchemy's OperationalError covers the DBAPI's connection, timeout and "database is
# locked" errors; DisconnectionError a pre-ping that found the connection dead; its own
# TimeoutError no pooled connection free in time; InterfaceError a connection already closed.
STORE_ERRORS: ErrorTable = {
    sa_exc.OperationalError: StoreUnavailable,
    sa_exc.DisconnectionError: StoreUnavailable,
    sa_exc.TimeoutError: StoreUnavailable,
    sa_exc.InterfaceError: StoreUnavailable,
    ConnectionError: StoreUnavailable,
    TimeoutError: StoreUnavailable,
}


class StoreGate:
    """Closed while the store must not be touched (its SQLite file is gone or unwritable):
    calls fail at once as ``StoreUnavailable`` naming why, instead of reaching the store."""

    def __init__(self) -> None:
        self._why: str | None = None
        self._lock = threading.Lock()

    @property
    def closed_because(self) -> str | None:
        return self._why

    def close(self, why: str) -> None:
        with self._lock:
            self._why = why

    def open(self) -> None:
        with self._lock:
            self._why = None

    def check(self) -> None:
        why = self._why
        if why is not None:
            raise StoreUnavailable(f"store: {why}")


gate = StoreGate()  # one daemon, one store per process
observe = Timings()  # each call's duration and result (ok, unavailable, error): the daemon's metrics
_pool = ThreadPoolExecutor(max_workers=STORE_THREADS, thread_name_prefix="store")


def _guarded(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    started, result = time.monotonic(), "error"
    try:
        gate.check()
        with map_errors(STORE_ERRORS, "store: "):
            value = fn(*args, **kwargs)
        result = "ok"
        return value
    except StoreUnavailable:
        result = "unavailable"
        raise
    finally:
        observe(time.monotonic() - started, result)


async def store_call(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` on a store thread; the store's driver errors come back as
    ``StoreUnavailable``."""
    loop = asyncio.get_running_loop()
    call: Callable[[], T] = functools.partial(_guarded, fn, *args, **kwargs)
    return await loop.run_in_executor(_pool, call)


class Closable(Protocol):
    def close(self) -> None: ...


async def close_store(store: Closable) -> None:
    """``store.close()`` on a store thread, whether the gate is open or not: closing only lets
    go of the store's connections (and its file lock), and must happen however the store is."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(_pool, store.close)
