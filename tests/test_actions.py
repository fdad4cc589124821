"""The action executor against the real lab Dovecot/Postfix: batching, the ledger, in-doubt
actions, forward/redirect/reply composition and their loop guards."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections import Counter
from collections.abc import Collection, Sequence
from datetime import timedelta
from typing import Any

import pytest
from imapclient import IMAPClient
from postroom.errors import ServerConnectError
from postroom.incoming import actions
from postroom.incoming.forward import LOOP_HEADER, MAX_HOPS, forward_message, loop_reason, loop_trail
from postroom.incoming.mailbox import InboundItem
from postroom.incoming.message import ParsedMessage
from postroom.incoming.replies import reply_refusal
from postroom.outgoing.sender import OutboxSender
from postroom.store.ledger import LedgerEntry, LedgerStore

from tests.support.action_rig import Rig, make_config, make_rig, queued
from tests.support.clock import START

ALICE, CAROL = "alice@example.test", "carol@example.test"


class LabMailbox:
    """MailboxOps over imapclient on the real lab Dovecot, counting every server call."""

    def __init__(self, client: IMAPClient, account: str, folder: str):
        self.client, self.account, self.folder = client, account, folder
        self.uidvalidity = client.select_folder(folder)[b"UIDVALIDITY"]
        self.calls: Counter[str] = Counter()
        self.fail_next: Exception | None = None

    async def _do(self, name: str, fn: Any, *args: Any) -> Any:
        self.calls[name] += 1
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        return await asyncio.to_thread(fn, *args)

    async def fetch_raw(self, uids: Collection[int]) -> dict[int, bytes]:
        data = await self._do("fetch_raw", self.client.fetch, list(uids), ["BODY.PEEK[]"])
        return {uid: d[b"BODY[]"] for uid, d in data.items()}

    async def existing_uids(self, uids: Collection[int]) -> set[int]:
        return set(await self._do("existing_uids", self.client.search, ["UID", ",".join(map(str, uids))]))

    async def flags(self, uids: Collection[int]) -> dict[int, frozenset[str]]:
        data = await self._do("flags", self.client.get_flags, list(uids))
        return {uid: frozenset(f.decode() for f in flags) for uid, flags in data.items()}

    async def move(self, uids: Collection[int], folder: str) -> None:
        await self._do("move", self.client.move, list(uids), folder)

    async def copy(self, uids: Collection[int], folder: str) -> None:
        await self._do("copy", self.client.copy, list(uids), folder)

    async def add_flags(self, uids: Collection[int], flags: Sequence[str]) -> None:
        await self._do("add_flags", self.client.add_flags, list(uids), list(flags))

    async def remove_flags(self, uids: Collection[int], flags: Sequence[str]) -> None:
        await self._do("remove_flags", self.client.remove_flags, list(uids), list(flags))

    async def delete(self, uids: Collection[int]) -> None:
        def expunge() -> None:
            self.client.add_flags(list(uids), [b"\\Deleted"])
            self.client.uid_expunge(list(uids))

        await self._do("delete", expunge)


# -- helpers ---------------------------------------------------------------------------


def items_from_server(rig: Rig, box: LabMailbox) -> list[InboundItem]:
    """What a watcher would hand over: header-only messages with the rules' plan."""
    uids = box.client.search("ALL")
    data = box.client.fetch(uids, ["BODY.PEEK[HEADER]", "RFC822.SIZE"]) if uids else {}
    rules = rig.rules.for_folder(box.account, box.folder)
    items = []
    for uid in sorted(data):
        key = f"{box.account}/{box.folder}/{box.uidvalidity}/{uid}"
        msg = ParsedMessage.from_headers(data[uid][b"BODY[HEADER]"], key=key, size=data[uid][b"RFC822.SIZE"])
        items.append(InboundItem(key=key, message=msg, planned=rules.evaluate(msg, now=rig.clock()), uid=uid))
    return items


def raw_item(rig: Rig, account: str, raw: bytes, n: int) -> InboundItem:
    """A message with its bytes at hand (as POP3 hands them over)."""
    key = f"{account}/pop3/uidl{n}"
    msg = ParsedMessage.from_bytes(raw, key=key)
    return InboundItem(
        key=key,
        message=msg,
        planned=rig.rules.for_account(account).evaluate(msg, now=rig.clock()),
        uidl=f"uidl{n}",
        raw=raw,
    )


