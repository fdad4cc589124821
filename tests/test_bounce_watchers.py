"""The bounce intake under real watchers (the lab's Dovecot): a bounce report for our outbox is
consumed before the rules over POP3 and IMAP — also where the rules' SEARCH alone would have
decided the folder and fetched nothing — and ordinary mail still reaches the rules."""

from __future__ import annotations

import smtplib
from datetime import UTC, datetime

from postroom.config.model import AccountConfig
from postroom.incoming.bounces import BounceIntake
from postroom.incoming.imap import ImapConnection
from postroom.incoming.watcher import ImapWatcher, Pop3Watcher
from postroom.mail.verp import marker
from postroom.store import NewMessage, Store
from postroom.store.outbox import Settlement

from tests.support.dsn_samples import DEAD, KEY, postfix_dsn, signed
from tests.support.inbox import USER, Recorder, imap_cfg, maildrop_size, pop3_settings, raw_message, rules
from tests.support.logins import login
from tests.support.store_fixtures import sqlite_url, store  # noqa: F401

MESSAGE_ID = "<0123456789abcdef0123456789abcdef@example.test>"
NOW = datetime(2026, 11, 29, 6, 0, tzinfo=UTC)


def sent_to_dead(s: Store) -> int:
    """The outbox row the DSN is about, sent by the test user's account."""
    s.outbox.enqueue(
        [
            NewMessage(
                dedup_key="merge:0",
                message_id=MESSAGE_ID,
                account=USER,
                envelope_from=marker(f"{USER}@example.test"),
                recipients=[DEAD],
                raw=b"x",
                origin="merge",
            )
        ],
        now=NOW,
    )
    (item,) = s.outbox.by_message_ids([MESSAGE_ID])
    s.outbox.settle_many([Settlement("sent", item, NOW, delivered=[DEAD])])
    return item.id


def intake(s: Store, cfg: AccountConfig) -> BounceIntake:
    return BounceIntake(USER, cfg, s.outbox, s.bounces, key=KEY, clock=lambda: NOW)


def deliver_dsn(lab, row: int, then: bytes) -> None:
    """Postfix's real DSN from the lab, delivered (LMTP) to the row's signed return path (the
    address it reached: Dovecot writes it on top as Delivered-To); then ``then`` to the user."""
    path = signed(row, address=f"{USER}@example.test")
    with smtplib.LMTP("127.0.0.1", lab.ports.lmtp, timeout=30) as lmtp:
        lmtp.sendmail("", [path], postfix_dsn(path))
    lab.deliver(USER, then)


async def test_pop3_maildrop_bounce_is_consumed_and_deleted_like_handled_mail(clean_lab, store):  # noqa: F811
    row = sent_to_dead(store)
    deliver_dsn(clean_lab, row, raw_message(1, subject="a person writes"))
    cfg = AccountConfig.model_validate(
        {
            "address": clean_lab.address(USER),
            "bounces": {"verp": True},
            "pop3": pop3_settings(clean_lab, start_from="all", delete_after=True),
        }
    )
    rec = Recorder()
    watcher = Pop3Watcher(
        USER, cfg, rules(), rec, store.inbound, bounces=intake(store, cfg), credentials=login(cfg.pop3)
    )
    await watcher.poll_once()
    assert rec.subjects == ["a person writes"]  # the DSN never reached the rules
    assert store.outbox.get(row).status == "bounced"
    assert store.bounces.suppressed(USER) == {DEAD}
    await watcher.poll_once()  # the DSN's row is done: delete_after removed both
    assert await maildrop_size(clean_lab) == 0


async def test_imap_bounce_is_read_even_where_search_decides_the_rules(clean_lab, store):  # noqa: F811
    row = sent_to_dead(store)
    deliver_dsn(clean_lab, row, raw_message(1, subject="[report] daily"))
    cfg = AccountConfig.model_validate(
        {
            "address": clean_lab.address(USER),
            "bounces": {"folder": "INBOX", "verp": True},
            "imap": imap_cfg(clean_lab, start_from="all").model_dump(),
        }
    )
    rec = Recorder()
    rec.kinds_without_message = frozenset({"flag"})  # as the executor: flags need no message
    # a rule SEARCH decides exactly with a flag action: alone, nothing would be fetched at all
    watcher = ImapWatcher(
        USER,
        cfg,
        "INBOX",
        rules({"subject": {"contains": "[report]"}}),
        rec,
        store.inbound,
        bounces=intake(store, cfg),
        credentials=login(cfg.imap),
    )
    conn = ImapConnection(USER, watcher.cfg, watcher.credentials)
    await conn.connect()
    try:
        await watcher.cycle(conn)
    finally:
        await conn.close()
    assert rec.subjects == ["[report] daily"]
    assert store.outbox.get(row).status == "bounced"
    assert store.bounces.suppressed(USER) == {DEAD}
