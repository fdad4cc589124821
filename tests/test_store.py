"""The store on SQLite and real PostgreSQL: migrations, idempotent enqueue, leases, claims."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from postroom.bootstrap import recover_single_node
from postroom.clock import utcnow
from postroom.errors import StoreUnavailable, is_transient
from postroom.store import NewMessage, RunStore, Store, schema_is_current
from postroom.store.calls import close_store, store_call
from postroom.store.tables import metadata
from sqlalchemy import inspect
from sqlalchemy.exc import OperationalError

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def msg(i: int, **kw) -> NewMessage:
    return NewMessage(
        dedup_key=f"job:j:{i}",
        message_id=f"<{i}@x.test>",
        account="alice",
        envelope_from="alice@x.test",
        recipients=kw.get("to", [f"r{i}@x.test"]),
        raw=b"Subject: hi\r\n\r\nbody\r\n",
        origin="j",
    )


def test_migrations_create_every_table(any_store: Store):
    names = set(inspect(any_store.engine).get_table_names())
    assert set(metadata.tables) <= names
    assert schema_is_current(any_store.engine)


def test_sqlite_is_wal_and_synchronous_full(store: Store):
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_enqueue_is_idempotent_on_dedup_key(any_store: Store):
    box = any_store.outbox
    assert box.enqueue([msg(1), msg(2)], now=NOW) == 2
    assert box.enqueue([msg(1), msg(2), msg(3)], now=NOW) == 1
    assert box.counts() == {"queued": 3}


def test_claim_lease_and_takeover_after_crash(store: Store):
    # SQLite measures leases by the caller's clock (a fake one here); PostgreSQL by its own:
    # tests/test_lease_clock.py
    box = store.outbox
    box.enqueue([msg(1)], now=NOW)
    first = box.claim_due(now=NOW, limit=10, lease=timedelta(minutes=5))
    assert [i.message_id for i in first] == ["<1@x.test>"]
    # while leased, nobody else gets it
    assert box.claim_due(now=NOW + timedelta(minutes=1), limit=10, lease=timedelta(minutes=5)) == []
    # the claimer died: after the lease it is taken again, with the same Message-ID
    again = box.claim_due(now=NOW + timedelta(minutes=6), limit=10, lease=timedelta(minutes=5))
    assert [i.message_id for i in again] == ["<1@x.test>"]


def test_defer_keeps_only_undelivered_recipients_then_dead_and_retry(any_store: Store):
    box = any_store.outbox
    box.enqueue([msg(1, to=["a@x.test", "b@x.test", "c@x.test"])], now=NOW)
    (item,) = box.claim_due(now=NOW, limit=1, lease=timedelta(minutes=5))
    box.defer(
        item,
        now=NOW,
        retry_at=NOW + timedelta(seconds=30),
        error="451 later",
        delivered=["a@x.test"],
        refused={"c@x.test": "550 no such user"},
        remaining=["b@x.test"],
    )
    assert box.claim_due(now=NOW + timedelta(seconds=10), limit=1, lease=timedelta(minutes=5)) == []
    (item,) = box.claim_due(now=NOW + timedelta(seconds=31), limit=1, lease=timedelta(minutes=5))
    assert item.recipients == ["b@x.test"] and item.delivered == ["a@x.test"] and item.attempts == 1
    box.kill(item, now=NOW, error="554 rejected", refused={"b@x.test": "554 rejected"})
    (dead,) = box.list(statuses=["dead"])
    assert dead.last_error == "554 rejected" and set(dead.refused) == {"b@x.test", "c@x.test"}
    assert box.retry(dead.id, now=NOW)
    (item,) = box.claim_due(now=NOW, limit=1, lease=timedelta(minutes=5))
    assert item.recipients == ["b@x.test"] and item.message_id == "<1@x.test>"
    box.mark_sent(item, now=NOW, delivered=["b@x.test"], refused={})
    assert box.counts() == {"sent": 1}


def test_concurrent_claimers_never_share_a_row(any_store: Store):
    box = any_store.outbox
    box.enqueue([msg(i) for i in range(200)], now=NOW)
    got: list[list[int]] = [[], [], [], []]

    def worker(n: int) -> None:
        while True:
            items = box.claim_due(now=NOW, limit=7, lease=timedelta(minutes=5))
            if not items:
                return
            got[n].extend(i.id for i in items)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for g in got for i in g]
    assert len(every) == 200 and len(set(every)) == 200


def test_fire_claimed_once_and_a_lapsed_claim_taken_over_with_its_run_closed(any_store: Store):
    """A claim is a lease: renewed, it stays; not renewed for a lease, another process takes
    the fire over and the first holder's run is closed, not left `running`."""
    lease = timedelta(seconds=1)
    first = RunStore(any_store.engine, owner="replica-a", calls=any_store.calls, lease=lease)
    second = RunStore(any_store.engine, owner="replica-b", calls=any_store.calls, lease=lease)
    fire = datetime(2026, 11, 26, 7, 0, tzinfo=UTC)
    assert first.claim_fire("j", fire, now=utcnow())
    run_id = first.start_run("j", fire_time=fire, trigger="schedule", now=utcnow())
    assert not second.claim_fire("j", fire, now=utcnow())
    for _ in range(3):  # renewed: never lapses
        time.sleep(0.5)
        assert first.renew_fire("j", fire, now=utcnow())
        assert not second.claim_fire("j", fire, now=utcnow())
        assert second.unfinished_fires(now=utcnow()) == []
    time.sleep(1.3)  # the holder died: its lease lapses
    assert second.unfinished_fires(now=utcnow()) == [("j", fire)]
    assert second.claim_fire("j", fire, now=utcnow())
    assert not first.renew_fire("j", fire, now=utcnow())  # the stalled holder learns it lost it
    dead = next(r for r in first.recent_runs() if r.job_id == "j")
    assert (dead.status, dead.finished_at is not None) == ("failed", True) and "replica-b" in (dead.error or "")
    assert run_id
    second.finish_fire("j", fire, now=utcnow(), status="done")
    assert not first.claim_fire("j", fire, now=utcnow() + timedelta(hours=1))
    assert first.last_fire("j") == fire


