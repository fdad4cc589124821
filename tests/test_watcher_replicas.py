"""Replicas on one PostgreSQL: two watchers for the same folder (as two replicas with the same
config would run), on the lab's real Dovecot. One works the folder and the other stands by;
every message is handed over once; when the worker dies without a word the other takes over
after the lease runs out, and when it stops cleanly at once. Plus the lease queries on both
databases."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from postroom.incoming.watcher import ImapWatcher
from postroom.store import Store

from tests.support.inbox import USER, Recorder, account, deliver, eventually, rules
from tests.support.logins import login

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
TTL = 3.0  # seconds: short, so a takeover after a crash is quick to see; not so short that a
# renewal delayed by a loaded machine (it runs every TTL/3) counts the lease as lost


def test_lease_claim_renew_expire_release(store: Store):
    # SQLite: the caller's (fake) clock; PostgreSQL keeps its own (tests/test_lease_clock.py)
    other = type(store.leases)(store.engine, owner="replica-b", calls=store.calls)
    mine, ttl = store.leases, timedelta(seconds=60)
    assert mine.claim("alice/INBOX", now=NOW, ttl=ttl)
    assert not other.claim("alice/INBOX", now=NOW + timedelta(seconds=30), ttl=ttl)  # held
    assert mine.claim("alice/INBOX", now=NOW + timedelta(seconds=30), ttl=ttl)  # renewed
    assert not other.claim("alice/INBOX", now=NOW + timedelta(seconds=80), ttl=ttl)  # still held
    assert other.claim("alice/INBOX", now=NOW + timedelta(seconds=91), ttl=ttl)  # ran out: taken
    assert mine.holder("alice/INBOX") == ("replica-b", NOW + timedelta(seconds=151))
    mine.release("alice/INBOX")  # not mine any more: nothing happens
    assert mine.holder("alice/INBOX")[0] == "replica-b"
    other.release("alice/INBOX")
    assert mine.holder("alice/INBOX") is None
    assert mine.claim("alice/INBOX", now=NOW, ttl=ttl)  # free again


class Replica:
    """One replica's watcher for the test user's INBOX, with its own store (and owner name)."""

    def __init__(self, lab, url: str, name: str):
        self.store = Store.open(url, owner=name)
        self.recorder = Recorder()
        acct = account(lab, start_from="all", idle=True)
        self.watcher = ImapWatcher(
            USER,
            acct,
            "INBOX",
            rules(),
            self.recorder,
            self.store.inbound,
            leases=self.store.leases,
            lease_ttl=TTL,
            credentials=login(acct.imap),
        )
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.watcher.run(self.stop))

    @property
    def working(self) -> bool:
        return self.watcher.lease is not None and self.watcher.lease.held

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)  # IDLE DONE and LOGOUT may each take the 10 s IMAP timeout
        self.store.close()


@pytest.mark.parametrize("how", ["crash", "clean stop"])
async def test_one_replica_works_a_folder_and_the_other_takes_over(clean_lab, pg_url, how):
    a = Replica(clean_lab, pg_url, "replica-a")
    await eventually(lambda: a.working and a.watcher.ready)
    b = Replica(clean_lab, pg_url, "replica-b")
    try:
        await eventually(lambda: b.watcher.ready)  # standing by counts as ready
        assert a.working and not b.working

        deliver(clean_lab, *(f"first {i}" for i in range(5)))
        await eventually(lambda: len(a.recorder.subjects) == 5)
        await asyncio.sleep(TTL)  # the standby had every chance to take something
        assert b.recorder.subjects == []

        if how == "crash":
            a.watcher.lease.leases.release = lambda watch: None  # dies: no release, no more renewals
            a.task.cancel()
            await asyncio.gather(a.task, return_exceptions=True)
        else:
            await a.close()
        await eventually(lambda: b.working, timeout=TTL * 4)

        deliver(clean_lab, *(f"second {i}" for i in range(5)), start=10)
        await eventually(lambda: len(b.recorder.subjects) == 5)
        assert sorted(b.recorder.subjects) == [f"second {i}" for i in range(5)]
        assert sorted(a.recorder.subjects) == [f"first {i}" for i in range(5)]  # nothing twice
    finally:
        await b.close()
        if not a.task.done():
            await a.close()
        else:
            a.store.close()


async def test_a_replica_that_loses_its_lease_stops_working_the_folder(clean_lab, sqlite_url):
    a = Replica(clean_lab, sqlite_url, "replica-a")
    other = type(a.store.leases)(a.store.engine, owner="replica-b", calls=a.store.calls)
    try:
        await eventually(lambda: a.working and a.watcher.ready)
        # another replica got the lease meanwhile (say this one stalled past its expiry)
        a.store.leases.release(a.watcher.watch_name())
        assert other.claim(a.watcher.watch_name(), now=datetime.now(UTC), ttl=timedelta(hours=1))
        await eventually(lambda: not a.working, timeout=TTL * 4)
        deliver(clean_lab, "while standing by")
        await asyncio.sleep(TTL)
        assert a.recorder.subjects == []  # the folder is the other replica's now
        other.release(a.watcher.watch_name())
        await eventually(lambda: a.recorder.subjects == ["while standing by"], timeout=TTL * 6)
    finally:
        await a.close()