def make_raw(
    subject: str = "hello",
    sender: str = "Dora <dora@elsewhere.test>",
    to: str = ALICE,
    extra: str = "",
    body: str = "Hi there,\nsee you.\n",
    msgid: str = "<m1@elsewhere.test>",
) -> bytes:
    return (
        f"Return-Path: <dora@elsewhere.test>\nFrom: {sender}\nTo: {to}\nSubject: {subject}\n"
        f"Date: Thu, 26 Nov 2026 10:00:00 +0000\nMessage-ID: {msgid}\n{extra}"
        f"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n{body}"
    ).encode()


def folder_count(lab: Any, user: str, folder: str, flag: str | None = None) -> int:
    with lab.imap_client(user) as client:
        client.select_folder(folder, readonly=True)
        return len(client.search(["FLAGGED"] if flag == "flagged" else "ALL"))


@pytest.fixture
def mail(lab):
    lab.drop_queue()
    for user in ("alice", "bob", "carol"):
        lab.clear_mailbox(user)
    return lab


@pytest.fixture
def alice_inbox(mail):
    client = mail.imap_client("alice")
    yield client
    client.logout()


# -- IMAP batching and the ledger ------------------------------------------------------


async def test_batch_of_200_is_one_call_per_action_and_never_redone(mail, alice_inbox, store):
    mail.seed_maildir(
        "alice",
        "INBOX",
        [make_raw(f"[report] {i}", msgid=f"<r{i}@x.test>") for i in range(200)]
        + [make_raw("personal", msgid="<p@x.test>")],
    )
    config = make_config(
        mail,
        [
            {
                "name": "reports",
                "account": "alice",
                "match": {"subject": "[report]"},
                "actions": [{"move": "Archive"}, {"flag": "\\Flagged"}, {"copy": "Junk"}],
            }
        ],
    )
    rig = make_rig(store, config)
    box = LabMailbox(alice_inbox, "alice", "INBOX")
    items = items_from_server(rig, box)
    outcomes = await rig.executor.handle_batch("alice", "INBOX", box, items)
    assert all(o.done for o in outcomes.values()) and len(outcomes) == 201
    # one server call per (kind, argument), and move last though written first
    assert box.calls == {"copy": 1, "add_flags": 1, "move": 1}
    assert folder_count(mail, "alice", "INBOX") == 1
    assert folder_count(mail, "alice", "Archive") == 200
    assert folder_count(mail, "alice", "Archive", "flagged") == 200
    assert folder_count(mail, "alice", "Junk") == 200
    box.calls.clear()
    again = await rig.executor.handle_batch("alice", "INBOX", box, items)
    assert box.calls == {} and all(o.done for o in again.values())
    assert folder_count(mail, "alice", "Junk") == 200


async def test_in_doubt_move_and_flag_are_checked_on_the_server(mail, alice_inbox, store):
    mail.seed_maildir("alice", "INBOX", [make_raw(f"[report] {i}", msgid=f"<d{i}@x.test>") for i in range(3)])
    config = make_config(
        mail,
        [
            {
                "name": "reports",
                "account": "alice",
                "match": {"subject": "[report]"},
                "actions": [{"flag": "\\Flagged"}, {"move": "Archive"}],
            }
        ],
    )
    rig = make_rig(store, config)
    box = LabMailbox(alice_inbox, "alice", "INBOX")
    items = items_from_server(rig, box)
    first = items[0]
    # a crash after the server did flag + move for the first message, before "done" was written
    rig.stores.ledger.plan([((first.key, "reports", 0), "flag"), ((first.key, "reports", 1), "move")], now=START)
    alice_inbox.add_flags([first.uid], [b"\\Flagged"])
    alice_inbox.move([first.uid], "Archive")
    outcomes = await rig.executor.handle_batch("alice", "INBOX", box, items)
    assert all(o.done for o in outcomes.values())
    assert box.calls["existing_uids"] == 1 and box.calls["flags"] == 1
    assert folder_count(mail, "alice", "Archive") == 3  # not 4, no error
    entries = rig.stores.ledger.entries([first.key])
    assert entries[(first.key, "reports", 1)].detail == {"verified": "already done on the server"}
    assert entries[(first.key, "reports", 1)].attempts == 2


