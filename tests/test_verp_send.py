"""Signed VERP on the wire (aiosmtpd: a fault Postfix will not produce on cue): a row queued with
the VERP marker goes out as one transaction per recipient, each with the return path signed for
that recipient; when a later transaction fails after an earlier one was accepted, only the
recipients still owed are retried: nobody gets the message twice."""

from __future__ import annotations

from datetime import timedelta

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from postroom.mail.verp import marker, token_from, verify
from postroom.outgoing.envelopes import signed_return_paths
from postroom.outgoing.sender import DrainStats
from postroom.store.outbox import NewMessage

from tests.support.clock import Clock
from tests.support.dsn_samples import KEY
from tests.support.fake_smtp import FaultyHandler, fake_smtp, make_raw, plain_smtp
from tests.support.sending import ALICE, BOB, CAROL, SENDER_START, sender_for


class SecondDataBusy(FaultyHandler):
    """Accepts the first DATA, answers 451 to the second, then accepts again."""

    datas = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.datas += 1
        if self.datas == 2:
            return "451 4.3.0 try again later"
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def clock() -> Clock:
    return Clock(SENDER_START)


async def test_each_recipient_gets_its_own_signed_return_path_and_a_retry_resends_nothing(store, clock):
    message_id, raw = make_raw(ALICE, [BOB, CAROL], "statement")
    store.outbox.enqueue(
        [
            NewMessage(
                dedup_key="merge:0",
                message_id=message_id,
                account="alice",
                envelope_from=marker(ALICE),
                recipients=[BOB, CAROL],
                raw=raw,
            )
        ],
        now=clock(),
    )
    handler = SecondDataBusy()
    async with fake_smtp(handler) as port:
        sender = sender_for(store, clock, plain_smtp(port, security="none"), return_paths=signed_return_paths(KEY))
        assert await sender.drain_once() == DrainStats(deferred=1)
        (row,) = store.outbox.list(statuses=["queued"])
        assert (row.recipients, row.delivered) == ([CAROL], [BOB])
        clock.advance(timedelta(minutes=5))
        assert await sender.drain_once() == DrainStats(sent=1)
    assert [(r.rcpt_tos, r.mail_from) for r in handler.received] == [
        ([BOB], handler.mail_froms[0]),
        ([CAROL], handler.mail_froms[2]),
    ]  # each once; carol's first try (mail_froms[1]) got the 451
    for rcpt, path in ((BOB, handler.mail_froms[0]), (CAROL, handler.mail_froms[2])):
        token = token_from(path, ALICE)
        assert token is not None and token.outbox_id == row.id
        assert verify(KEY, token, rcpt) and not verify(KEY, token, BOB if rcpt == CAROL else CAROL)
