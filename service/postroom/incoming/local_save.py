"""Local delivery: ``save: {maildir: PATH}`` and ``save: {mbox: PATH}``, as getmail does it.

Both write the message with Unix line endings (CRLF -> LF), as local delivery agents
(Dovecot's LDA, procmail, getmail) do, so mutt, Dovecot and Python's ``mailbox`` read it as
any other local mail. Blocking file I/O: the executor runs these on a worker thread.

Maildir (atomic by construction): write ``tmp/NAME``, fsync it, rename it into ``new/``,
fsync ``new/``. A crash leaves at most a stray file in ``tmp/`` (readers never look there),
never a partial message. NAME's unique part is derived from the action key, so when the
ledger row is in doubt the save first looks for that name in ``new/`` and ``cur/`` (a reader
may have moved it and added ``:2,S``): found means done, nothing is written twice.

mbox (an append can't be atomic): under a dotlock (``PATH.lock``, made by link(2) as
procmail and mutt do, holding our host and pid so a lock left by a killed postroom is taken
back) plus fcntl and flock locks on the file, write ``From <sender> <date>``, the message with
lines starting ``From `` quoted as ``>From `` (mboxo, what Python's mailbox and mutt write)
and a blank line, then fsync. The executor records each append done as soon as it returns
(not at the end of its phase), so at most one append per mbox is ever in doubt, and it is the
one at the file's tail. For appends in doubt the tail is read first, still under the locks
(``Mbox.settle``): a tail ending with exactly such an entry (any date in its From line) means
done; a tail holding a *beginning* of one means a crash cut it: it is truncated away and the
entry written whole. So a kill -9 mid-append leaves no partial message behind and a retry
never appends twice. (Another program appending to the same mbox between the crash and the
retry hides the tail: the retry then appends again, one duplicate at worst, never a loss.)
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import fcntl
import hashlib
import os
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from postroom.errors import PermanentError, TransientError
from postroom.mail.parse import parse_headers

#: How long to wait for another program's mbox lock before giving up (retried later).
LOCK_WAIT = 30.0
#: A dotlock older than this is stale whoever made it (procmail's and mutt's default rule).
STALE_DOTLOCK = 300.0
_LOCK_POLL = 0.1
_HEADER_LIMIT = 256 * 1024  # header bytes read for the envelope sender
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # a From line's date is not compared
_HOST = socket.gethostname().replace("/", "_").replace(":", "_")
# OSErrors a retry may cure (disk full, quota, a busy NFS server) vs the rest (permissions,
# a file where a directory should be): retry vs dead letter
_TRANSIENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EAGAIN, errno.EINTR, errno.EIO, errno.ESTALE, errno.ETIMEDOUT, errno.EBUSY}
)


def unix_lines(raw: bytes) -> bytes:
    """CRLF -> LF, ending in exactly one newline when it ended in none."""
    data = raw.replace(b"\r\n", b"\n")
    return data if data.endswith(b"\n") else data + b"\n"


def save_id(action_key: str) -> str:
    """The unique part of a Maildir name, stable for one action across retries."""
    return hashlib.sha256(action_key.encode("utf-8")).hexdigest()[:24]


def _mapped(exc: OSError, where: Path) -> TransientError | PermanentError:
    kind = TransientError if exc.errno in _TRANSIENT_ERRNOS else PermanentError
    return kind(f"{where}: {exc.strerror or exc}")


@contextlib.contextmanager
def _os_errors(where: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise _mapped(exc, where) from exc


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- Maildir -------------------------------------------------------------------------------


def maildir_find(root: Path, unique: str) -> str | None:
    """The name under new/ or cur/ that holds the message saved as ``unique``, if any."""
    for sub in ("new", "cur"):
        folder = root / sub
        if folder.is_dir():
            for name in os.listdir(folder):
                if name.split(":", 1)[0].split(".")[1:2] == [unique]:
                    return f"{sub}/{name}"
    return None


def save_maildir(root: Path, raw: bytes, *, unique: str, now: datetime, in_doubt: bool) -> dict[str, str]:
    """Deliver into the Maildir at ``root`` (created with tmp/new/cur when missing). Returns
    the ledger detail: where it went, or that it was already there."""
    with _os_errors(root):
        if in_doubt and (found := maildir_find(root, unique)) is not None:
            return {"maildir": str(root), "file": found, "verified": "already saved"}
        for sub in ("tmp", "new", "cur"):
            (root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"{int(now.timestamp())}.{unique}.{_HOST}"
        tmp = root / "tmp" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, unix_lines(raw))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, root / "new" / name)
        _fsync_dir(root / "new")
        return {"maildir": str(root), "file": f"new/{name}"}


# -- mbox ----------------------------------------------------------------------------------


def envelope_sender(raw: bytes) -> str:
    """Who the ``From `` line names: Return-Path, else the From address (read from the bytes,
    so a retry names the same one)."""
    headers = parse_headers(raw[:_HEADER_LIMIT])
    for name in ("Return-Path", "From"):
        value = headers.get(name)
        if value:
            addr = email.utils.parseaddr(str(value))[1]
            if addr:
                return addr
    return ""


def mbox_sender(value: str) -> str:
    """The envelope sender for a ``From `` line: one word, MAILER-DAEMON when there is none."""
    return value if value and value.isascii() and len(value.split()) == 1 and len(value) < 256 else "MAILER-DAEMON"


def mbox_entry(raw: bytes, sender: str, when: datetime) -> tuple[bytes, bytes]:
    """(the ``From `` line with its newline, the quoted message + the blank line that ends it)."""
    body = unix_lines(raw)
    if body.startswith(b"From "):
        body = b">" + body
    body = body.replace(b"\nFrom ", b"\n>From ")
    stamp = time.asctime(time.gmtime(when.timestamp()))
    return f"From {mbox_sender(sender)} {stamp}\n".encode(), body + b"\n"


@contextlib.contextmanager
def _dotlock(path: Path, deadline: float) -> Iterator[None]:
    """``PATH.lock`` made atomically with link(2) (safe on NFS), holding ``host pid``."""
    lock = path.with_name(path.name + ".lock")
    mine = path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.lock")
    mine.write_text(f"{_HOST} {os.getpid()}\n")
    try:
        while True:
            try:
                os.link(mine, lock)
                break
            except FileExistsError:
                if _stale(lock):
                    lock.unlink(missing_ok=True)
                    continue
                if time.monotonic() > deadline:
                    raise TransientError(f"{path}: locked by another program ({lock} exists)") from None
                time.sleep(_LOCK_POLL)
    finally:
        mine.unlink(missing_ok=True)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _stale(lock: Path) -> bool:
    """Left by a dead postroom on this host, or older than STALE_DOTLOCK whoever made it."""
    try:
        age = time.time() - lock.stat().st_mtime
        words = lock.read_text(errors="replace").split()
    except FileNotFoundError:
        return True
    if age > STALE_DOTLOCK:
        return True
    if len(words) == 2 and words[0] == _HOST and words[1].isdigit():
        return not _alive(int(words[1]))
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")  # a zombie is dead for our purposes
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _lock_fd(fd: int, path: Path, deadline: float) -> None:
    """fcntl (POSIX) and flock locks: mutt, procmail and Dovecot take one or the other."""
    for take in (
        lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB),
        lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB),
    ):
        while True:
            try:
                take()
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                if time.monotonic() > deadline:
                    raise TransientError(f"{path}: locked by another program") from None
                time.sleep(_LOCK_POLL)


def _tail_state(fd: int, size: int, candidates: list[tuple[bytes, bytes]]) -> tuple[str, int, int]:
    """Which of the candidate entries, given as (``From sender `` prefix, body), the file's
    tail holds: ("done", i, _) when it ends with entry i whole (its From line of any date);
    ("cut", i, offset) when it ends with a beginning of it (a crashed append: truncate at
    offset); ("none", -1, 0) otherwise. Whole From lines are looked at first, for every
    candidate: a tail ending in a bare "\n\nF" may be a cut From line or a cut paragraph."""
    longest = max(len(prefix) + len(body) for prefix, body in candidates)
    window = min(size, longest + 32 + 2)
    tail = os.pread(fd, window, size - window)
    for i, (prefix, body) in enumerate(candidates):
        state, offset = _last_entry(tail, size, window, prefix, body)
        if state != "none":
            return state, i, offset
    for i, (prefix, _) in enumerate(candidates):
        for k in range(len(prefix) - 1, 0, -1):  # cut inside "From sender " itself
            if tail.endswith(b"\n\n" + prefix[:k]) or (size == k and tail == prefix[:k]):
                return "cut", i, size - k
    return "none", -1, 0


def _last_entry(tail: bytes, size: int, window: int, prefix: bytes, body: bytes) -> tuple[str, int]:
    """``_tail_state`` for the last whole From line in ``tail`` (after a blank line, or first
    in the file)."""
    pos = tail.rfind(b"\n\nFrom ")
    if pos >= 0:
        idx = pos + 2
    elif size == window and tail.startswith(b"From "):
        idx = 0
    else:
        return "none", 0
    written = tail[idx:]
    line_end = written.find(b"\n")
    if line_end < 0:  # cut inside the From line
        if written.startswith(prefix):
            return "cut", size - len(written)
        return "none", 0
    if not written.startswith(prefix):
        return "none", 0
    rest = written[line_end + 1 :]
    if rest == body:
        return "done", 0
    if body.startswith(rest):
        return "cut", size - len(written)
    return "none", 0


class Mbox:
    """One mbox, locked for a run of appends: ``with Mbox(path) as box:`` (blocking).

    Each append is fsynced before it returns, so the caller can record it done one by one: a
    crash then leaves at most one append in doubt per mbox, the one at its tail."""

    def __init__(self, path: Path, *, lock_wait: float = LOCK_WAIT):
        self.path = path
        self.lock_wait = lock_wait
        self._fd = -1
        self._dotlock: contextlib.ExitStack | None = None

    def __enter__(self) -> Mbox:
        deadline = time.monotonic() + self.lock_wait
        stack = contextlib.ExitStack()
        with _os_errors(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            stack.enter_context(_dotlock(self.path, deadline))
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                stack.callback(os.close, fd)  # closing releases the fcntl and flock locks
                _lock_fd(fd, self.path, deadline)
            except BaseException:
                stack.close()
                raise
        self._fd, self._dotlock = fd, stack
        return self

    def __exit__(self, *exc: object) -> None:
        if self._dotlock is not None:
            self._dotlock.close()
        self._fd, self._dotlock = -1, None

    def settle(self, entries: list[tuple[str, bytes]]) -> int | None:
        """For appends in doubt, given as (sender, body): the index of the one the file already
        ends with (done), if any. One the file ends with a beginning of is cut away."""
        with _os_errors(self.path):
            size = os.fstat(self._fd).st_size
            if not size or not entries:
                return None
            candidates = [
                (f"From {mbox_sender(sender)} ".encode(), mbox_entry(raw, sender, _EPOCH)[1]) for sender, raw in entries
            ]
            state, i, offset = _tail_state(self._fd, size, candidates)
            if state == "done":
                return i
            if state == "cut":
                os.ftruncate(self._fd, offset)
                os.fsync(self._fd)
        return None

    def append(self, raw: bytes, *, sender: str, now: datetime) -> dict[str, str]:
        from_line, body = mbox_entry(raw, sender, now)
        with _os_errors(self.path):
            size = os.fstat(self._fd).st_size
            # an mbox entry starts after a blank line: repair a file that lacks one
            lead = b""
            if size:
                end = os.pread(self._fd, 2, size - 2) if size >= 2 else os.pread(self._fd, 1, 0)
                lead = b"" if end.endswith(b"\n\n") else b"\n" if end.endswith(b"\n") else b"\n\n"
            os.lseek(self._fd, size, os.SEEK_SET)
            _write_all(self._fd, lead + from_line + body)
            os.fsync(self._fd)
        return {"mbox": str(self.path)}
