"""Bounce tracking end to end in the lab: a merge row to an address Postfix accepts and then
bounces; Postfix's real DSN comes back to alice's INBOX; the daemon records it (row `bounced`
with 5.1.1, address suppressed) without running alice's rules on it; the next run leaves the
address out (logged and counted) and the other rows are sent. And the forgeries of issue 18,
delivered by Postfix beside the real DSN: each is counted unverified and left to the rules."""

from __future__ import annotations

import email
import email.policy
import json
import re
import smtplib
import sqlite3
import time
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
    wait_ready,
    wait_until,
)
from tests.support.dsn_samples import postfix_dsn

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


# -- forged bounces (issue 18): delivered by Postfix into the bounce folder -------------------
FORGERY_CONFIG_TO = 'to: ["{{ row.email }}"]\n    cc: ["{{ row.cc }}"]'


def forged_dsn(delivered_to: str, *, names: str, to: str | None = None) -> bytes:
    """The lab's real DSN as a forger would send it: its trace headers dropped (the lab adds
    its own), addressed to ``to`` (default: ``delivered_to``), naming ``names``."""
    raw = postfix_dsn(delivered_to, to=to, names=names)
    return raw[raw.index(b"Date: ") :]


def flagged_list(lab) -> list[tuple[str, bool]]:
    """(Subject, flagged) of every message in alice's INBOX: several forgeries share a subject."""
    with lab.imap_client("alice") as client:
        client.select_folder("INBOX", readonly=True)
        uids = client.search("ALL")
        rows = client.fetch(uids, ["FLAGS", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]"]) if uids else {}
    return sorted(
        (row[b"BODY[HEADER.FIELDS (SUBJECT)]"].decode().partition(":")[2].strip(), b"\\Flagged" in row[b"FLAGS"])
        for row in rows.values()
    )


def submit(lab, rcpt: str, raw: bytes, sender: str = "") -> None:
    """Through the lab's Postfix (SMTP from loopback, as any outside sender would reach it)."""
    with smtplib.SMTP("127.0.0.1", lab.ports.smtp, timeout=30) as smtp:
        smtp.sendmail(sender, [rcpt], raw)


def test_forged_bounces_through_postfix_suppress_nobody_while_the_real_one_still_does(tmp_path, clean_lab):
    env = setup(tmp_path, clean_lab)
    config = (tmp_path / "postroom.yaml").read_text().replace('to: ["{{ row.email }}"]', FORGERY_CONFIG_TO)
    (tmp_path / "postroom.yaml").write_text(config.replace("SELECT name, email,", "SELECT name, email, cc,"))
    db = sqlite3.connect(tmp_path / "shop.db")
    with db:
        db.execute("ALTER TABLE customers ADD COLUMN cc TEXT DEFAULT ''")
        db.execute("UPDATE customers SET cc = 'carol@example.test' WHERE email = 'bob@example.test'")
        db.execute("UPDATE customers SET email = 'dave@example.test' WHERE name = 'C Carol'")
    db.close()
    first = run_cli(["send", "merge"], env)
    assert first.returncode == 0 and "sent 3" in first.stdout, first.stdout + first.stderr

    def received(user: str) -> email.message.Message:
        (raw,) = clean_lab.wait_for_messages(user, 1)
        return email.message_from_bytes(raw, policy=email.policy.default)

    bob, carol, dave = received("bob"), received("carol"), received("dave")
    assert bob["Message-ID"] == carol["Message-ID"]  # one message, one transaction per recipient:
    bob_path, carol_path, dave_path = (m["Return-Path"].strip("<>") for m in (bob, carol, dave))
    assert bob_path != carol_path  # each sees only a return path made for them
    clean_lab.wait_for_messages("alice", 1, timeout=20)  # Postfix's real DSN for the dead address

    # 1. bob, a recipient, reports carol (another recipient of the same message) through his own path
    submit(clean_lab, bob_path, forged_dsn(bob_path, names="carol@example.test"), sender="bob@example.test")
    # 2. a plain email with X-Failed-Recipients and a Message-ID line, to alice herself
    plain = mail("mailer-daemon@evil.test", "alice@example.test", "Mail delivery failed")
    plain["X-Failed-Recipients"] = "dave@example.test"
    plain.set_content(f"550 5.1.1 <dave@example.test>: user unknown\n\nMessage-ID: {dave['Message-ID']}\n")
    submit(clean_lab, "alice@example.test", plain.as_bytes())
    # 3. only the To: header names dave's return path; the mail goes to plain alice@
    submit(clean_lab, "alice@example.test", forged_dsn("alice@example.test", to=dave_path, names="dave@example.test"))
    # 4. dave's own path, naming an outsider for his one-recipient message
    submit(clean_lab, dave_path, forged_dsn(dave_path, names="outsider@example.org"), sender="dave@example.test")
    clean_lab.wait_for_messages("alice", 5, timeout=20)

    port = free_port()
    daemon = Daemon({**env, "POSTROOM_HTTP": f"127.0.0.1:{port}"}, log=tmp_path / "daemon.log")
    try:
        daemon.wait_log("message bounced")
        wait_until(
            lambda: sum(f for _, f in flagged_list(clean_lab)) == 4, what="the rule's flag on the four forgeries"
        )
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert 'postroom_bounces_total{account="alice",kind="unverified"} 4.0' in metrics, metrics
        assert 'postroom_bounces_total{account="alice",kind="hard"} 1.0' in metrics
    finally:
        assert daemon.terminate() == 0
    events = list(iter_json_lines(daemon.log))
    unverified = [e for e in events if e.get("event", "").startswith("bounce report not verified")]
    assert len(unverified) == 4, unverified
    assert [e["recipient"] for e in events if e.get("event") == "message bounced"] == [DEAD]
    # the forgeries went to the rules (flagged); the real DSN, consumed, did not
    assert flagged_list(clean_lab) == [
        ("Mail delivery failed", True),
        *[("Undelivered Mail Returned to Sender", False)],
        *[("Undelivered Mail Returned to Sender", True)] * 3,
    ]
    listed = run_cli(["suppressions"], env).stdout
    assert DEAD in listed and "carol@" not in listed and "dave@" not in listed and "outsider@" not in listed, listed
    counts = run_cli(["outbox"], env).stdout
    assert "bounced 1" in counts and "sent 2" in counts, counts


# -- a hostile bounce: big, made to be slow to read (issue 18) ----------------------------------
def hostile_report(size: int = 192 * 1024) -> bytes:
    """A bounce-looking email of ``size`` bytes in short lines (Postfix takes it as is), its
    text blank lines of spaces and tabs: the old ``^\\s*Message-ID:`` and ``^\\s*5xx``
    patterns ran from every line start to the end of the run, quadratic (22.6 s of a stalled
    event loop for such a message in issue 18)."""
    block = " \r\n\r\n\t\r\n  \r\n"
    body = (block * (size // len(block) + 1))[: size - 300]
    head = (
        "From: MAILER-DAEMON@evil.test\r\nTo: alice@example.test\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "X-Failed-Recipients: dave@example.test\r\nMessage-ID: <hostile@evil.test>\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    )
    return (head + body + "\r\n").encode()


def test_a_192k_hostile_bounce_through_imap_never_stalls_healthz(tmp_path, clean_lab):
    env = setup(tmp_path, clean_lab)
    port = free_port()
    daemon = Daemon({**env, "POSTROOM_HTTP": f"127.0.0.1:{port}"}, log=tmp_path / "daemon.log")
    slowest = 0.0
    try:
        wait_ready(port, daemon)
        raw = hostile_report()
        assert len(raw) >= 190 * 1024 and max(map(len, raw.split(b"\r\n"))) < 100
        submit(clean_lab, "alice@example.test", raw, sender="mailer-daemon@evil.test")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # /healthz, ten times a second, until the rules had it
            started = time.monotonic()
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
            slowest = max(slowest, time.monotonic() - started)
            if "bounce report not verified" in daemon.log.read_text(errors="replace") and any(
                f for _, f in flagged_list(clean_lab)
            ):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"the hostile report was not handled in time:\n{daemon.log.read_text()[-3000:]}")
    finally:
        assert daemon.terminate() == 0
    print(f"slowest /healthz: {slowest:.3f} s")
    assert slowest < 1.0, f"/healthz took {slowest:.2f} s while the report was read"
    assert flagged_list(clean_lab) == [("Undelivered Mail Returned to Sender", True)]  # the rules got it
    assert "no suppressed addresses" in run_cli(["suppressions"], env).stdout