async def test_move_then_delete_moves_and_skips_the_delete(mail, alice_inbox, store):
    mail.seed_maildir("alice", "INBOX", [make_raw("[report] x")])
    config = make_config(
        mail,
        [
            {
                "name": "r",
                "account": "alice",
                "match": {"subject": "[report]"},
                "actions": [{"move": "Archive"}, {"delete": True}],
            }
        ],
    )
    counted: list[tuple[str, str]] = []
    rig = make_rig(store, config, on_action=lambda *kr: counted.append(kr))
    box = LabMailbox(alice_inbox, "alice", "INBOX")
    [outcome] = (await rig.executor.handle_batch("alice", "INBOX", box, items_from_server(rig, box))).values()
    assert outcome.done and "already left the folder by move" in outcome.details["r#1:delete"]
    assert sorted(counted) == [("delete", "skipped"), ("move", "done")]
    assert box.calls == {"move": 1}
    assert folder_count(mail, "alice", "Archive") == 1


async def test_transient_failure_leaves_it_to_retry_and_blocks_later_phases(mail, alice_inbox, store):
    mail.seed_maildir("alice", "INBOX", [make_raw("[report] x")])
    config = make_config(
        mail,
        [
            {
                "name": "r",
                "account": "alice",
                "match": {"subject": "[report]"},
                "actions": [{"move": "Archive"}, {"flag": "\\Flagged"}],
            }
        ],
    )
    rig = make_rig(store, config)
    box = LabMailbox(alice_inbox, "alice", "INBOX")
    items = items_from_server(rig, box)
    box.fail_next = ServerConnectError("connection reset")
    [outcome] = (await rig.executor.handle_batch("alice", "INBOX", box, items)).values()
    assert not outcome.done and outcome.transient and "connection reset" in outcome.error
    assert "move" not in box.calls  # the flag failed: the move waits
    [outcome] = (await rig.executor.handle_batch("alice", "INBOX", box, items)).values()
    assert outcome.done and folder_count(mail, "alice", "Archive", "flagged") == 1


async def test_dry_run_records_and_does_nothing(mail, alice_inbox, store):
    mail.seed_maildir("alice", "INBOX", [make_raw("[report] x")])
    config = make_config(
        mail, [{"name": "r", "account": "alice", "match": {"subject": "[report]"}, "actions": [{"move": "Archive"}]}]
    )
    rig = make_rig(store, config, dry_run=True)
    box = LabMailbox(alice_inbox, "alice", "INBOX")
    items = items_from_server(rig, box)
    outcomes = await rig.executor.handle_batch("alice", "INBOX", box, items)
    assert all(o.done for o in outcomes.values()) and box.calls == {}
    assert rig.stores.ledger.entries([items[0].key]) == {}


# -- forward / redirect ----------------------------------------------------------------

VENDOR_MAIL = (
    b"From: Vendor Billing <billing@vendor.test>\r\nTo: alice@example.test\r\n"
    b"Subject: Invoice 42\r\nDate: Thu, 26 Nov 2026 09:00:00 +0000\r\n"
    b"Message-ID: <inv42@vendor.test>\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
    b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nYour invoice \xe2\x82\xac 10.\r\n"
    b"--b1\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=inv.pdf\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b1--\r\n"
)

OUT_OF_OFFICE = {
    "name": "out-of-office",
    "account": "carol",
    "match": {},
    "actions": [{"reply": {"template": "out_of_office", "days": 7}}],
}


async def send_outbox(rig: Rig) -> None:
    """What the daemon's sender does with the outbox: send every due row over the lab Postfix."""
    sender = OutboxSender(rig.stores.outbox, rig.config.accounts, rig.config.outbox, clock=rig.clock)
    stats = await sender.drain_once()
    assert stats.total == 1, stats


