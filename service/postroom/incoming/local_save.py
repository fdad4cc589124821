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

Symbolic links are refused unless the action says ``follow_symlinks: true``: whoever can write
into a mail folder must not make postroom write elsewhere. Every folder on the way is opened
from its parent's handle with ``O_NOFOLLOW`` (``open_folder``), and every file in it by name
relative to that handle (``dir_fd=``), so a link planted as the mbox, as a Maildir subfolder,
as a parent folder or as ``tmp/NAME`` is never written through — a permanent error naming it.
An mbox that is not a regular file (a FIFO, a device) is refused without a read or write.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import fcntl
import hashlib
import os
import socket
import stat
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


class SymlinkRefused(PermanentError):
    """A link where a mail folder or file should be, and the action does not follow links."""


def _nofollow(follow: bool) -> int:
    return 0 if follow else os.O_NOFOLLOW


def _link_refused(shown: Path) -> SymlinkRefused:
    return SymlinkRefused(
        f"{shown} is a symbolic link: refused (a link in a mail folder could send mail anywhere; "
        "set follow_symlinks: true on the save action if it is meant)"
    )


def _refused_link(exc: OSError, name: str, dir_fd: int, shown: Path) -> OSError | SymlinkRefused:
    """``exc`` from opening ``name`` with O_NOFOLLOW, as our refusal when a link caused it."""
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        try:
            if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                return _link_refused(shown)
        except OSError:
            pass
    return exc


def open_folder(path: Path, *, follow: bool, create: bool) -> int:
    """A handle on the folder ``path`` (absolute), every folder on the way opened from its
    parent's handle and, unless ``follow``, refused when it is a symbolic link; missing ones
    are made (0700) when ``create``."""
    flags = os.O_RDONLY | os.O_DIRECTORY | _nofollow(follow)
    path = Path(os.path.abspath(path))  # not resolve(): that would follow the links
    fd = os.open(path.anchor or "/", flags)
    walked = Path(path.anchor or "/")
    try:
        for part in path.parts[1:]:
            walked /= part
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o700, dir_fd=fd)
            try:
                inner = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                raise _refused_link(exc, part, fd, walked) from exc
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_in(dir_fd: int, name: str, flags: int, shown: Path, *, follow: bool, mode: int = 0o600) -> int:
    """The regular file ``name`` in the folder ``dir_fd``, never through a link unless
    ``follow``. Anything else there (a FIFO, a device) is refused before it is opened, and
    checked again on the handle (opened without blocking) in case it was swapped between."""
    try:
        found: os.stat_result | None = os.stat(name, dir_fd=dir_fd, follow_symlinks=follow)
    except FileNotFoundError:
        found = None
    if found is not None and stat.S_ISLNK(found.st_mode):
        raise _link_refused(shown)
    if found is not None and not stat.S_ISREG(found.st_mode):
        raise PermanentError(f"{shown} is not a regular file: refused")
    try:
        fd = os.open(name, flags | os.O_NONBLOCK | _nofollow(follow), mode, dir_fd=dir_fd)
    except OSError as exc:
        raise _refused_link(exc, name, dir_fd, shown) from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise PermanentError(f"{shown} is not a regular file: refused")
    os.set_blocking(fd, True)
    return fd


def maildir_find(root: Path, unique: str, *, follow: bool = False) -> str | None:
    """The name under new/ or cur/ that holds the message saved as ``unique``, if any."""
    try:
        root_fd = open_folder(root, follow=follow, create=False)
    except FileNotFoundError:
        return None
    try:
        return _find_in(root_fd, root, unique, follow=follow)
    finally:
        os.close(root_fd)


def _find_in(root_fd: int, root: Path, unique: str, *, follow: bool) -> str | None:
    for sub in ("new", "cur"):
        try:
            fd = os.open(sub, os.O_RDONLY | os.O_DIRECTORY | _nofollow(follow), dir_fd=root_fd)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise _refused_link(exc, sub, root_fd, root / sub) from exc
        try:
            for name in os.listdir(fd):
                if name.split(":", 1)[0].split(".")[1:2] == [unique]:
                    return f"{sub}/{name}"
        finally:
            os.close(fd)
    return None


