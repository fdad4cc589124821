"""Bounce reports: the parser on real samples, VERP return paths, and the intake that records a
bounce against our outbox (ledgered once, hard bounces suppressed) or leaves it to the rules."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from postroom.config.model import AccountConfig
from postroom.incoming.bounces import BounceIntake
from postroom.incoming.message import ParsedMessage
from postroom.mail.dsn import parse_bounce
from postroom.mail.verp import message_id_from, return_path
from postroom.store import NewMessage, Store
from postroom.store.outbox import Settlement

from tests.support.store_fixtures import any_store, store  # noqa: F401

DATA = Path(__file__).parent / "data"
# Postfix 3.7's own DSN, captured in the lab: a merge row to nobody@dead.example.test, which
# the lab routes to the error(8) transport after accepting it (tests/lab/config.py).
POSTFIX = DATA / "dsn" / "postfix-error-5.1.1.eml"
POSTFIX_TOKEN = "0123456789abcdef0123456789abcdef"
POSTFIX_MESSAGE_ID = f"<{POSTFIX_TOKEN}@example.test>"
NOW = datetime(2026, 11, 29, 6, 0, tzinfo=UTC)

# Exim without a delivery-status part (the format before it sent RFC 3464 by default):
# X-Failed-Recipients names the address, the SMTP reply is in the text.
EXIM = b"""\
Return-path: <>
From: Mail Delivery System <Mailer-Daemon@mx.example.org>
To: alice@example.test
Subject: Mail delivery failed: returning message to sender
X-Failed-Recipients: gone@example.org
Auto-Submitted: auto-replied

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  gone@example.org
    SMTP error from remote mail server after RCPT TO:<gone@example.org>:
    550 5.1.1 <gone@example.org>: Recipient address rejected: User unknown

------ This is a copy of the message, including all the headers. ------

From: alice@example.test
To: gone@example.org
Subject: hello
Message-ID: <abcdefabcdefabcdefabcdefabcdefab@example.test>

hello
"""

# qmail-send's plain-text bounce.
QMAIL = b"""\
Return-Path: <>
From: MAILER-DAEMON@mail.example.net
To: alice@example.test
Subject: failure notice