async def test_forward_as_attachment_reaches_carol_who_does_not_auto_reply(mail, alice_inbox, store):
    mail.deliver("alice", VENDOR_MAIL)
    config = make_config(
        mail,
        [
            {
                "name": "invoices",
                "account": "alice",
                "match": {"from": {"matches": "*@vendor.test"}},
                "actions": [{"forward": {"to": [CAROL], "as": "attachment"}}, {"flag": "\\Flagged"}],
            },
            OUT_OF_OFFICE,
        ],
    )
    woken = []
    rig = make_rig(store, config, wake_sender=lambda: woken.append(1))
    box = LabMailbox(alice_inbox, "alice", "INBOX")
    items = items_from_server(rig, box)
    outcomes = await rig.executor.handle_batch("alice", "INBOX", box, items)
    assert all(o.done for o in outcomes.values()) and woken == [1]
    assert box.calls == {"fetch_raw": 1, "add_flags": 1}
    [out] = queued(rig)
    assert out.envelope_from == ALICE and out.recipients == [CAROL]
    assert out.dedup_key == items[0].planned[0].key(items[0].key)
    await send_outbox(rig)

    [arrived] = mail.wait_for_messages("carol", 1)
    fwd = email.message_from_bytes(arrived, policy=email.policy.default)
    assert fwd["Reply-To"] == "billing@vendor.test"
    assert fwd["Subject"] == "Fwd: Invoice 42"
    assert fwd[LOOP_HEADER] == ALICE and fwd["Auto-Submitted"] == "auto-generated"
    [attached] = [p for p in fwd.walk() if p.get_content_type() == "message/rfc822"]
    original = box.client.fetch([items[0].uid], ["BODY.PEEK[]"])[items[0].uid][b"BODY[]"]
    assert arrived.split(b'filename="forwarded-message.eml"', 1)[1].find(original) > 0
    assert attached.get_content_disposition() == "attachment"

    # carol's out-of-office sees the forward and stays quiet (Auto-Submitted, loop header)
    carol_box = LabMailbox(mail.imap_client("carol"), "carol", "INBOX")
    try:
        carol_items = items_from_server(rig, carol_box)
        [outcome] = (await rig.executor.handle_batch("carol", "INBOX", carol_box, carol_items)).values()
    finally:
        carol_box.client.logout()
    assert outcome.done and "Auto-Submitted" in outcome.details["out-of-office#0:reply"]
    assert rig.stores.outbox.counts() == {"sent": 1}
    # redoing alice's batch sends nothing more
    await rig.executor.handle_batch("alice", "INBOX", box, items)
    assert rig.stores.outbox.counts() == {"sent": 1}


async def test_redirect_keeps_the_original_bytes_and_adds_resent_fields(store, lab):
    config = make_config(
        lab, [{"name": "fw", "account": "alice", "match": {}, "actions": [{"redirect": {"to": CAROL}}]}]
    )
    rig = make_rig(store, config)
    raw = make_raw("bare LF lines")  # LF line endings on purpose
    item = raw_item(rig, "alice", raw, 1)
    [outcome] = (await rig.executor.handle_batch("alice", "INBOX", None, [item])).values()
    assert outcome.done
    [out] = queued(rig)
    assert out.envelope_from == ALICE and out.recipients == [CAROL]
    head, original = out.raw.split(b"Return-Path:", 1)
    assert b"Return-Path:" + original == raw.replace(b"\n", b"\r\n")
    resent = email.message_from_bytes(head + b"\r\n")
    assert resent["Resent-From"] == ALICE and resent["Resent-To"] == CAROL
    assert resent["Resent-Message-ID"] == out.message_id and resent["Resent-Date"]
    assert resent[LOOP_HEADER] == ALICE


@pytest.mark.parametrize(
    "extra, why",
    [
        (f"{LOOP_HEADER}: alice@example.test\n", "already carries"),
        ("Received: from x by y\n" * 21, "hops"),
        ("", "MAILER-DAEMON"),
    ],
)
async def test_forward_and_redirect_refuse_loops_and_bounces(store, lab, extra, why):
    config = make_config(
        lab,
        [
            {
                "name": "fw",
                "account": "alice",
                "match": {},
                "actions": [{"redirect": {"to": CAROL}}, {"forward": {"to": CAROL}}],
            }
        ],
    )
    rig = make_rig(store, config)
    sender = "MAILER-DAEMON@mx.test" if why == "MAILER-DAEMON" else "dora@elsewhere.test"
    item = raw_item(rig, "alice", make_raw(sender=sender, extra=extra), 1)
    [outcome] = (await rig.executor.handle_batch("alice", "INBOX", None, [item])).values()
    assert outcome.done and why in outcome.details["fw#0:redirect"] and why in outcome.details["fw#1:forward"]
    assert queued(rig) == []


def forward_of(raw: bytes, sender: str, to: str, as_: str = "attachment") -> bytes:
    msg = ParsedMessage.from_bytes(raw, key="k")
    return forward_message(
        raw, msg, sender=sender, to=[to], as_=as_, rule="ring", message_id="<f@example.test>", now=START
    )