def test_a_fire_not_yet_due_by_the_databases_clock_is_not_claimed(pg_url: str):
    """A replica whose clock runs fast asks for a fire before its time: PostgreSQL's `now()`
    refuses it (the scheduler waits for the database's time; this is the store's own check)."""
    store = Store.open(pg_url, owner="fast")
    try:
        soon = utcnow() + timedelta(seconds=30)
        assert not store.runs.claim_fire("j", soon, now=soon)
        assert store.runs.claim_fire("j", utcnow(), now=utcnow())
    finally:
        store.close()


def test_a_fires_stored_messages_are_counted_by_its_key_prefix_only(any_store: Store):
    runs = any_store.runs
    any_store.outbox.enqueue(
        [
            NewMessage(
                dedup_key=key,
                message_id=f"<{i}@example.test>",
                account="a",
                envelope_from="a@example.test",
                recipients=["b@example.test"],
                raw=b"Subject: x\r\n\r\nx",
            )
            for i, key in enumerate(
                ["job:a_b:20261126T070000Z:0", "job:a_b:20261126T070000Z:1", "job:axb:20261126T070000Z:0"]
            )
        ],
        now=NOW,
    )
    assert runs.stored_messages("job:a_b:20261126T070000Z") == 2
    assert runs.stored_messages("job:a%:20261126T070000Z") == 0
    assert runs.stored_messages("job:a_b:20261126T080000Z") == 0


