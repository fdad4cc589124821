"""The store paths the console's pages and actions add, on SQLite and PostgreSQL: discard a
dead letter, list and retry webhook deliveries, take a set-aside message in again, recent
runs, and which replica holds which watch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from postroom.store import NewMessage, WatchLeases
from postroom.store.inbound import FAILED, SET_ASIDE

NOW = datetime(2026, 11, 29, 6, 0, tzinfo=UTC)


def dead_letter(store, key: str = "k1") -> int:
    store.outbox.enqueue(
        [
            NewMessage(
                dedup_key=key,
                message_id=f"<{key}@t>",
                account="alice",
                envelope_from="alice@example.test",
                recipients=["bob@example.test"],
                raw=b"Subject: hi\r\n\r\nhello\r\n",
                origin="job",
            )
        ],
        now=NOW,
    )
    (item,) = store.outbox.claim_due(now=NOW, limit=10, lease=timedelta(minutes=5))
    store.outbox.kill(item, now=NOW, error="554 5.7.1 refused")
    return item.id


def test_discard_keeps_a_dead_letter_on_record_and_never_sends_it(any_store):
    item_id = dead_letter(any_store)
    assert any_store.outbox.discard(item_id, now=NOW)
    assert any_store.outbox.get(item_id).status == "discarded"
    assert not any_store.outbox.discard(item_id, now=NOW)  # only a dead letter
    assert not any_store.outbox.retry(item_id, now=NOW)  # given up on for good
    assert any_store.outbox.claim_due(now=NOW + timedelta(days=1), limit=10, lease=timedelta(minutes=5)) == []
    assert any_store.outbox.counts() == {"discarded": 1}


def test_a_dead_webhook_is_listed_and_queued_again_by_retry(any_store):
    ledger = any_store.ledger
    ledger.enqueue_webhooks(
        [
            {
                "webhook_id": "msg_1",
                "action_key": "m/r/0",
                "rule": "r",
                "url": "http://127.0.0.1:9/hook",
                "payload": b"{}",
            }
        ],
        now=NOW,
    )
    (delivery,) = ledger.claim_webhooks(now=NOW, limit=10, lease=timedelta(minutes=5))
    ledger.webhook_dead(delivery, now=NOW, error="HTTP 410")
    assert ledger.webhooks(statuses=["queued", "sending"]) == []
    (dead,) = ledger.webhooks(statuses=["dead"])
    assert dead.last_error == "HTTP 410" and dead.attempts == 1
    assert ledger.retry_webhook("msg_1", now=NOW)
    assert not ledger.retry_webhook("msg_1", now=NOW)  # not dead any more
    (again,) = ledger.claim_webhooks(now=NOW, limit=10, lease=timedelta(minutes=5))
    assert again.webhook_id == "msg_1" and again.attempts == 0


def test_a_set_aside_message_is_retried_at_the_watchers_next_pass(any_store):
    inbound = any_store.inbound
    inbound.begin("alice/INBOX/1/7", account="alice", folder="INBOX", now=NOW, uidvalidity=1, uid=7)
    inbound.finish("alice/INBOX/1/7", SET_ASIDE, now=NOW, error="template error")
    assert [r.key for r in inbound.set_aside()] == ["alice/INBOX/1/7"]
    assert inbound.retry_candidates("alice", "INBOX", now=NOW) == []
    assert inbound.retry_set_aside("alice/INBOX/1/7", now=NOW)
    assert inbound.status("alice/INBOX/1/7") == FAILED
    (due,) = inbound.retry_candidates("alice", "INBOX", now=NOW)  # at once, no backoff to wait out
    assert due.attempts == 0
    assert not inbound.retry_set_aside("alice/INBOX/1/7", now=NOW)


def test_recent_runs_are_newest_first(any_store):
    runs = any_store.runs
    for i, job in enumerate(("a", "b", "a")):
        run_id = runs.start_run(job, fire_time=None, trigger="manual", now=NOW + timedelta(minutes=i))
        runs.finish_run(run_id, now=NOW + timedelta(minutes=i, seconds=3), status="done", messages=i)
    recent = runs.recent_runs(limit=2)
    assert [(r.job_id, r.messages) for r in recent] == [("a", 2), ("b", 1)]


def test_leases_tell_which_replica_watches_what(any_store):
    mine = WatchLeases(any_store.engine, owner="host-a:1", calls=any_store.calls)
    theirs = WatchLeases(any_store.engine, owner="host-b:2", calls=any_store.calls)
    assert mine.claim("alice/INBOX", now=NOW, ttl=timedelta(minutes=1))
    assert theirs.claim("bob/pop3", now=NOW, ttl=timedelta(minutes=1))
    assert mine.all(now=NOW) == [("alice/INBOX", "host-a:1"), ("bob/pop3", "host-b:2")]
    if any_store.engine.dialect.name == "sqlite":  # PostgreSQL leases run on the database's clock
        assert mine.all(now=NOW + timedelta(minutes=2)) == []  # run out: nobody holds them
