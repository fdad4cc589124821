"""Bounce reports: the parser on real samples, signed VERP return paths, and the intake that
records a verified bounce against our outbox (ledgered once, hard bounces suppressed with their
evidence) or leaves it to the rules, counted unverified (every forgery of issue 18)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from postroom.config.model import AccountConfig
from postroom.config.settings import Settings
from postroom.incoming.bounces import BounceIntake
from postroom.incoming.message import ParsedMessage
from postroom.mail.dsn import parse_bounce
from postroom.mail.verp import envelopes, marker, token_from, verify
from postroom.outgoing.envelopes import given_verp_key
from postroom.store import NewMessage, Store
from postroom.store.outbox import Settlement

from tests.support.dsn_samples import DEAD, KEY, OLD_RETURN_PATH, POSTFIX, postfix_dsn, signed
from tests.support.store_fixtures import any_store, store  # noqa: F401

DATA = Path(__file__).parent / "data"
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


def test_verp_tokens_are_signed_per_recipient_and_row():
    key = b"k" * 32
    assert marker("alice@example.test") == "alice+bounce-@example.test"
    assert marker("alice@example.test", "-") == "alice-bounce-@example.test"
    rows = envelopes(key, marker("alice@example.test"), 7, ["Bob <Bob@example.test>", "carol@example.test"])
    assert [rcpts for _, rcpts in rows] == [["Bob <Bob@example.test>"], ["carol@example.test"]]
    bob_path, carol_path = (path for path, _ in rows)
    assert bob_path != carol_path and bob_path.startswith("alice+bounce-7-")
    bob = token_from(bob_path, "alice@example.test")
    assert bob is not None and bob.outbox_id == 7
    assert verify(key, bob, "bob@example.test") and not verify(key, bob, "carol@example.test")
    assert not verify(b"x" * 32, bob, "bob@example.test")  # another key
    assert token_from(bob_path.upper(), "alice@example.test") == bob
    assert token_from(bob_path.replace("-7-", "-8-"), "alice@example.test") is not None  # parses...
    assert not verify(key, token_from(bob_path.replace("-7-", "-8-"), "alice@example.test"), "bob@example.test")
    # not a return path of alice's, or one of the old scheme (the Message-ID's random part)
    assert token_from(bob_path.replace("alice", "dave"), "alice@example.test") is None
    assert token_from(OLD_RETURN_PATH.decode(), "alice@example.test") is None
    assert token_from("alice@example.test", "alice@example.test") is None
    # a row queued before the change, with an old-scheme sender, is signed anew when sent
    assert envelopes(key, OLD_RETURN_PATH.decode(), 7, ["bob@example.test"]) == [(bob_path, ["bob@example.test"])]
    # any other sender: one transaction, unchanged
    assert envelopes(key, "alice@example.test", 7, ["a@x.test", "b@x.test"]) == [
        ("alice@example.test", ["a@x.test", "b@x.test"])
    ]


# -- the intake against the store --------------------------------------------------------------
def account(verp: bool = True) -> AccountConfig:
    return AccountConfig.model_validate(
        {
            "address": "alice@example.test",
            "imap": {"host": "127.0.0.1"},
            "bounces": {"folder": "INBOX", "verp": verp},
        }
    )


def sent_row(
    s: Store,
    message_id: str = POSTFIX_MESSAGE_ID,
    to: str | list[str] = DEAD,
    account_name: str = "alice",
) -> int:
    recipients = [to] if isinstance(to, str) else to
    s.outbox.enqueue(
        [
            NewMessage(
                dedup_key=f"k{message_id}",
                message_id=message_id,
                account=account_name,
                envelope_from=marker("alice@example.test"),
                recipients=recipients,
                raw=b"x",
                origin="merge",
            )
        ],
        now=NOW,
    )
    (item,) = s.outbox.by_message_ids([message_id])
    s.outbox.settle_many([Settlement("sent", item, NOW, delivered=recipients)])
    return item.id


def intake_for(s: Store, verp: bool = True) -> tuple[BounceIntake, list[str]]:
    counted: list[str] = []
    intake = BounceIntake(
        "alice",
        account(verp),
        s.outbox,
        s.bounces,
        key=KEY,
        clock=lambda: NOW,
        on_bounce=lambda account, kind: counted.append(kind),
    )
    return intake, counted


def consume(intake: BounceIntake, raw: bytes, key: str = "alice/INBOX/1/1") -> str | None:
    bounce = parse_bounce(raw)
    assert bounce is not None
    return intake.consume(key, ParsedMessage.from_bytes(raw, key=key), bounce)


def test_a_verified_bounce_marks_the_row_and_suppresses_once_with_its_evidence(any_store):  # noqa: F811
    row = sent_row(any_store)
    other = sent_row(any_store, message_id="<11111111111111111111111111111111@example.test>", to="bob@example.test")
    intake, counted = intake_for(any_store)
    raw = postfix_dsn(signed(row))
    assert consume(intake, raw) == f"bounce report for outbox {row}"
    assert counted == ["hard"]
    assert any_store.outbox.get(row).status == "bounced"
    assert "5.1.1" in any_store.outbox.get(row).last_error
    assert any_store.outbox.get(other).status == "sent"
    assert any_store.bounces.suppressed("alice") == {DEAD}
    (entry,) = any_store.bounces.suppressions("alice")
    assert entry.report_key == "alice/<20261129060420.ACC7D20C973@lab.example.test>"
    assert entry.evidence.startswith("DSN of Sun, 29 Nov 2026 06:04:20 +0000 (UTC) from MAILER-DAEMON@lab.example.test")
    assert "failed 5.1.1 user unknown (lab dead domain)" in entry.evidence
    ((bounced),) = any_store.bounces.bounced()
    assert [(b.recipient, b.status, b.hard) for b in bounced.lines] == [(DEAD, "5.1.1", True)]
    # the same report again (a retry, a crash before the inbound row was finished): ledgered once
    assert "recorded before" in consume(intake, raw, key="alice/INBOX/2/1")
    assert len(any_store.bounces.bounced()[0].lines) == 1
    assert any_store.bounces.remove("Nobody@Dead.Example.Test") == 1  # reversible
    assert any_store.bounces.suppressed("alice") == set()


def test_suppress_takes_evidence_from_other_callers(any_store):  # noqa: F811
    # An SMTP server refusing an address at RCPT (5.1.1) suppresses it too, with its own evidence.
    assert any_store.bounces.suppress(
        "alice",
        " Gone@Example.Org ",
        status="5.1.1",
        diagnostic="550 5.1.1 no such user",
        now=NOW,
        outbox_id=3,
        evidence="RCPT TO refused by smtp.example.test: 550 5.1.1 no such user",
    )
    assert not any_store.bounces.suppress("alice", "gone@example.org", status="5.1.1", diagnostic="", now=NOW)
    (entry,) = any_store.bounces.suppressions("alice")
    assert (entry.address, entry.outbox_id, entry.report_key) == ("gone@example.org", 3, "")
    assert entry.evidence == "RCPT TO refused by smtp.example.test: 550 5.1.1 no such user"


def test_the_verp_key_is_made_once_and_kept(any_store):  # noqa: F811
    made = any_store.bounces.verp_key(None, now=NOW)
    assert len(made) == 32 and any_store.bounces.verp_key(None, now=NOW) == made
    assert any_store.bounces.verp_key(b"given", now=NOW) == b"given"
    assert given_verp_key(Settings(verp_key="from the environment")) == b"from the environment"
    assert given_verp_key(Settings()) is None


def test_forged_reports_suppress_nobody_and_are_counted_unverified(store):  # noqa: F811
    """The four forgeries of issue 18, and the old-scheme token: each left to the rules."""
    two = sent_row(store, to=["bob@example.test", "carol@example.test"])
    one = sent_row(store, message_id="<abcdefabcdefabcdefabcdefabcdefab@example.test>", to="dave@example.test")
    intake, counted = intake_for(store)
    forgeries = {
        # bob, a recipient, sees his own return path and names carol, another recipient
        "another recipient": postfix_dsn(signed(two, "bob@example.test"), names="carol@example.test"),
        # a plain notice with X-Failed-Recipients and the Message-ID line, to alice@ herself
        "non-standard": EXIM.replace(b"gone@example.org", b"dave@example.test"),
        # only the To: header says VERP; the envelope (Delivered-To) is plain alice@
        "forged To:": postfix_dsn("alice@example.test", to=signed(one, "dave@example.test"), names="dave@example.test"),
        # dave's return path, naming an outsider for his one-recipient message
        "an outsider": postfix_dsn(signed(one, "dave@example.test"), names="outsider@example.org"),
        # the old scheme: the Message-ID's random part is no token
        "old scheme": postfix_dsn(names="dave@example.test"),
        # a valid return path in a Delivered-To below the one the receiving server wrote
        "Delivered-To below": b"Delivered-To: alice@example.test\n"
        + postfix_dsn(signed(one, "dave@example.test"), names="dave@example.test"),
    }
    for name, raw in forgeries.items():
        assert consume(intake, raw, key=f"alice/INBOX/1/{name}") is None, name
    # the same non-standard notice sent to a real return path still counts for nothing
    assert consume(intake, b"Delivered-To: " + signed(one, "bob@example.test").encode() + b"\n" + EXIM) is None
    assert counted == ["unverified"] * 7
    assert store.bounces.suppressed("alice") == set()
    assert {store.outbox.get(two).status, store.outbox.get(one).status} == {"sent"}


def test_a_non_standard_report_counts_with_a_verified_token(store):  # noqa: F811
    row = sent_row(store, message_id="<abcdefabcdefabcdefabcdefabcdefab@example.test>", to="gone@example.org")
    intake, counted = intake_for(store)
    raw = b"Delivered-To: " + signed(row, "gone@example.org").encode() + b"\n" + EXIM
    assert consume(intake, raw) == f"bounce report for outbox {row}"
    assert store.bounces.suppressed("alice") == {"gone@example.org"} and counted == ["hard"]
    (entry,) = store.bounces.suppressions("alice")
    assert entry.evidence.startswith("non-standard report of no Date from Mailer-Daemon@mx.example.org")


async def test_a_report_over_its_time_budget_goes_to_the_rules(store):  # noqa: F811
    counted: list[str] = []
    cfg = account()
    slow = BounceIntake(
        "alice", cfg, store.outbox, store.bounces, key=KEY, budget=0.0, on_bounce=lambda a, k: counted.append(k)
    )
    raw = postfix_dsn(signed(1)) + b"\n" * 200_000
    assert await slow.read("alice/INBOX/1/1", raw) is None  # not waited for: the rules get it
    assert counted == ["over_budget"]
    intake, counted = intake_for(store)
    assert await intake.read("alice/INBOX/1/1", raw) is not None and counted == []


def test_reports_that_are_not_ours_go_to_the_rules(store):  # noqa: F811
    intake, counted = intake_for(store)
    assert consume(intake, postfix_dsn(signed(99))) is None  # no such row
    carols = sent_row(store, account_name="carol")
    assert consume(intake, postfix_dsn(signed(carols))) is None  # carol's message, not alice's
    row = sent_row(store, message_id="<22222222222222222222222222222222@example.test>")
    assert consume(intake_for(store, verp=False)[0], postfix_dsn(signed(row))) is None  # VERP off: nothing verifies
    assert counted == ["unverified"] * 2
    assert store.bounces.suppressed("alice") == set() and store.bounces.suppressed("carol") == set()


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
    assert all(m.envelope_from == "alice+bounce-@example.test" for m in built.messages)  # signed when sent
    assert store.outbox.counts() == {"queued": 2}
