"""Leases on PostgreSQL are measured by PostgreSQL's clock, renewed by a heartbeat, and short.

Replicas on hosts whose clocks disagree must not see each other's leases as run out: every
expiry is ``now() + interval`` in the SQL. A replica here passes a clock an hour fast, as a
skewed host would; it still can't take a folder, outbox rows or webhook deliveries another
holds. Leases are seconds long and renewed while held; once the holder stops renewing (it
died) the work is taken by another within one lease. Plus the webhook ledger keeping "queued"
apart from "delivered", and a fire's rows beyond one batch left for any replica.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from postroom.store import NewMessage, Store
from postroom.store.leases import WatchLeases
from postroom.store.ledger import LedgerStore
from postroom.store.outbox import OutboxStore
from postroom.store.replicas import ReplicaRegistry

SKEW = timedelta(hours=1)  # how fast the other replica's clock runs
LEASE = timedelta(seconds=1)


def now() -> datetime:
    return datetime.now(UTC)


def msg(i: int) -> NewMessage:
    return NewMessage(
        dedup_key=f"job:j:{i}",
        message_id=f"<{i}@x.test>",
        account="alice",
        envelope_from="alice@x.test",
        recipients=[f"r{i}@x.test"],
        raw=b"Subject: hi\r\n\r\nx\r\n",
    )


def eventually(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.1)
    raise AssertionError("not within the time allowed")


def test_a_skewed_replica_cannot_take_a_held_folder(pg_url):
    store = Store.open(pg_url, owner="replica-a")
    try:
        mine, other = store.leases, WatchLeases(store.engine, owner="replica-b", calls=store.calls)
        assert mine.claim("alice/INBOX", now=now(), ttl=timedelta(seconds=60))
        assert not other.claim("alice/INBOX", now=now() + SKEW, ttl=timedelta(seconds=60))
        assert mine.holder("alice/INBOX")[0] == "replica-a"
        # a short lease, not renewed: it runs out by the database's clock and is taken
        assert mine.claim("alice/lists", now=now() - SKEW, ttl=LEASE)
        assert eventually(lambda: other.claim("alice/lists", now=now() - SKEW, ttl=LEASE))
    finally:
        store.close()


def test_outbox_leases_renewed_by_a_heartbeat_run_out_when_it_stops(pg_url):
    store = Store.open(pg_url, owner="replica-a")
    try:
        mine, other = store.outbox, OutboxStore(store.engine, owner="replica-b", calls=store.calls)
        mine.enqueue([msg(1), msg(2)], now=now())
        held = mine.claim_due(now=now(), limit=10, lease=LEASE)
        assert len(held) == 2
        assert other.claim_due(now=now() + SKEW, limit=10, lease=LEASE) == []  # skew: still held
        for _ in range(4):  # the holder works on past its first lease, renewing it
            time.sleep(LEASE.total_seconds() / 3)
            assert mine.renew([i.id for i in held], now=now(), lease=LEASE) == {i.id for i in held}
            assert other.claim_due(now=now(), limit=10, lease=LEASE) == []
        mine.mark_sent(held[0], now=now(), delivered=held[0].recipients, refused={})
        # the holder dies (no more renewals): the row it had not sent is taken, same Message-ID
        taken = eventually(lambda: other.claim_due(now=now(), limit=10, lease=LEASE))
        assert [i.message_id for i in taken] == [held[1].message_id]
        assert mine.renew([held[1].id], now=now(), lease=LEASE) == set()  # not ours any more
    finally:
        store.close()


def test_webhook_leases_are_the_databases_clock_and_renewed(pg_url):
    store = Store.open(pg_url, owner="replica-a")
    try:
        mine, other = store.ledger, LedgerStore(store.engine, owner="replica-b", calls=store.calls)
        mine.enqueue_webhooks(
            [dict(webhook_id="msg_1", action_key="k|r|0", rule="r", url="http://h/", payload=b"{}")], now=now()
        )
        (held,) = mine.claim_webhooks(now=now(), limit=5, lease=LEASE)
        assert other.claim_webhooks(now=now() + SKEW, limit=5, lease=LEASE) == []
        for _ in range(4):
            time.sleep(LEASE.total_seconds() / 3)
            assert mine.renew_webhooks({held.webhook_id}, now=now(), lease=LEASE) == 1
            assert other.claim_webhooks(now=now(), limit=5, lease=LEASE) == []
        (taken,) = eventually(lambda: other.claim_webhooks(now=now(), limit=5, lease=LEASE))
        assert taken.webhook_id == held.webhook_id
    finally:
        store.close()


def test_replicas_alive_by_heartbeat(pg_url):
    store = Store.open(pg_url, owner="replica-a")
    try:
        a, b = store.replicas, ReplicaRegistry(store.engine, owner="replica-b", calls=store.calls)
        assert a.beat(now=now(), ttl=timedelta(seconds=60)) == 1
        assert b.beat(now=now() + SKEW, ttl=LEASE) == 2
        assert eventually(lambda: a.alive(now=now()) == 1)  # b stopped beating: gone
        b.beat(now=now(), ttl=timedelta(seconds=60))
        b.leave()
        assert [r.instance for r in a.rows(now=now()) if r.alive] == ["replica-a"]
    finally:
        store.close()


def test_a_fire_keeps_one_batch_and_leaves_the_rest_for_any_replica(any_store: Store):
    t = now()
    kept = any_store.outbox.enqueue_leased([msg(i) for i in range(5)], now=t, lease=timedelta(minutes=1), keep=2)
    assert [i.message_id for i in kept] == ["<0@x.test>", "<1@x.test>"]
    other = type(any_store.outbox)(any_store.engine, owner="replica-b", calls=any_store.calls)
    taken = other.claim_due(now=t, limit=10, lease=timedelta(minutes=1))
    assert [i.message_id for i in taken] == ["<2@x.test>", "<3@x.test>", "<4@x.test>"]


def test_a_webhook_action_says_queued_then_delivered(any_store: Store):
    ledger, t = any_store.ledger, now()
    key = "alice/INBOX/7/1"
    ledger.plan([((key, "hooks", 0), "webhook"), ((key, "hooks2", 0), "webhook")], now=t)
    ledger.enqueue_webhooks(
        [
            dict(webhook_id=f"msg_{rule}", action_key=f"{key}|{rule}|0", rule=rule, url="http://h/", payload=b"{}")
            for rule in ("hooks", "hooks2")
        ],
        now=t,
    )
    # hooks: the executor records it queued, then the queue delivers it
    ledger.finish([((key, "hooks", 0), "done", {"webhook": "queued"}, None)], now=t)
    assert ledger.entries([key])[(key, "hooks", 0)].detail == {"webhook": "queued"}
    (first, second) = ledger.claim_webhooks(now=t, limit=5, lease=timedelta(minutes=1))
    ledger.webhook_done(first, now=t)
    assert ledger.entries([key])[(key, "hooks", 0)].detail["webhook"] == "delivered"
    # hooks2: another replica delivered it before the executor wrote "queued": that stays
    ledger.webhook_done(second, now=t)
    ledger.finish([((key, "hooks2", 0), "done", {"webhook": "queued"}, None)], now=t)
    entry = ledger.entries([key])[(key, "hooks2", 0)]
    assert entry.status == "done" and entry.detail["webhook"] == "delivered"