def test_the_loop_trail_survives_forwards_and_is_read_inside_attached_messages():
    """A forward is a new message: the marker of the one before is inside its attachment (or
    gone, inline). The trail is carried on the outside, so a ring of accounts ends."""
    once = forward_of(make_raw(), ALICE, CAROL)
    twice = forward_of(once, CAROL, ALICE, as_="inline")
    assert loop_trail(ParsedMessage.from_bytes(twice, key="k")) == [ALICE, CAROL]
    assert "already carries" in loop_reason(ParsedMessage.from_bytes(twice, key="k"), ALICE)
    # wrapped as an attachment by something that is not postroom (its own headers only): the
    # marker inside still counts, at any depth
    wrapper = email.message.EmailMessage()
    wrapper["From"], wrapper["To"], wrapper["Subject"] = "Hugo <hugo@elsewhere.test>", ALICE, "look"
    wrapper.set_content("see below")
    wrapper.add_attachment(email.message_from_bytes(once, policy=email.policy.default))
    assert "already carries" in loop_reason(ParsedMessage.from_bytes(wrapper.as_bytes(), key="k"), ALICE)
    # a chain of distinct accounts: each forward adds one hop, past MAX_HOPS it stops
    raw = make_raw()
    for n in range(MAX_HOPS + 1):
        assert loop_reason(ParsedMessage.from_bytes(raw, key="k"), f"a{n}@example.test") is None
        raw = forward_of(raw, f"a{n}@example.test", f"a{n + 1}@example.test")
    assert "hops" in loop_reason(ParsedMessage.from_bytes(raw, key="k"), "z@example.test")


# -- auto-reply ------------------------------------------------------------------------

NO_REPLY_CASES = {
    "list mail": dict(extra="List-Id: <ops.lists.test>\n"),
    "list-unsubscribe only": dict(extra="List-Unsubscribe: <mailto:u@lists.test>\n"),
    "bulk": dict(extra="Precedence: bulk\n"),
    "junk": dict(extra="Precedence: junk\n"),
    "auto-replied": dict(extra="Auto-Submitted: auto-replied\n"),
    "auto-generated": dict(extra="Auto-Submitted: auto-generated\n"),
    "suppress": dict(extra="X-Auto-Response-Suppress: OOF\n"),
    "mailer-daemon": dict(sender="MAILER-DAEMON@mx.test"),
    "owner-": dict(sender="owner-ops@lists.test"),
    "-request": dict(sender="ops-request@lists.test"),
    "not addressed to us": dict(to="someone@example.test"),
    "from ourselves": dict(sender=CAROL, to=CAROL),
    "forwarded by postroom": dict(extra=f"{LOOP_HEADER}: alice@example.test\n"),
}


@pytest.mark.parametrize("case", sorted(NO_REPLY_CASES))
def test_reply_guards(case):
    raw = make_raw(**{"to": CAROL, **NO_REPLY_CASES[case]})
    assert reply_refusal(ParsedMessage.from_bytes(raw, key="k"), [CAROL]) is not None


def test_reply_guard_empty_return_path():
    raw = make_raw(to=CAROL).replace(b"Return-Path: <dora@elsewhere.test>", b"Return-Path: <>")
    assert "bounce" in reply_refusal(ParsedMessage.from_bytes(raw, key="k"), [CAROL])
    normal = make_raw(to=f"Someone <x@y.test>, Carol <{CAROL}>", extra="Auto-Submitted: no\n")
    assert reply_refusal(ParsedMessage.from_bytes(normal, key="k"), [CAROL]) is None


