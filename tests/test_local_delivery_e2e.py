"""``save: {maildir|mbox}`` end to end: `postroom run` saves dave's mail (read over IMAP, or
over POP3 with delete_after) into a Maildir and an mbox, and is killed with SIGKILL halfway
through writing a message - once inside a Maildir save, once inside an mbox append (the
tests' crash-point launcher, tests/support/crash_points.py, holds it exactly there). After a clean third run,
Python's ``mailbox`` reads every message back once, byte for byte (Unix line endings; in the
mbox, lines starting "From " quoted as ">From "), with no partial message left behind."""

from __future__ import annotations

import mailbox
import time
from email.utils import formatdate
from pathlib import Path

import pytest

from tests.lab import MailLab
from tests.support import crash_points
from tests.support.daemon import Daemon, postroom_env, wait_until

COUNT = 6
STALL_AT = 3  # the 3rd save of a kind stalls: two before it are written but not recorded done

IMAP = """\
    imap: {{host: 127.0.0.1, port: {imap}, security: starttls, start_from: all,
           username: dave@example.test, password: "${{DAVE_PASSWORD}}"}}
"""
POP3 = """\
    pop3: {{host: 127.0.0.1, port: {pop3s}, security: tls, start_from: all, delete_after: true,
           poll_interval: 1s, username: dave@example.test, password: "${{DAVE_PASSWORD}}"}}
"""
CONFIG = """\
accounts:
  dave:
    address: dave@example.test
{server}rules:
  - name: keep-local
    account: dave
    match: {{}}
    actions: [{{save: {{maildir: {maildir}}}}}, {{save: {{mbox: {mbox}}}}}]
"""


def message(n: int) -> bytes:
    # Unix line endings, as Dovecot stores them; one body has a line an mbox must quote,
    # one is big enough that "halfway" is well inside its body
    body = f"body of message {n}\n"
    if n == 2:
        body += "From the desk of the sender: an mbox must quote this line.\n"
    if n == 4:
        body += "x" * 76 + "\n" + ("0123456789" * 7 + "\n") * 3000
    return (
        f"From: Sender {n} <sender{n}@example.test>\nTo: dave@example.test\nSubject: local {n}\n"
        f"Date: {formatdate()}\nMessage-ID: <local-{n}@example.test>\n\n{body}"
    ).encode()


def mbox_form(raw: bytes) -> bytes:
    """What an mboxo writer stores for ``raw`` (and Python's mailbox hands back)."""
    quoted = raw.replace(b"\nFrom ", b"\n>From ")
    return b">" + quoted if quoted.startswith(b"From ") else quoted


def saved(maildir: Path, mbox: Path) -> tuple[list[bytes], list[bytes]]:
    md = mailbox.Maildir(maildir, create=False) if (maildir / "new").is_dir() else None
    mb = mailbox.mbox(mbox, create=False) if mbox.exists() else None
    try:
        return (
            [md.get_bytes(k) for k in md.keys()] if md is not None else [],
            [mb.get_bytes(k) for k in mb.keys()] if mb is not None else [],
        )
    finally:
        if mb is not None:
            mb.close()


def stall_run(env: dict[str, str], log: Path, tmp: Path, kind: str) -> None:
    """A daemon that stops inside its STALL_AT-th save of ``kind``, SIGKILLed right there."""
    marker = tmp / f"stalled-{kind}"
    daemon = Daemon(env, log=log, command=crash_points.command(kind, STALL_AT, marker))
    try:
        wait_until(
            lambda: marker.exists() or daemon.proc.poll() is not None,
            timeout=60,
            what=f"the daemon to stall inside a {kind} save",
        )
        assert daemon.proc.poll() is None, log.read_text()[-3000:]
    finally:
        daemon.kill9()


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_kill9_mid_save_loses_and_repeats_nothing(protocol: str, tmp_path: Path, clean_lab: MailLab):
    lab = clean_lab
    raws = [message(n) for n in range(1, COUNT + 1)]
    lab.seed_maildir("dave", "INBOX", raws)
    maildir, mbox = tmp_path / "mail" / "dave", tmp_path / "mail" / "dave.mbox"
    server = (IMAP if protocol == "imap" else POP3).format(imap=lab.ports.imap, pop3s=lab.ports.pop3s)
    (tmp_path / "postroom.yaml").write_text(CONFIG.format(server=server, maildir=maildir, mbox=mbox))
    env = postroom_env(lab, tmp_path)
    log = tmp_path / "daemon.log"

    stall_run(env, log, tmp_path, "maildir")
    in_maildir, _ = saved(maildir, mbox)
    assert len(in_maildir) == STALL_AT - 1  # the stalled one is only a half in tmp/, never in new/
    assert list((maildir / "tmp").iterdir())

    stall_run(env, log, tmp_path, "mbox")
    assert b"body of message" in mbox.read_bytes()  # a half-written entry is at the tail now

    daemon = Daemon(env, log=log)
    try:
        wait_until(
            lambda: tuple(map(len, saved(maildir, mbox))) == (COUNT, COUNT),
            timeout=60,
            what="every message in the Maildir and the mbox",
        )
        if protocol == "pop3":  # deleted from the maildrop only once saved for good
            wait_until(
                lambda: (
                    not list((lab.layout.maildir("dave") / "cur").iterdir())
                    and not list((lab.layout.maildir("dave") / "new").iterdir())
                ),
                timeout=30,
                what="the maildrop emptied",
            )
        time.sleep(1.0)  # a repeat would land now
        assert daemon.terminate() == 0, log.read_text()[-3000:]
    finally:
        if daemon.proc.poll() is None:
            daemon.kill9()

    in_maildir, in_mbox = saved(maildir, mbox)
    assert sorted(in_maildir) == sorted(raws)
    assert in_mbox == [mbox_form(raw) for raw in raws]  # in order, each once, none cut
    assert mbox_form(raws[1]) != raws[1]  # the quoting was exercised
    assert not (mbox.parent / (mbox.name + ".lock")).exists()
