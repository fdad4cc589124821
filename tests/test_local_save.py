"""Local Maildir and mbox writing (``postroom.incoming.local_save``) on real files: what Python's
``mailbox`` reads back, the in-doubt checks, a crash cut at every byte of an mbox entry, and
the mbox locks other programs honour."""

from __future__ import annotations

import fcntl
import mailbox
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from postroom.errors import PermanentError, TransientError
from postroom.incoming.local_save import Mbox, envelope_sender, maildir_find, save_maildir

NOW = datetime(2026, 11, 29, 6, 0, tzinfo=UTC)
RAW = (
    b"Return-Path: <dora@elsewhere.test>\r\nFrom: Dora <dora@elsewhere.test>\r\nSubject: hi\r\n\r\n"
    b"From here on, a line an mbox must quote.\r\n\r\nFurther down, a paragraph.\r\nbye\r\n"
)
LF = RAW.replace(b"\r\n", b"\n")


def test_maildir_is_read_back_byte_for_byte_and_an_in_doubt_save_is_not_repeated(tmp_path):
    root = tmp_path / "deep" / "Maildir"
    first = save_maildir(root, RAW, unique="abc123", now=NOW, in_doubt=False)
    assert first["file"].startswith("new/") and not list((root / "tmp").iterdir())
    again = save_maildir(root, RAW, unique="abc123", now=NOW, in_doubt=True)
    assert again["verified"] == "already saved"
    box = mailbox.Maildir(root, create=False)
    assert [box.get_bytes(k) for k in box.keys()] == [LF]
    # a reader moved it to cur/ and marked it seen: still found
    name = first["file"].split("/", 1)[1]
    os.rename(root / "new" / name, root / "cur" / f"{name}:2,S")
    assert maildir_find(root, "abc123") == f"cur/{name}:2,S"


def test_mbox_quotes_from_lines_and_is_read_back_as_python_writes_it(tmp_path):
    path = tmp_path / "box.mbox"
    with Mbox(path) as box:
        box.append(RAW, sender=envelope_sender(RAW), now=NOW)
        box.append(RAW, sender="", now=NOW)
    theirs = mailbox.mbox(tmp_path / "python.mbox")
    theirs.add(LF)
    theirs.flush()
    python_form = [theirs.get_bytes(k) for k in theirs.keys()]
    theirs.close()
    ours = mailbox.mbox(path)
    assert [ours.get_bytes(k) for k in ours.keys()] == python_form * 2
    assert ours.get_bytes(ours.keys()[0]).count(b"\n>From here on") == 1
    text = path.read_bytes()
    assert text.startswith(b"From dora@elsewhere.test Sun Nov 29 06:00:00 2026\n")
    assert b"\n\nFrom MAILER-DAEMON " in text and text.endswith(b"bye\n\n")
    ours.close()


def test_an_mbox_append_cut_at_any_byte_is_repaired_and_a_whole_one_is_not_repeated(tmp_path):
    path = tmp_path / "box.mbox"
    with Mbox(path) as box:
        box.append(b"Subject: before\n\nkept\n", sender="a@b.test", now=NOW)
    before = path.read_bytes()
    with Mbox(path) as box:
        box.append(RAW, sender=envelope_sender(RAW), now=NOW)
    whole = path.read_bytes()
    for cut in range(len(before) + 1, len(whole) + 1):
        path.write_bytes(whole[:cut])  # a crash after writing this much
        with Mbox(path) as box:
            found = box.settle([("x@other.test", b"Subject: other\n\n"), (envelope_sender(RAW), RAW)])
            if found is None:
                box.append(RAW, sender=envelope_sender(RAW), now=NOW)
        assert found == (1 if cut == len(whole) else None), cut
        assert path.read_bytes() == whole, cut


def test_a_dotlock_left_by_a_dead_postroom_is_taken_back(tmp_path):
    path = tmp_path / "box.mbox"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "box.mbox.lock").write_text(f"{socket.gethostname()} {dead.stdout.strip()}\n")
    with Mbox(path, lock_wait=1) as box:
        box.append(RAW, sender="", now=NOW)
    assert not (tmp_path / "box.mbox.lock").exists()


def test_a_lock_held_by_another_program_waits_then_is_transient(tmp_path):
    path = tmp_path / "box.mbox"
    path.write_bytes(b"")
    with open(path, "rb+") as other:
        fcntl.lockf(other, fcntl.LOCK_EX)  # as mutt does; a separate process would see the same
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                (
                    "from pathlib import Path; from postroom.incoming.local_save import Mbox\n"
                    "from postroom.errors import TransientError\n"
                    f"try:\n    Mbox(Path({str(path)!r}), lock_wait=0.3).__enter__()\n"
                    "except TransientError as e:\n    print('transient', e)\n"
                ),
            ],
            capture_output=True,
            text=True,
        )
    assert child.stdout.startswith("transient") and "locked by another program" in child.stdout, child.stderr
    assert not (tmp_path / "box.mbox.lock").exists()  # the dotlock it took was given back


def test_a_path_that_cannot_be_a_mailbox_is_permanent(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(PermanentError):
        save_maildir(tmp_path / "file" / "Maildir", RAW, unique="u", now=NOW, in_doubt=False)
    with pytest.raises(PermanentError), Mbox(tmp_path / "file" / "box.mbox"):
        pass
    assert not issubclass(PermanentError, TransientError)
