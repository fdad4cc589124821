"""Crash tests: `postroom` held at one exact point until it is killed.

    python -m tests.support.crash_points KIND N MARKER postroom-args…

The Nth time the process reaches a point of KIND it creates MARKER and waits there; the test
waits for MARKER, then SIGKILLs the process, so the crash lands exactly where a real one would
do the most harm. KIND is ``maildir`` or ``mbox`` (halfway through writing a saved message:
half of it written and fsynced) or ``append`` (right after an APPEND to another account
succeeded, before anything records it) or ``premove`` / ``move`` (right before a MOVE goes out /
right after it returned; MARKER then holds ``$`` when it moved the saved search result, else
``sets``).

The product has no hook for this: this launcher wraps the function at that point in the process
it starts (the tests' own process is never touched), then runs postroom's command line.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from pathlib import Path

from postroom.cli import main
from postroom.incoming import imap, local_save

KINDS = ("maildir", "mbox", "append", "premove", "move")


def command(kind: str, nth: int, marker: Path) -> list[str]:
    """The argv prefix that runs postroom under this launcher (append postroom's arguments)."""
    if kind not in KINDS:
        raise ValueError(f"crash point {kind!r}: one of {', '.join(KINDS)}")
    return [sys.executable, "-m", "tests.support.crash_points", kind, str(nth), str(marker)]


def _counter(nth: int) -> Callable[[], bool]:
    seen = 0

    def reached() -> bool:
        nonlocal seen
        seen += 1
        return seen == nth

    return reached


def _save_kind(fd: int) -> str:
    """A save writes a Maildir message into the folder's tmp/, an mbox entry into the mbox."""
    return "maildir" if Path(os.readlink(f"/proc/self/fd/{fd}")).parent.name == "tmp" else "mbox"


def _hold_saves(kind: str, nth: int, marker: Path) -> None:
    write_all = local_save._write_all
    reached = _counter(nth)

    def half_then_wait(fd: int, data: bytes) -> None:
        if _save_kind(fd) != kind or not reached():
            write_all(fd, data)
            return
        os.write(fd, data[: len(data) // 2])
        os.fsync(fd)
        marker.touch()
        while True:  # only the test's SIGKILL ends this
            time.sleep(60)

    local_save._write_all = half_then_wait


def _hold_appends(nth: int, marker: Path) -> None:
    append = imap.ImapConnection.append
    reached = _counter(nth)

    async def append_then_wait(
        self: imap.ImapConnection, folder: str, raw: bytes, flags: Sequence[str], when: datetime | None
    ) -> None:
        await append(self, folder, raw, flags, when)
        if reached():
            os.close(os.open(marker, os.O_CREAT | os.O_WRONLY))  # the sign the test waits for
            await asyncio.Event().wait()  # only the test's SIGKILL ends this

    imap.ImapConnection.append = append_then_wait  # type: ignore[method-assign]


def _hold_moves(after: bool, nth: int, marker: Path) -> None:
    move = imap.ImapConnection.move
    reached = _counter(nth)

    async def hold_at_move(self: imap.ImapConnection, uids: Collection[int], folder: str) -> None:
        if not reached():
            await move(self, uids, folder)
            return
        how = "$" if self.saved_is(uids) else "sets"
        if after:
            await move(self, uids, folder)
        staged = marker.with_suffix(".tmp")
        staged.write_text(how)
        os.replace(staged, marker)  # the sign the test waits for, whole
        await asyncio.Event().wait()  # only the test's SIGKILL ends this

    imap.ImapConnection.move = hold_at_move  # type: ignore[method-assign]


if __name__ == "__main__":
    point, count, path, *postroom_args = sys.argv[1:]
    if point == "append":
        _hold_appends(int(count), Path(path))
    elif point in ("premove", "move"):
        _hold_moves(point == "move", int(count), Path(path))
    else:
        _hold_saves(point, int(count), Path(path))
    sys.argv = ["postroom", *postroom_args]
    main()
