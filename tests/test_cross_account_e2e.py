"""``move: {account: bob, folder: "2026"}`` end to end: `postroom run` APPENDs alice's mail into
bob's folder and deletes it from alice's INBOX, and is SIGKILLed right after an APPEND that
nothing has recorded yet (tests/support/crash_points.py holds it there: the worst
moment, the copy exists and the source is still there). After a clean second run every
message is in bob's folder exactly once and gone from alice's INBOX."""

from __future__ import annotations

import email
import email.policy
import time
from collections import Counter
from email.utils import formatdate
from pathlib import Path

from postroom.incoming.transfer import MARKER

from tests.lab import MailLab
from tests.support import crash_points
from tests.support.daemon import Daemon, postroom_env, wait_until

COUNT = 8
STALL_AT = 3

CONFIG = """\
accounts:
  alice:
    address: alice@example.test
    imap: {{host: 127.0.0.1, port: {imap}, security: starttls, start_from: all,
           username: alice@example.test, password: "${{ALICE_PASSWORD}}"}}
  bob:
    address: bob@example.test
    imap: {{host: 127.0.0.1, port: {imap}, security: starttls,
           username: bob@example.test, password: "${{BOB_PASSWORD}}"}}
rules:
  - name: to-archive
    account: alice
    match: {{}}
    actions: [{{move: {{account: bob, folder: "2026"}}}}]
"""


def message(n: int) -> bytes:
    return (
        f"From: Sender {n} <sender{n}@example.test>\nTo: alice@example.test\nSubject: archive {n}\n"
        f"Date: {formatdate()}\nMessage-ID: <archive-{n}@example.test>\n\nbody {n}\n"
    ).encode()


def folder(lab: MailLab, user: str, name: str) -> list[bytes]:
    with lab.imap_client(user) as client:
        if not client.folder_exists(name):
            return []
        client.select_folder(name, readonly=True)
        uids = client.search("ALL")
        return [d[b"BODY[]"] for d in client.fetch(uids, ["BODY.PEEK[]"]).values()] if uids else []


def ids(raws: list[bytes]) -> Counter[str]:
    return Counter(str(email.message_from_bytes(r, policy=email.policy.default)["Message-ID"]) for r in raws)


def test_cross_account_move_survives_kill9(tmp_path: Path, clean_lab: MailLab):
    lab = clean_lab
    lab.seed_maildir("alice", "INBOX", [message(n) for n in range(COUNT)])
    (tmp_path / "postroom.yaml").write_text(CONFIG.format(imap=lab.ports.imap))
    env = postroom_env(lab, tmp_path)
    log = tmp_path / "daemon.log"
    marker = tmp_path / "stalled"

    first = Daemon(env, log=log, command=crash_points.command("append", STALL_AT, marker))
    try:
        wait_until(
            lambda: marker.exists() or first.proc.poll() is not None,
            timeout=60,
            what="the daemon to stall after an APPEND",
        )
        assert first.proc.poll() is None, log.read_text()[-3000:]
    finally:
        first.kill9()
    assert len(folder(lab, "bob", "2026")) == STALL_AT  # appended, none recorded, none deleted yet
    assert len(folder(lab, "alice", "INBOX")) == COUNT

    second = Daemon(env, log=log)
    try:
        wait_until(lambda: not folder(lab, "alice", "INBOX"), timeout=60, what="alice's INBOX emptied")
        time.sleep(1.0)  # a repeat would land now
        assert second.terminate() == 0, log.read_text()[-3000:]
    finally:
        if second.proc.poll() is None:
            second.kill9()

    archived = folder(lab, "bob", "2026")
    assert ids(archived) == Counter({f"<archive-{n}@example.test>": 1 for n in range(COUNT)})
    assert all(raw.startswith(MARKER.encode() + b": pr-") for raw in archived)