def test_a_retry_takes_back_its_own_running_claim_never_anothers(any_store: Store):
    runs = any_store.runs
    fire = datetime(2026, 11, 26, 7, 0, tzinfo=UTC)
    assert runs.claim_fire("j", fire, now=NOW)  # then the store went away mid-run
    assert not runs.claim_fire("j", fire, now=NOW)  # a second fire of the same time is not a retry
    assert runs.claim_fire("j", fire, now=NOW, again=True)  # our retry: the claim is ours
    other = RunStore(any_store.engine, owner="other-replica", calls=any_store.calls)
    assert not other.claim_fire("j", fire, now=NOW, again=True)
    runs.finish_fire("j", fire, now=NOW, status="done")
    assert not runs.claim_fire("j", fire, now=NOW, again=True)  # done is done


def test_migration_child_ignores_a_postroom_folder_in_the_working_directory(tmp_path, monkeypatch):
    """The daemon migrates in a child process. A folder named like the package in the working
    directory (say `postroom init postroom` was run there) must not be imported instead."""
    from postroom.bootstrap import open_daemon_store
    from postroom.config import Settings

    decoy = tmp_path / "postroom"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise SystemExit('the decoy package was imported')\n")
    monkeypatch.chdir(tmp_path)
    store = open_daemon_store(Settings(database_url=f"sqlite:///{tmp_path / 'state.db'}", instance="probe"))
    try:
        assert schema_is_current(store.engine)
    finally:
        store.close()


def test_a_fire_left_running_by_a_killed_daemon_is_claimed_again_at_the_next_start(store: Store):
    """SQLite is one process: a fire still `running` at start was a killed daemon's. It is
    resumed at once, by one claimant only, not after the ten-minute lease (the soak lost a
    whole merge to a kill -9 while it was being built)."""
    runs = store.runs
    fire = datetime(2026, 11, 26, 7, 0, tzinfo=UTC)
    assert runs.claim_fire("j", fire, now=NOW)  # the daemon that is then killed
    restart = NOW + timedelta(seconds=5)
    assert not runs.claim_fire("j", fire, now=restart)
    recover_single_node(store)
    assert runs.unfinished_fires(now=restart) == [("j", fire)]
    assert runs.claim_fire("j", fire, now=restart)  # the resume (or the scheduler's catch-up)
    assert not runs.claim_fire("j", fire, now=restart + timedelta(seconds=1))  # not both


async def test_store_calls_run_off_the_loop_and_driver_errors_come_back_transient(store: Store):
    assert await store.calls.run(threading.current_thread) is not threading.current_thread()

    def lost() -> None:
        raise OperationalError("SELECT 1", {}, ConnectionError("server closed the connection unexpectedly"))

    with pytest.raises(StoreUnavailable, match="server closed the connection") as raised:
        await store.calls.run(lost)
    assert is_transient(raised.value)
    store.calls.gate.close("the store file /x/postroom.db is gone")
    try:
        with pytest.raises(StoreUnavailable, match="is gone"):
            await store_call(store.runs.last_fire, "j")  # never reaches the store
    finally:
        store.calls.gate.open()
    assert await store_call(store.runs.last_fire, "j") is None


async def test_each_store_has_its_own_threads_and_gate(sqlite_url, tmp_path):
    """Two stores in one process (a test, a `send` beside the console): closing one's gate or
    closing it leaves the other as it is."""
    other = Store.open(f"sqlite:///{tmp_path / 'other' / 'postroom.db'}", owner="test")
    store = Store.open(sqlite_url, owner="test")
    try:
        ran_on = await store.calls.run(threading.current_thread)
        assert ran_on is not await other.calls.run(threading.current_thread)
        store.calls.gate.close("the store file is gone")
        with pytest.raises(StoreUnavailable, match="is gone"):
            await store_call(store.runs.last_fire, "j")
        assert await store_call(other.runs.last_fire, "j") is None
    finally:
        await close_store(store)
    assert await store_call(other.runs.last_fire, "j") is None
    await close_store(other)


async def test_the_store_threads_end_with_the_store(store: Store):
    thread = await store.calls.run(threading.current_thread)
    await close_store(store)
    thread.join(timeout=5)
    assert not thread.is_alive()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store_call(store.runs.last_fire, "j")
    await close_store(store)  # a store closed already is left as it is
