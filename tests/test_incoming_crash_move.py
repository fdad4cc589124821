"""kill -9 around the one big MOVE: `postroom run` archives a folder of more than a batch with
one ``UID MOVE $`` (SEARCHRES), and is SIGKILLed right before that MOVE goes out (every match
planned in the ledger, nothing moved) or right after it returned (everything moved, nothing
recorded) — tests/support/crash_points.py holds it there. After a clean second run every
report is in Archive exactly once, the rest still in INBOX, and the second run moved only what
the first had not (the ledger's in-doubt check on the server)."""

from __future__ import annotations

import sqlite3
from collections import Counter
from email.utils import formatdate
from pathlib import Path

import pytest

from tests.lab import MailLab
from tests.support import crash_points
from tests.support.daemon import Daemon, postroom_env, wait_until

MESSAGES = 4400  # 2,200 reports: more than the watcher's 2,000-message batch, yet one MOVE

CONFIG = """\
accounts:
  alice:
    address: alice@example.test
    imap: {{host: 127.0.0.1, port: {imap}, security: starttls, start_from: all,
           username: alice@example.test, password: "${{ALICE_PASSWORD}}"}}
rules:
  - name: archive
    account: alice
    match: {{subject: {{contains: "[report]"}}}}
    actions: [{{move: Archive}}]
"""


def message(n: int) -> bytes:
    subject = f"[report] {n}" if n % 2 else f"hello {n}"
    return (
        f"From: Sender {n} <sender{n}@example.test>\nTo: alice@example.test\nSubject: {subject}\n"
        f"Date: {formatdate()}\nMessage-ID: <m-{n}@example.test>\n\nbody {n}\n"
    ).encode()


def message_ids(lab: MailLab, folder: str) -> Counter[str]:
    with lab.imap_client("alice") as client:
        if not client.folder_exists(folder):
            return Counter()
        client.select_folder(folder, readonly=True)
        uids = client.search("ALL")
        rows = client.fetch(uids, ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"]).values() if uids else []
        return Counter(b" ".join(r[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"].split()[1:]).decode() for r in rows)


def store_rows(state: Path, sql: str) -> list[tuple]:
    [db] = [p for p in state.rglob("*") if p.suffix in (".db", ".sqlite", ".sqlite3")]
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


@pytest.mark.parametrize("point", ["premove", "move"])
def test_kill9_around_the_one_big_move(tmp_path: Path, clean_lab: MailLab, point: str):
    lab = clean_lab
    lab.seed_maildir("alice", "INBOX", [message(n) for n in range(MESSAGES)])
    with lab.imap_client("alice") as client:
        if not client.folder_exists("Archive"):
            client.create_folder("Archive")
    (tmp_path / "postroom.yaml").write_text(CONFIG.format(imap=lab.ports.imap))
    env = postroom_env(lab, tmp_path)
    log = tmp_path / "daemon.log"
    marker = tmp_path / "stalled"
    reports = {f"<m-{n}@example.test>" for n in range(1, MESSAGES, 2)}

    first = Daemon(env, log=log, command=crash_points.command(point, 1, marker))
    try:
        wait_until(lambda: marker.exists() or first.proc.poll() is not None, timeout=60, what="the MOVE")
        assert first.proc.poll() is None, log.read_text()[-3000:]
    finally:
        first.kill9()
    assert marker.read_text() == "$"  # the whole pass was one MOVE of the saved result
    moved_before = len(reports) if point == "move" else 0
    assert sum(message_ids(lab, "Archive").values()) == moved_before
    planned = store_rows(tmp_path / "state", "SELECT status, count(*) FROM actions GROUP BY status")
    assert planned == [("planned", len(reports))]  # committed before the MOVE, nothing after it
    assert store_rows(tmp_path / "state", "SELECT count(*) FROM inbound") == [(0,)]

    second = Daemon(env, log=log)
    try:
        wait_until(
            lambda: store_rows(tmp_path / "state", "SELECT last_uid FROM checkpoints") != [],
            timeout=60,
            what="the second run's pass",
        )
        assert second.terminate() == 0, log.read_text()[-3000:]
    finally:
        if second.proc.poll() is None:
            second.kill9()

    assert message_ids(lab, "Archive") == Counter({mid: 1 for mid in reports})
    assert set(message_ids(lab, "INBOX")) == {f"<m-{n}@example.test>" for n in range(0, MESSAGES, 2)}
    statuses = dict(store_rows(tmp_path / "state", "SELECT status, count(*) FROM actions GROUP BY status"))
    if point == "premove":  # in doubt, checked (all still there), moved once, recorded
        assert statuses == {"done": len(reports)}
    else:  # gone from INBOX: the next pass never sees them again; nothing repeated
        assert statuses == {"planned": len(reports)}