async def test_reply_once_per_sender_per_days(store, lab):
    rig = make_rig(store, make_config(lab, [OUT_OF_OFFICE]))
    refused = [
        raw_item(rig, "carol", make_raw(**{"to": CAROL, **NO_REPLY_CASES[c]}), i)
        for i, c in enumerate(sorted(NO_REPLY_CASES))
    ]
    outcomes = await rig.executor.handle_batch("carol", "INBOX", None, refused)
    assert all(o.done for o in outcomes.values()) and queued(rig) == []

    first = raw_item(rig, "carol", make_raw("Auto: meeting", to=CAROL, extra="References: <old@elsewhere.test>\n"), 100)
    [outcome] = (await rig.executor.handle_batch("carol", "INBOX", None, [first])).values()
    assert outcome.done
    [reply] = queued(rig)
    assert reply.envelope_from == "" and reply.recipients == ["dora@elsewhere.test"]
    parsed = email.message_from_bytes(reply.raw, policy=email.policy.default)
    assert parsed["Subject"] == "Auto: meeting"
    assert parsed["Auto-Submitted"] == "auto-replied"
    assert parsed["In-Reply-To"] == "<m1@elsewhere.test>"
    assert parsed["References"] == "<old@elsewhere.test> <m1@elsewhere.test>"
    assert parsed["From"] == "Carol <carol@example.test>"
    assert 'thank you for your message "Auto: meeting"' in parsed.get_body(("plain",)).get_content()

    rig.clock.now += timedelta(days=6)
    second = raw_item(rig, "carol", make_raw("again", to=CAROL, msgid="<m2@elsewhere.test>"), 101)
    [outcome] = (await rig.executor.handle_batch("carol", "INBOX", None, [second])).values()
    assert outcome.done and "already replied" in outcome.details["out-of-office#0:reply"]
    rig.clock.now += timedelta(days=2)
    third = raw_item(rig, "carol", make_raw("later", to=CAROL, msgid="<m3@elsewhere.test>"), 102)
    await rig.executor.handle_batch("carol", "INBOX", None, [third])
    assert len(queued(rig)) == 2


async def test_missing_reply_template_is_a_dead_action_not_a_retry(store, lab):
    rule = {**OUT_OF_OFFICE, "actions": [{"reply": {"template": "no_such_template"}}]}
    rig = make_rig(store, make_config(lab, [rule]))
    item = raw_item(rig, "carol", make_raw(to=CAROL), 1)
    [outcome] = (await rig.executor.handle_batch("carol", "INBOX", None, [item])).values()
    assert not outcome.done and not outcome.transient and "no_such_template" in outcome.error
    assert rig.stores.ledger.entries([item.key])[(item.key, "out-of-office", 0)].status == "dead"


async def test_webhook_action_is_queued_with_the_message_payload(store, lab):
    rule = {
        "name": "alerts",
        "account": "alice",
        "match": {"header": {"name": "X-Alert", "is": "high"}},
        "actions": [{"webhook": {"url": "http://127.0.0.1:9/hook", "secret": "whsec_dGVzdA=="}}],
    }
    rig = make_rig(store, make_config(lab, [rule]))
    item = raw_item(rig, "alice", make_raw("disk full", extra="X-Alert: high\n"), 1)
    [outcome] = (await rig.executor.handle_batch("alice", "INBOX", None, [item])).values()
    assert outcome.done
    [request] = rig.webhooks.requests
    assert request.action_key == f"{item.key}|alerts|0" and request.url == "http://127.0.0.1:9/hook"
    assert request.payload["subject"] == "disk full" and request.payload["rule"] == "alerts"
    assert request.payload["from"] == "Dora <dora@elsewhere.test>" and request.payload["uidl"] == "uidl1"
    await rig.executor.handle_batch("alice", "INBOX", None, [item])
    assert len(rig.webhooks.requests) == 1


def test_ledger_queries_on_both_backends(any_store):
    ledger = LedgerStore(any_store.engine, owner="test", calls=any_store.calls)
    a, b = ("acct/INBOX/1/7", "r", 0), ("acct/INBOX/1/7", "r", 1)
    ledger.plan([(a, "move"), (b, "flag")], now=START)
    ledger.finish([(a, "done", {"verified": "yes"}, None), (b, "failed", None, "reset")], now=START)
    ledger.plan([(a, "move"), (b, "flag")], now=START)  # a is done: left alone
    entries = ledger.entries(["acct/INBOX/1/7", "other"])
    assert entries[a] == LedgerEntry("done", 1, {"verified": "yes"}, None)
    assert entries[b].status == "planned" and entries[b].attempts == 2
    assert ledger.last_reply("carol", "ooo", "x@y.test") is None
    ledger.record_reply("carol", "ooo", "x@y.test", now=START)
    ledger.record_reply("carol", "ooo", "x@y.test", now=START + timedelta(days=1))
    assert ledger.last_reply("carol", "ooo", "x@y.test") == START + timedelta(days=1)


