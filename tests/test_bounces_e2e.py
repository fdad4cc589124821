"""Bounce tracking end to end in the lab: a merge row to an address Postfix accepts and then
bounces; Postfix's real DSN comes back to alice's INBOX; the daemon records it (row `bounced`
with 5.1.1, address suppressed) without running alice's rules on it; the next run leaves the
address out (logged and counted) and the other rows are sent."""

from __future__ import annotations

import email
import email.policy
import json
import re
import sqlite3
from pathlib import Path

import httpx

from tests.lab.config import DEAD_DOMAIN
from tests.support.daemon import (
    ACCOUNT_CONFIG,
    Daemon,
    free_port,
    iter_json_lines,
    mail,
    postroom_env,
    run_cli,
    wait_until,
)

DEAD = f"nobody@{DEAD_DOMAIN}"

CONFIG = (
    ACCOUNT_CONFIG
    + """\
    bounces: {{folder: INBOX, verp: true}}
jobs:
  merge:
    schedule: {{cron: "0 0 1 1 *"}}
    account: alice
    template: statement
    for_each: customers
    to: ["{{{{ row.email }}}}"]
    data:
      customers: {{sql: "SELECT name, email, balance FROM customers ORDER BY name", database: "sqlite:///shop.db"}}
rules:
  - name: flag-everything
    account: alice
    match: {{}}
    actions: [{{flag: "\\\\Flagged"}}]
"""
)


def setup(workdir: Path, lab) -> dict[str, str]:
    text = CONFIG.format(smtp=lab.ports.smtp, imap=lab.ports.imap)
    head, _, tail = text.rpartition('"${ALICE_PASSWORD}"}')  # imap: take what is there at the first start
    text = head + '"${ALICE_PASSWORD}", start_from: all}' + tail
    (workdir / "postroom.yaml").write_text(text)
    db = sqlite3.connect(workdir / "shop.db")
    with db:
        db.execute("CREATE TABLE customers (name TEXT, email TEXT, balance REAL)")
        db.executemany(
            "INSERT INTO customers VALUES (?, ?, ?)",
            [("A Bob", "bob@example.test", 10.0), ("B Nobody", DEAD, 20.0), ("C Carol", "carol@example.test", 30.0)],
        )
    db.close()
    return postroom_env(lab, workdir)


def flagged(lab, user: str = "alice") -> dict[str, bool]:
    """Subject -> whether the message carries \\Flagged, for every message in INBOX."""
    with lab.imap_client(user) as client:
        client.select_folder("INBOX", readonly=True)
        uids = client.search("ALL")
        rows = client.fetch(uids, ["FLAGS", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]"]) if uids else {}
    return {
        row[b"BODY[HEADER.FIELDS (SUBJECT)]"].decode().partition(":")[2].strip(): b"\\Flagged" in row[b"FLAGS"]
        for row in rows.values()
    }


def test_a_hard_bounce_marks_the_row_suppresses_the_address_and_the_next_run_skips_it(tmp_path, clean_lab):
    env = setup(tmp_path, clean_lab)
    first = run_cli(["send", "merge"], env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "sent 3" in first.stdout  # Postfix took all three: the refusal comes after
    (to_bob,) = clean_lab.wait_for_messages("bob", 1)
    bob_msg = email.message_from_bytes(to_bob, policy=email.policy.default)
    random_part = bob_msg["Message-ID"].strip("<>").partition("@")[0]
    assert re.fullmatch(r"<alice\+bounce-\d+-[0-9a-f]{24}@example\.test>", bob_msg["Return-Path"])  # signed VERP
    assert random_part not in bob_msg["Return-Path"]

    (dsn,) = clean_lab.wait_for_messages("alice", 1, timeout=20)  # Postfix's real DSN
    assert b"Status: 5.1.1" in dsn and b"Final-Recipient: rfc822; " + DEAD.encode() in dsn
    clean_lab.deliver("alice", mail("bob@example.test", "alice@example.test", "a person writes").as_bytes())

    port = free_port()
    daemon = Daemon({**env, "POSTROOM_HTTP": f"127.0.0.1:{port}"}, log=tmp_path / "daemon.log")
    try:
        daemon.wait_log("message bounced")
        # the person's mail got the rule; the DSN, consumed as a bounce, did not
        wait_until(lambda: flagged(clean_lab).get("a person writes"), what="the rule's flag")
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert 'postroom_bounces_total{account="alice",kind="hard"} 1.0' in metrics
        assert 'postroom_inbound_messages_total{account="alice",folder="INBOX",result="bounce"} 1.0' in metrics
    finally:
        assert daemon.terminate() == 0
    subjects = flagged(clean_lab)
    assert subjects == {"Undelivered Mail Returned to Sender": False, "a person writes": True}
    (bounced,) = [e for e in iter_json_lines(daemon.log) if e.get("event") == "message bounced"]
    assert (bounced["recipient"], bounced["status"], bounced["suppressed"]) == (DEAD, "5.1.1", True)

    listed = run_cli(["outbox", "--bounced"], env)
    assert listed.returncode == 0 and DEAD in listed.stdout and "5.1.1" in listed.stdout, listed.stdout
    assert "user unknown (lab dead domain)" in listed.stdout
    counts = run_cli(["outbox"], env).stdout
    assert "bounced 1" in counts and "sent 2" in counts, counts
    suppressed = run_cli(["suppressions", "alice"], env)
    assert DEAD in suppressed.stdout and "5.1.1" in suppressed.stdout, suppressed.stdout
    # its evidence: the report's ledger key, date, sender, status and diagnostic
    assert f"alice {DEAD}: report alice/<" in suppressed.stdout, suppressed.stdout
    assert "DSN of " in suppressed.stdout and "from MAILER-DAEMON@" in suppressed.stdout
    assert "failed 5.1.1 user unknown (lab dead domain)" in suppressed.stdout

    second = run_cli(["send", "merge"], env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "1 suppressed recipient(s) left out" in second.stdout
    assert "sent 2, deferred 0, dead 0 (of 2)" in second.stdout
    (skipped,) = [
        e
        for e in map(json.loads, filter(None, second.stderr.splitlines()))
        if e["event"] == "suppressed recipients left out of the run"
    ]
    assert (skipped["count"], skipped["recipients"]) == (1, [DEAD])
    clean_lab.wait_for_messages("bob", 2)
    clean_lab.wait_for_messages("carol", 2)
    counts = run_cli(["outbox"], env).stdout
    assert "bounced 1" in counts and "sent 4" in counts, counts

    removed = run_cli(["suppressions", "remove", DEAD], env)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "no suppressed addresses" in run_cli(["suppressions"], env).stdout
    again = run_cli(["suppressions", "remove", DEAD], env)
    assert again.returncode == 1 and "not on any suppression list" in again.stderr
