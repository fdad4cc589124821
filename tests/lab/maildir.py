"""Writing messages straight into a lab Maildir, for seeding big mailboxes fast.

Dovecot picks the files up on the next `doveadm index` (or the next IMAP SELECT).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

from tests.lab.config import MAIL_UID


def folder_path(maildir: Path, folder: str) -> Path:
    """Maildir++ layout: INBOX is the root, "A/B" (separator /) is stored as ".A.B"."""
    if folder.upper() == "INBOX":
        return maildir
    return maildir / ("." + folder.replace("/", "."))


def make_owned_dirs(*paths: Path) -> None:
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, MAIL_UID, MAIL_UID)


def ensure_folder(maildir: Path, folder: str) -> Path:
    path = folder_path(maildir, folder)
    make_owned_dirs(maildir.parent, maildir, path, *(path / sub for sub in ("cur", "new", "tmp")))
    if path != maildir and not (path / "maildirfolder").exists():
        (path / "maildirfolder").touch()
        os.chown(path / "maildirfolder", MAIL_UID, MAIL_UID)
    return path


def write_messages(maildir: Path, folder: str, raws: Iterable[bytes]) -> int:
    """Write each message as a new/ file; names sort in the given order. Returns the count."""
    path = ensure_folder(maildir, folder)
    stamp, pid = int(time.time()), os.getpid()
    count = 0
    for count, raw in enumerate(raws, start=1):
        name = f"{stamp}.M{count:08d}P{pid}.lab,S={len(raw)}"
        tmp = path / "tmp" / name
        tmp.write_bytes(raw)
        os.chown(tmp, MAIL_UID, MAIL_UID)
        tmp.rename(path / "new" / name)
    return count


def extra_folders(maildir: Path, keep: Iterable[str]) -> list[str]:
    """Folders in the Maildir other than INBOX and keep, as IMAP names."""
    if not maildir.is_dir():
        return []
    kept = {name for name in keep}
    names = [e.name[1:].replace(".", "/") for e in os.scandir(maildir) if e.name.startswith(".") and e.is_dir()]
    return sorted((n for n in names if n not in kept), key=lambda n: -n.count("/"))
