"""The one way async code reaches the store: ``await store_call(part.method, ...)`` for a
method of a store part (``store.outbox.enqueue``, ``self.inbound.statuses``), and
``await part.calls.run(fn, ...)`` for any other function that works on the store (a closure
that reads several parts in one thread); ``await close_store(store)`` closes it.

Every store method is blocking (SQLAlchemy, a driver socket or a SQLite file), so it runs on
a small pool of threads of the store's own (``StoreCalls``, made by ``Store.open`` and shared
by its parts), never on the event loop and never on the loop's default executor: a stalled
PostgreSQL may hold every store thread, and rendering, file reads and /metrics must still get
theirs. The pool is bounded, so a stalled store queues calls instead of growing threads
without end. It ends with the store (``Store.close``).

This is also the store's error edge: a lost or refused connection, a timeout or a SQLite
file that cannot be opened become ``StoreUnavailable`` (transient: the caller retries later),
by one table. While the store is known to be unusable (its ``StoreGate`` closed: its SQLite
file vanished under us) no call reaches it at all, so nothing is written to a file nobody can
see and nothing creates an empty one in its place.
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


observe = Timings()  # each call's duration and result (ok, unavailable, error): the daemon's metrics


class StoreCalls:
    """One store's threads and its gate. ``run`` is the only way in; ``shutdown`` (from
    ``Store.close``) lets the threads end once what is queued has run, and refuses new calls."""

    def __init__(self, threads: int = STORE_THREADS) -> None:
        self.gate = StoreGate()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="store")
        self._shut = False

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on a store thread; the store's driver errors come back as
        ``StoreUnavailable``."""
        return await self._submit(functools.partial(self._guarded, fn, *args, **kwargs))

    async def run_ungated(self, fn: Callable[[], None]) -> None:
        """``fn()`` on a store thread whether the gate is open or not (closing the store)."""
        await self._submit(fn)

    @property
    def closed(self) -> bool:
        return self._shut

    def shutdown(self) -> None:
        """No new calls; the threads end once what is queued has run. Callable from a store
        thread (the store closing itself there): it does not wait."""
        self._shut = True
        self._pool.shutdown(wait=False)

    async def _submit(self, call: Callable[[], T]) -> T:
        if self._shut:
            raise StoreUnavailable("store: closed")
        try:
            done = asyncio.get_running_loop().run_in_executor(self._pool, call)
        except RuntimeError:  # closed meanwhile on a store thread: the pool refuses new work
            raise StoreUnavailable("store: closed") from None
        return await done

    def _guarded(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        started, result = time.monotonic(), "error"
        try:
            self.gate.check()
            with map_errors(STORE_ERRORS, "store: "):
                value = fn(*args, **kwargs)
            result = "ok"
            return value
        except StoreUnavailable:
            result = "unavailable"
            raise
        finally:
            observe(time.monotonic() - started, result)


def calls_of(method: Callable[..., object]) -> StoreCalls:
    """The threads of the store a store part's bound method belongs to (every part keeps its
    store's ``calls``)."""
    calls = getattr(getattr(method, "__self__", None), "calls", None)
    if not isinstance(calls, StoreCalls):
        raise TypeError(f"store_call takes a store part's method, not {method!r}: hand others to <part>.calls.run")
    return calls


async def store_call(method: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``method(*args, **kwargs)`` on the threads of the store ``method`` is a method of; the
    store's driver errors come back as ``StoreUnavailable``."""
    return await calls_of(method).run(method, *args, **kwargs)


class ClosableStore(Protocol):
    calls: StoreCalls

    def close(self) -> None: ...


async def close_store(store: ClosableStore) -> None:
    """``store.close()`` on a store thread, whether the gate is open or not: closing only lets
    go of the store's connections (and its file lock), and must happen however the store is.
    The store's threads end with it; a store closed already is left as it is."""
    if not store.calls.closed:
        await store.calls.run_ungated(store.close)
