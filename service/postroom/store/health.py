"""Watching the store under a running daemon: is it there, and does it answer in time?

Every ``PROBE_EVERY`` seconds the daemon asks the store one trivial query through the store
threads (``store.calls``) and gives it ``PROBE_DEADLINE`` seconds; /readyz reports the last
answer. A stalled PostgreSQL (it accepts but never answers) then makes the daemon not ready
while the event loop goes on answering /healthz.

A SQLite store is a file: if it disappears or becomes unwritable under the daemon, the open
connections would go on writing to an unlinked file nobody can see, and a new connection
would silently create an empty store in its place. So the file is checked first; while it is
missing or unwritable the store's gate (``store.calls.gate``) is closed: no new work touches the store
(fires wait and retry, the sender and watchers back off) until the file is back. Then the
pooled connections (to the old file) are dropped, and work resumes on the file that is there.

A full disk under a SQLite store makes every write fail (transiently: nothing is lost), so the
daemon is not ready while the store's file system has less than MIN_FREE_BYTES free; and when
there is room again it is ready only once a write went through (``_write_probe``: page 1
rewritten with the value it has), not on the free-space figure alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from sqlalchemy import Engine, text

from ..errors import PostroomError
from .calls import StoreCalls

log = structlog.get_logger(__name__)

PROBE_EVERY = 2.0  # seconds between probes
PROBE_DEADLINE = 3.0  # seconds a probe may take before the store counts as stalled
MIN_FREE_BYTES = 64 * 1024  # below this on the store's file system, writes are failing


def disk_full_problem(folder: Path) -> str | None:
    """Why the file system holding ``folder`` has no room for the store's writes, or None."""
    try:
        found = os.statvfs(folder)
    except OSError:
        return None  # sqlite_file_problem says what is wrong with the folder itself
    free = found.f_bavail * found.f_frsize
    if free >= MIN_FREE_BYTES:
        return None
    return f"the disk holding the store ({folder}) is full ({free // 1024} KiB free): writes fail until there is room"


def _write_probe(engine: Engine) -> None:
    """One real write: SQLite's header rewritten with the user_version it has (a journal or
    WAL frame, and a sync, like any commit), so a disk that has room again is proven writable."""
    with engine.begin() as conn:
        version = conn.execute(text("PRAGMA user_version")).scalar_one()
        conn.execute(text(f"PRAGMA user_version = {int(version)}"))


def sqlite_file_problem(path: Path, inode: int | None) -> str | None:
    """Why the SQLite store at ``path`` (opened with ``inode``) can't be used, or None."""
    try:
        found = path.stat()
    except FileNotFoundError:
        return f"the store file {path} is gone"
    except OSError as exc:
        return f"the store file {path} cannot be read: {exc.strerror}"
    if inode is not None and found.st_ino != inode:
        return f"the store file {path} was replaced by another file"
    if not os.access(path, os.R_OK | os.W_OK) or not os.access(path.parent, os.W_OK | os.X_OK):
        return f"the store file {path} (or its folder) is not writable"
    return None


def _ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


@dataclass
class StoreState:
    ok: bool = True
    why: str | None = None


class StoreMonitor:
    """Probes the store in a loop; ``state`` is what /readyz reports; ``on_back`` runs when
    the store answers again after it did not."""

    def __init__(
        self,
        engine: Engine,
        calls: StoreCalls,
        *,
        sqlite_path: Path | None,
        on_back: Callable[[], Awaitable[None]] | None = None,
        every: float = PROBE_EVERY,
        deadline: float = PROBE_DEADLINE,
    ):
        self.engine = engine
        self.calls = calls
        self.gate = calls.gate
        self.sqlite_path = sqlite_path
        self.on_back = on_back
        self.every = every
        self.deadline = deadline
        self.state = StoreState()
        self._inode = self._current_inode()
        self._probe: asyncio.Future[None] | None = None
        self._last_logged: str | None = None  # a problem is logged once, and again when it changes
        self._disk_was_full = False  # then ready again only after a write went through

    def _current_inode(self) -> int | None:
        if self.sqlite_path is None:
            return None
        with contextlib.suppress(OSError):
            return self.sqlite_path.stat().st_ino
        return None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.check()
            except Exception as exc:  # a bug here must not leave /readyz reporting an old answer
                log.exception("store probe failed")
                self.state = StoreState(ok=False, why=f"store probe failed: {exc!r}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every)

    async def check(self) -> StoreState:
        why = await self._file_problem()
        if why is None:
            why = await self._disk_problem()
        if why is None:
            why = await self._query_problem()
        was_ok = self.state.ok
        self.state = StoreState(ok=why is None, why=why)
        if why is not None and (was_ok or why != self._last_logged):
            log.error("store unavailable", reason=why)
        if why is None and not was_ok:
            log.info("store available again")
            if self.on_back is not None:
                await self.on_back()
        self._last_logged = why
        return self.state

    async def _file_problem(self) -> str | None:
        if self.sqlite_path is None:
            return None
        # A stat is file I/O (the state directory may be a network mount): off the loop too.
        why = await asyncio.to_thread(
            sqlite_file_problem, self.sqlite_path, None if self.gate.closed_because else self._inode
        )
        if why is not None:
            self.gate.close(f"{why}; no work is taken until it is back")
            return why
        if self.gate.closed_because is not None:
            # Back (restored or made writable): the pooled connections may hold the old,
            # unlinked file; new ones open the file that is there now.
            await asyncio.to_thread(self.engine.dispose)
            self._inode = await asyncio.to_thread(self._current_inode)
            self.gate.open()
        return None

    async def _disk_problem(self) -> str | None:
        if self.sqlite_path is None:
            return None
        why = await asyncio.to_thread(disk_full_problem, self.sqlite_path.parent)
        if why is not None:
            self._disk_was_full = True
            return why
        if self._disk_was_full:
            try:
                await asyncio.wait_for(self.calls.run(_write_probe, self.engine), self.deadline)
            except (TimeoutError, PostroomError) as exc:
                return f"the store's disk has room again, but a write still fails: {exc or 'timed out'}"
            self._disk_was_full = False
        return None

    async def _query_problem(self) -> str | None:
        if self._probe is not None and not self._probe.done():
            return f"the store has not answered a probe for more than {self.deadline:.0f} s"
        self._probe = asyncio.ensure_future(self.calls.run(_ping, self.engine))
        # A probe answered after its deadline has nobody awaiting it: take its outcome here.
        self._probe.add_done_callback(lambda done: done.cancelled() or done.exception())
        try:
            await asyncio.wait_for(asyncio.shield(self._probe), self.deadline)
        except TimeoutError:
            return f"the store did not answer within {self.deadline:.0f} s"
        except PostroomError as exc:
            return str(exc)
        return None
