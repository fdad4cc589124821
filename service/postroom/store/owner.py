"""One daemon per SQLite store: an exclusive ``flock`` on a lock file beside the database.

SQLite means one process owns the work in flight: at start the daemon takes back every lease
a previous process left (``bootstrap.recover_single_node``) and watches every folder alone. A
second ``postroom run`` on the same file would take work from the live first one and watch
the same folders twice, so it refuses to start and names the holder's PID instead.

The lock is the kernel's (``fcntl.flock``), so it dies with its process: a ``kill -9`` leaves a
file behind but no lock, and the next start takes it at once. The PID inside is only there
to name the holder in the refusal. PostgreSQL stores are shared by replicas on purpose
(leases divide the work), so they take no lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from postroom.errors import PostroomError

LOCK_SUFFIX = ".lock"


class StoreOwner:
    """The held lock on one SQLite store; ``release`` (or the process's end) lets it go."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + LOCK_SUFFIX)


def claim_store(database: Path) -> StoreOwner:
    """Take the store for this process, or raise PostroomError naming the PID that holds it."""
    path = lock_path(database)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise PostroomError(
            f"the store {database} is in use by another `postroom run` (PID {holder}); one daemon "
            "per SQLite store: stop that one first, or use PostgreSQL to run replicas") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return StoreOwner(path, fd)