@pytest.mark.parametrize("send_chunk", [actions.SEND_CHUNK, 1])  # 1: each mail in a chunk of its own
async def test_two_mails_from_one_sender_in_one_batch_get_one_reply(store, lab, monkeypatch, send_chunk):
    monkeypatch.setattr(actions, "SEND_CHUNK", send_chunk)
    counted: list[tuple[str, str]] = []
    rig = make_rig(store, make_config(lab, [OUT_OF_OFFICE]), on_action=lambda *kr: counted.append(kr))
    items = [
        raw_item(
            rig,
            "carol",
            make_raw(f"n{i}", sender="Eve <eve@elsewhere.test>", to=CAROL, msgid=f"<e{i}@elsewhere.test>"),
            i,
        )
        for i in range(2)
    ]
    outcomes = await rig.executor.handle_batch("carol", "INBOX", None, items)
    assert all(o.done for o in outcomes.values())
    assert [q.recipients for q in queued(rig)] == [["eve@elsewhere.test"]]
    # postroom_actions_total: one reply sent, one skipped by the guard (not two "done")
    assert sorted(counted) == [("reply", "done"), ("reply", "skipped")]
    assert rig.stores.ledger.last_reply("carol", "out-of-office", "eve@elsewhere.test") == START


async def test_forwards_hold_a_chunk_of_raw_messages_at_a_time(mail, alice_inbox, store, monkeypatch):
    monkeypatch.setattr(actions, "SEND_CHUNK", 2)
    mail.seed_maildir("alice", "INBOX", [make_raw(f"n{i}", msgid=f"<n{i}@x.test>") for i in range(5)])
    config = make_config(
        mail, [{"name": "fw", "account": "alice", "match": {}, "actions": [{"forward": {"to": CAROL}}]}]
    )
    rig = make_rig(store, config)
    box = LabMailbox(alice_inbox, "alice", "INBOX")
    fetched: list[int] = []
    fetch_raw = box.fetch_raw

    async def counting(uids: Collection[int]) -> dict[int, bytes]:
        fetched.append(len(uids))
        return await fetch_raw(uids)

    box.fetch_raw = counting  # type: ignore[method-assign]
    outcomes = await rig.executor.handle_batch("alice", "INBOX", box, items_from_server(rig, box))
    assert all(o.done for o in outcomes.values()) and len(outcomes) == 5
    assert fetched == [2, 2, 1]
    assert sorted(q.raw.split(b"Subject: Fwd: ")[1][:2] for q in queued(rig)) == [b"n0", b"n1", b"n2", b"n3", b"n4"]


async def test_encoded_line_breaks_in_a_subject_do_not_reach_our_headers(store, lab):
    config = make_config(
        lab, [{"name": "fw", "account": "alice", "match": {}, "actions": [{"forward": {"to": CAROL, "as": "inline"}}]}]
    )
    rig = make_rig(store, config)
    item = raw_item(rig, "alice", make_raw("=?utf-8?q?Hi=0D=0ABcc:_victim@x.test?="), 1)
    [outcome] = (await rig.executor.handle_batch("alice", "INBOX", None, [item])).values()
    assert outcome.done
    [out] = queued(rig)
    parsed = email.message_from_bytes(out.raw, policy=email.policy.default)
    assert parsed["Subject"] == "Fwd: Hi Bcc: victim@x.test" and parsed["Bcc"] is None
    assert "> Hi there," in parsed.get_body(("plain",)).get_content()


async def test_auto_reply_goes_out_with_the_null_sender(mail, store):
    rig = make_rig(store, make_config(mail, [OUT_OF_OFFICE]))
    item = raw_item(rig, "carol", make_raw("lunch?", sender="Bob <bob@example.test>", to=CAROL), 1)
    [outcome] = (await rig.executor.handle_batch("carol", "INBOX", None, [item])).values()
    assert outcome.done
    await send_outbox(rig)
    [arrived] = mail.wait_for_messages("bob", 1)
    reply = email.message_from_bytes(arrived, policy=email.policy.default)
    assert reply["Return-Path"] == "<>"
    assert reply["Auto-Submitted"] == "auto-replied" and reply["Subject"] == "Auto: lunch?"
    # bob's own out-of-office (were he to have one) would not answer it
    assert reply_refusal(ParsedMessage.from_bytes(arrived, key="k"), ["bob@example.test"]) is not None