def save_maildir(
    root: Path, raw: bytes, *, unique: str, now: datetime, in_doubt: bool, follow_symlinks: bool = False
) -> dict[str, str]:
    """Deliver into the Maildir at ``root`` (created with tmp/new/cur when missing). Returns
    the ledger detail: where it went, or that it was already there."""
    follow = follow_symlinks
    with _os_errors(root), contextlib.ExitStack() as held:
        root_fd = open_folder(root, follow=follow, create=True)
        held.callback(os.close, root_fd)
        if in_doubt and (found := _find_in(root_fd, root, unique, follow=follow)) is not None:
            return {"maildir": str(root), "file": found, "verified": "already saved"}
        subs: dict[str, int] = {}
        for sub in ("tmp", "new", "cur"):
            with contextlib.suppress(FileExistsError):
                os.mkdir(sub, 0o700, dir_fd=root_fd)
            try:
                subs[sub] = os.open(sub, os.O_RDONLY | os.O_DIRECTORY | _nofollow(follow), dir_fd=root_fd)
            except OSError as exc:
                raise _refused_link(exc, sub, root_fd, root / sub) from exc
            held.callback(os.close, subs[sub])
        name = f"{int(now.timestamp())}.{unique}.{_HOST}"
        fd = _create_tmp(subs["tmp"], name, root / "tmp" / name, follow=follow)
        try:
            _write_all(fd, unix_lines(raw))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(name, name, src_dir_fd=subs["tmp"], dst_dir_fd=subs["new"])
        os.fsync(subs["new"])
        return {"maildir": str(root), "file": f"new/{name}"}


def _create_tmp(tmp_fd: int, name: str, shown: Path, *, follow: bool) -> int:
    """A new file ``tmp/name``. One left there by a crashed save of ours is replaced; a link
    someone planted under that name is refused (``_open_in``), never written through."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        return _open_in(tmp_fd, name, flags, shown, follow=follow)
    except FileExistsError:
        os.unlink(name, dir_fd=tmp_fd)
        return _open_in(tmp_fd, name, flags, shown, follow=follow)


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
def _dotlock(folder: int, path: Path, deadline: float) -> Iterator[None]:
    """``PATH.lock`` made atomically with link(2) (safe on NFS), holding ``host pid``; every
    name relative to the mbox's ``folder`` handle."""
    lock = path.name + ".lock"
    mine = f".{path.name}.{_HOST}.{os.getpid()}.lock"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(mine, dir_fd=folder)  # ours, left by a crash of this very pid number
    fd = _open_in(folder, mine, os.O_WRONLY | os.O_CREAT | os.O_EXCL, path.with_name(mine), follow=False)
    try:
        os.write(fd, f"{_HOST} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    try:
        while True:
            try:
                os.link(mine, lock, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
                break
            except FileExistsError:
                if _stale(folder, lock):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(lock, dir_fd=folder)
                    continue
                if time.monotonic() > deadline:
                    raise TransientError(f"{path}: locked by another program ({path.with_name(lock)} exists)") from None
                time.sleep(_LOCK_POLL)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(mine, dir_fd=folder)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock, dir_fd=folder)


def _stale(folder: int, lock: str) -> bool:
    """Left by a dead postroom on this host, or older than STALE_DOTLOCK whoever made it."""
    try:
        age = time.time() - os.stat(lock, dir_fd=folder, follow_symlinks=False).st_mtime
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
    except FileNotFoundError:
        return True
    except OSError:  # a link or something odd as the lock: someone else's, let it age
        return False
    try:
        words = os.read(fd, 256).decode(errors="replace").split()
    finally:
        os.close(fd)
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

    def __init__(self, path: Path, *, lock_wait: float = LOCK_WAIT, follow_symlinks: bool = False):
        self.path = path
        self.lock_wait = lock_wait
        self.follow = follow_symlinks
        self._fd = -1
        self._dotlock: contextlib.ExitStack | None = None

    def __enter__(self) -> Mbox:
        deadline = time.monotonic() + self.lock_wait
        stack = contextlib.ExitStack()
        with _os_errors(self.path):
            try:
                folder = open_folder(self.path.parent, follow=self.follow, create=True)
                stack.callback(os.close, folder)
                stack.enter_context(_dotlock(folder, self.path, deadline))
                fd = _open_in(folder, self.path.name, os.O_RDWR | os.O_CREAT, self.path, follow=self.follow)
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
