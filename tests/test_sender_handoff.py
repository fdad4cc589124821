"""Rows stored already leased to this process and handed to the sender in memory
(OutboxStore.enqueue_leased + OutboxSender.submit): the daemon's path for a job's messages."""

from __future__ import annotations

from datetime import timedelta

import pytest
from postroom.outgoing.sender import DrainStats
from postroom.store.outbox import NewMessage

from tests.support.clock import Clock
from tests.support.fake_smtp import lab_smtp, make_raw, message_ids
from tests.support.sending import ALICE, BOB, SENDER_START, arrived, sender_for


@pytest.fixture
def clock() -> Clock:
    return Clock(SENDER_START)


def leased(store, clock, n: int, lease: timedelta) -> list:
    messages = []
    for i in range(n):
        message_id, raw = make_raw(ALICE, [BOB], f"handed {i}")
        messages.append(
            NewMessage(
                dedup_key=f"handed:{i}",
                message_id=message_id,
                account="alice",
                envelope_from=ALICE,
                recipients=[BOB],
                raw=raw,
            )
        )
    return store.outbox.enqueue_leased(messages, now=clock(), lease=lease)


def test_leased_rows_are_stored_as_sending_and_not_claimable_until_the_lease_ends(store, clock):
    items = leased(store, clock, 3, timedelta(minutes=5))
    assert [i.status for i in items] == ["sending"] * 3
    assert store.outbox.counts() == {"sending": 3}
    assert store.outbox.claim_due(now=clock(), limit=10, lease=timedelta(minutes=5)) == []
    assert leased(store, clock, 3, timedelta(minutes=5)) == []  # a re-run adds (and hands) nothing
    clock.advance(timedelta(minutes=6))
    again = store.outbox.claim_due(now=clock(), limit=10, lease=timedelta(minutes=5))
    assert sorted(i.id for i in again) == sorted(i.id for i in items)


async def test_handed_rows_are_sent_once_even_if_their_lease_ran_out_first(store, clock, clean_lab):
    """The drain claims the same rows too (their lease expired): each still goes out once."""
    items = leased(store, clock, 4, timedelta(seconds=1))
    clock.advance(timedelta(seconds=5))
    sender = sender_for(store, clock, lab_smtp(clean_lab, "alice"))
    sender.submit(items)
    assert await sender.drain_once() == DrainStats(sent=4)
    assert store.outbox.counts() == {"sent": 4}
    ids = message_ids(await arrived(clean_lab, "bob", 4))
    assert sorted(ids) == sorted(i.message_id for i in items)
    assert await sender.drain_once() == DrainStats()
