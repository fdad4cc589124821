"""One daemon per SQLite store: an exclusive ``flock`` on a lock file beside the database.

SQLite means one process owns the work in flight: at start the daemon takes back every lease
a previous process left (``bootstrap.recover_single_node``) and watches every folder alone. A
second ``postroom run`` on the same file would take work from the live first one and watch
the same folders twice, so it refuses to start and names the holder's PID instead.

One-shot commands that send (``postroom send``) may run next to a daemon: their rows are
leased to them, so the daemon leaves them alone. But a daemon *starting* while one runs would
take those rows back as left over by a dead process and send them a second time. So such a
command holds a shared lock on ``<store>.writers`` while it works (``writing``), and the
daemon takes back leases at start only when it can lock that file exclusively (``alone``).

The lock follows the real file, not the name it was given: the path is resolved (a symlink
to the database, or to its directory, locks the same ``.lock`` file as the real path) and the
database file itself, when it exists, is locked too (its inode: a hard link or a path that
resolves elsewhere still meets the lock). ``flock`` and SQLite's own ``fcntl`` record locks
are separate kinds of lock on Linux, so this one never blocks SQLite's.

The locks are the kernel's (``fcntl.flock``), so they die with their process: a ``kill -9``
leaves a file behind but no lock, and the next start takes it at once. The PID inside is only
there to name the holder in the refusal. PostgreSQL stores are shared by replicas on purpose
(leases divide the work), so they take no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from postroom.errors import PostroomError

LOCK_SUFFIX = ".lock"
WRITERS_SUFFIX = ".writers"


class StoreOwner:
    """The held lock on one SQLite store; ``release`` (or the process's end) lets it go."""

    def __init__(self, database: Path, fd: int, inode_fd: int | None = None):
        self.database = database
        self._fd: int | None = fd
        self._inode_fd = inode_fd  # the database file's own lock (None: it did not exist yet)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
        if self._inode_fd is not None:
            os.close(self._inode_fd)
            self._inode_fd = None

    @contextlib.contextmanager
    def alone(self) -> Iterator[bool]:
        """True (and held until the block ends) when no one-shot command is writing: what is
        leased now was left by a process that is gone. False while one is (``writing``)."""
        fd = _open(_beside(self.database, WRITERS_SUFFIX))
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)


def _beside(database: Path, suffix: str) -> Path:
    real = database.resolve()  # a symlinked name shares the real file's lock files
    return real.with_name(real.name + suffix)


def lock_path(database: Path) -> Path:
    return _beside(database, LOCK_SUFFIX)


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


@contextlib.contextmanager
def writing(database: Path) -> Iterator[None]:
    """Held by a one-shot command while its rows are in flight: a daemon starting meanwhile
    then leaves every lease be (``StoreOwner.alone`` is False) instead of taking them back."""
    fd = _open(_beside(database, WRITERS_SUFFIX))
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # blocks only while a starting daemon takes leases back
        yield
    finally:
        os.close(fd)


def claim_store(database: Path) -> StoreOwner:
    """Take the store for this process, or raise PostroomError naming the PID that holds it."""
    path = lock_path(database)
    fd = _open(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise PostroomError(
            f"the store {database} is in use by another `postroom run` (PID {holder}); one daemon "
            "per SQLite store: stop that one first, or use PostgreSQL to run replicas"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        inode_fd = _lock_inode(database)
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return StoreOwner(database, fd, inode_fd)


def _lock_inode(database: Path) -> int | None:
    """Lock the database file itself (a daemon that reached it by another name holds it)."""
    try:
        fd = os.open(database, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # a new store: nobody can reach it by another name yet
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise PostroomError(
            f"the store {database} is in use by another `postroom run` that opened it by another "
            "name (a symlink or a hard link); one daemon per SQLite store: stop that one first"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return fd