Hi. This is the qmail-send program at mail.example.net.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<nobody@example.net>:
Sorry, no mailbox here by that name. (#5.1.1)

--- Below this line is a copy of the message.

Message-ID: <feedfacefeedfacefeedfacefeedface@example.test>
"""


def test_postfix_dsn_from_the_lab():
    bounce = parse_bounce(POSTFIX.read_bytes())
    assert bounce is not None and bounce.standard
    (r,) = bounce.recipients
    assert (r.address, r.action, r.status) == ("nobody@dead.example.test", "failed", "5.1.1")
    assert r.diagnostic == "user unknown (lab dead domain)"  # "X-Postfix; " dropped
    assert r.hard
    assert bounce.original_message_id == POSTFIX_MESSAGE_ID  # from the returned message/rfc822


def test_corpus_dsns():
    # tests/data/corpus (CPython's email tests, see NOTICE): a Sun Internet Mail Server report
    # whose returned headers are only quoted in its text, and a spam firewall's report for
    # many recipients with a text/rfc822-headers part.
    sims = parse_bounce((DATA / "corpus" / "cpython-test-email" / "msg_16.txt").read_bytes())
    assert sims is not None
    assert [(r.address, r.status, r.hard) for r in sims.recipients] == [("jangel1@cougar.noc.ucla.edu", "5.0.0", True)]
    assert sims.original_message_id == "<002001c144a6$8752e060$56104586@oxy.edu>"

    firewall = parse_bounce((DATA / "corpus" / "cpython-test-email" / "msg_43.txt").read_bytes())
    assert firewall is not None and len(firewall.recipients) > 10
    assert {r.status for r in firewall.recipients} == {"5.7.1"}
    assert firewall.recipients[0].diagnostic.startswith("550 5.7.1 Message content rejected")
    assert firewall.original_message_id == "<edab.7804f5cb8070@python.org>"


def test_non_standard_bounces():
    exim = parse_bounce(EXIM)
    assert exim is not None and not exim.standard
    assert [(r.address, r.status, r.hard) for r in exim.recipients] == [("gone@example.org", "5.1.1", True)]
    assert exim.original_message_id == "<abcdefabcdefabcdefabcdefabcdefab@example.test>"

    qmail = parse_bounce(QMAIL)
    assert qmail is not None
    assert [(r.address, r.status) for r in qmail.recipients] == [("nobody@example.net", "5.1.1")]
    assert qmail.original_message_id == "<feedfacefeedfacefeedfacefeedface@example.test>"


def test_delayed_and_soft_reports_are_not_hard():
    delayed = (
        POSTFIX.read_bytes().replace(b"Action: failed", b"Action: delayed").replace(b"Status: 5.1.1", b"Status: 4.4.1")
    )
    (r,) = parse_bounce(delayed).recipients
    assert (r.action, r.status, r.hard) == ("delayed", "4.4.1", False)


@pytest.mark.parametrize("name", ["sample-nonspam.txt", "sample-spam.txt"])
def test_ordinary_mail_is_no_bounce(name):
    assert parse_bounce((DATA / "corpus" / "spamassassin" / name).read_bytes()) is None


def test_every_corpus_message_parses_without_raising():
    for path in sorted((DATA / "corpus").rglob("*.txt")):
        parse_bounce(path.read_bytes())  # None or a Bounce; never an exception


def test_verp_round_trip():
    mid = f"<{POSTFIX_TOKEN}@example.test>"
    path = return_path("alice@example.test", mid)
    assert path == f"alice+bounce-{POSTFIX_TOKEN}@example.test"
    assert message_id_from(path, "alice@example.test") == mid
    assert message_id_from(path.upper(), "alice@example.test") == mid
    assert message_id_from(f"bob+bounce-{POSTFIX_TOKEN}@example.test", "alice@example.test") is None
    assert message_id_from("alice@example.test", "alice@example.test") is None
    assert return_path("alice@example.test", "<not-ours.1@example.test>") == "alice@example.test"
    assert return_path("alice@example.test", mid, "-").startswith("alice-bounce-")


# -- the intake against the store --------------------------------------------------------------
def account(verp: bool = False) -> AccountConfig:
    return AccountConfig.model_validate(
        {
            "address": "alice@example.test",
            "imap": {"host": "127.0.0.1"},
            "bounces": {"folder": "INBOX", "verp": verp},
        }
    )


def sent_row(
    s: Store, message_id: str = POSTFIX_MESSAGE_ID, to: str = "nobody@dead.example.test", account_name: str = "alice"
) -> int:
    s.outbox.enqueue(
        [
            NewMessage(
                dedup_key=f"k{message_id}",
                message_id=message_id,
                account=account_name,
                envelope_from="alice@example.test",
                recipients=[to],
                raw=b"x",
                origin="merge",
            )
        ],
        now=NOW,
    )
    (item,) = s.outbox.by_message_ids([message_id])
    s.outbox.settle_many([Settlement("sent", item, NOW, delivered=[to])])
    return item.id


def consume(intake: BounceIntake, raw: bytes, key: str = "alice/INBOX/1/1") -> str | None:
    return intake.consume(key, ParsedMessage.from_bytes(raw, key=key), raw)


def test_a_bounce_marks_the_row_and_suppresses_once(any_store):  # noqa: F811
    row = sent_row(any_store)
    other = sent_row(any_store, message_id="<11111111111111111111111111111111@example.test>", to="bob@example.test")
    intake = BounceIntake("alice", account(), any_store.outbox, any_store.bounces, clock=lambda: NOW)
    assert consume(intake, POSTFIX.read_bytes()) == f"bounce report for outbox {row}"
    assert any_store.outbox.get(row).status == "bounced"
    assert "5.1.1" in any_store.outbox.get(row).last_error
    assert any_store.outbox.get(other).status == "sent"
    assert any_store.bounces.suppressed("alice") == {"nobody@dead.example.test"}
    ((bounced),) = any_store.bounces.bounced()
    assert [(b.recipient, b.status, b.hard) for b in bounced.lines] == [("nobody@dead.example.test", "5.1.1", True)]
    # the same report again (a retry, a crash before the inbound row was finished): ledgered once
    assert "recorded before" in consume(intake, POSTFIX.read_bytes(), key="alice/INBOX/2/1")
    assert len(any_store.bounces.bounced()[0].lines) == 1
    assert any_store.bounces.remove("Nobody@Dead.Example.Test") == 1
    assert any_store.bounces.suppressed("alice") == set()


def test_verp_finds_the_message_when_the_report_quotes_nothing(store):  # noqa: F811
    row = sent_row(store)
    # the returned message cut off: only the VERP address it was delivered to says which
    raw = POSTFIX.read_bytes().split(b"Content-Description: Undelivered Message")[0]
    assert parse_bounce(raw).original_message_id is None
    assert consume(BounceIntake("alice", account(verp=False), store.outbox, store.bounces), raw) is None
    assert consume(BounceIntake("alice", account(verp=True), store.outbox, store.bounces), raw) is not None
    assert store.outbox.get(row).status == "bounced"


def test_reports_that_are_not_ours_go_to_the_rules(store):  # noqa: F811
    intake = BounceIntake("alice", account(), store.outbox, store.bounces, clock=lambda: NOW)
    assert consume(intake, POSTFIX.read_bytes()) is None  # no such message in the outbox
    sent_row(store, account_name="carol")
    assert consume(intake, POSTFIX.read_bytes()) is None  # carol's message, not alice's
    sent_row(store, message_id="<abcdefabcdefabcdefabcdefabcdefab@example.test>", to="someone@example.org")
    assert consume(intake, EXIM) is not None  # one recipient each way: an alias rewrote it
    assert store.bounces.suppressed("alice") == {"someone@example.org"}
    assert store.bounces.suppressed("carol") == set()


# -- jobs leave suppressed addresses out --------------------------------------------------------
async def test_a_run_leaves_suppressed_recipients_out_and_counts_them(store, tmp_path):  # noqa: F811
    from postroom.config import Config
    from postroom.mail.templates import TemplateRenderer
    from postroom.outgoing.jobs import JobRunner
    from postroom.store.bounces import BounceLine

    (tmp_path / "t.j2").write_text("{% block subject %}hi{% endblock %}{% block text %}hello{% endblock %}")
    (tmp_path / "people.json").write_text(
        '[{"to": "Gone@Dead.Example.Test", "cc": "bob@example.test"}, {"to": "gone@dead.example.test", "cc": ""},'
        ' {"to": "carol@example.test", "cc": ""}]'
    )
    cfg = Config.model_validate(
        {
            "accounts": {
                "alice": {
                    "address": "alice@example.test",
                    "smtp": {"host": "127.0.0.1"},
                    "imap": {"host": "127.0.0.1"},
                    "bounces": {"verp": True},
                }
            },
            "jobs": {
                "merge": {
                    "schedule": {"every": "1h"},
                    "account": "alice",
                    "template": "t",
                    "for_each": "people",
                    "to": ["{{ row.to }}"],
                    "cc": ["{{ row.cc }}"],
                    "data": {"people": {"file": str(tmp_path / "people.json")}},
                }
            },
        }
    )
    store.bounces.record(
        "alice/<r@x>",
        account="alice",
        outbox_id=None,
        now=NOW,
        lines=[BounceLine("gone@dead.example.test", "failed", "5.1.1", "user unknown", hard=True)],
    )
    counted: list[tuple[str, str, int]] = []
    runner = JobRunner(
        cfg, TemplateRenderer(tmp_path), store, clock=lambda: NOW, on_suppressed=lambda *args: counted.append(args)
    )
    built = await runner.run_now("merge", key_prefix="manual:merge:1")
    assert built.suppressed == 2 and counted == [("merge", "alice", 2)]
    # row 0 keeps its cc (headers unchanged), row 1 had nobody else and is not queued
    assert [m.recipients for m in built.messages] == [["bob@example.test"], ["carol@example.test"]]
    assert b"To: Gone@Dead.Example.Test" in built.messages[0].raw
    assert all(m.envelope_from == return_path("alice@example.test", m.message_id) for m in built.messages)
    assert store.outbox.counts() == {"queued": 2}
