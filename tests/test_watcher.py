"""Watchers against the lab's real Dovecot, with a small recording handler standing in for the
action executor: start_from, restarts, UIDVALIDITY changes, poison messages, prefilter, IDLE,
a Dovecot restart under a running watcher, dry run, POP3 with and without delete_after."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from postroom.incoming.imap import ImapConnection
from postroom.incoming.watcher import ImapWatcher, Pop3Watcher
from postroom.store import Store
from postroom.store.inbound import FAILED
from structlog.testing import capture_logs

from tests.support.inbox import USER, Recorder, account, deliver, eventually, maildrop_size, pop3_account, rules
from tests.support.logins import login
from tests.support.store_fixtures import any_store, pg_url, sqlite_url, store  # noqa: F401


def watcher(lab, store, handler, *, match=None, dry_run=False, **imap) -> ImapWatcher:  # noqa: F811
    acct = account(lab, **imap)
    return ImapWatcher(
        USER, acct, "INBOX", rules(match), handler, store.inbound, dry_run=dry_run, credentials=login(acct.imap)
    )


async def one_cycle(lab, w: ImapWatcher) -> None:
    conn = ImapConnection(USER, w.cfg, w.credentials)
    await conn.connect()
    try:
        await w.cycle(conn)
    finally:
        await conn.close()


def server_uids(lab) -> list[int]:
    """INBOX UIDs as the server has them (they keep counting across tests' clean-ups)."""
    client = lab.imap_client(USER)
    try:
        client.select_folder("INBOX", readonly=True)
        return sorted(client.search("ALL"))
    finally:
        client.logout()


async def test_start_from_new_skips_existing(clean_lab, store):  # noqa: F811
    deliver(clean_lab, "old 1", "old 2")
    rec = Recorder()
    w = watcher(clean_lab, store, rec)
    with capture_logs() as logs:
        await one_cycle(clean_lab, w)
    assert rec.subjects == []
    assert any("start_from=new" in e["event"] for e in logs)
    checkpoint = store.inbound.checkpoint(USER, "INBOX")
    assert checkpoint.last_uid == server_uids(clean_lab)[-1] and checkpoint.start_from == "new"
    deliver(clean_lab, "fresh", start=10)
    await one_cycle(clean_lab, w)
    assert rec.subjects == ["fresh"]


async def test_start_from_unseen_and_all(clean_lab, store, tmp_path):  # noqa: F811
    deliver(clean_lab, "a", "b", "c")
    client = clean_lab.imap_client(USER)
    try:
        client.select_folder("INBOX")
        client.add_flags([min(client.search("ALL"))], [b"\\Seen"])
    finally:
        client.logout()
    rec = Recorder()
    await one_cycle(clean_lab, watcher(clean_lab, store, rec, start_from="unseen"))
    assert rec.subjects == ["b", "c"]
    assert store.inbound.checkpoint(USER, "INBOX").last_uid == server_uids(clean_lab)[-1]  # "a" looked at too

    # the "all" case on the same mailbox needs a store of its own (no checkpoint yet)
    other = Store.open(f"sqlite:///{tmp_path / 'other.db'}", owner="test")
    try:
        rec_all = Recorder()
        await one_cycle(clean_lab, watcher(clean_lab, other, rec_all, start_from="all"))
        assert rec_all.subjects == ["a", "b", "c"]
    finally:
        other.close()


async def test_restart_does_not_hand_the_same_message_again(clean_lab, store):  # noqa: F811
    rec = Recorder()
    await one_cycle(clean_lab, watcher(clean_lab, store, rec, start_from="all"))
    deliver(clean_lab, "one", "two")
    await one_cycle(clean_lab, watcher(clean_lab, store, rec, start_from="all"))
    await one_cycle(clean_lab, watcher(clean_lab, store, rec, start_from="all"))  # a restart
    assert rec.subjects == ["one", "two"]
    # even with the checkpoint lost, the inbound rows keep them from being handled twice
    store.inbound.set_checkpoint(
        USER,
        "INBOX",
        uidvalidity=store.inbound.checkpoint(USER, "INBOX").uidvalidity,
        last_uid=0,
        start_from="all",
        now=store.inbound.checkpoint(USER, "INBOX").updated_at,
    )
    await one_cycle(clean_lab, watcher(clean_lab, store, rec, start_from="all"))
    assert rec.subjects == ["one", "two"]


async def test_uidvalidity_change_does_not_rehandle(clean_lab, store):  # noqa: F811
    deliver(clean_lab, "one", "two")
    rec = Recorder()
    await one_cycle(clean_lab, watcher(clean_lab, store, rec, start_from="all"))
    before = store.inbound.checkpoint(USER, "INBOX").uidvalidity
    clean_lab.doveadm("mailbox", "update", "-u", USER, "--uid-validity", str(before + 1000), "INBOX")
    deliver(clean_lab, "three", start=10)
    with capture_logs() as logs:
        await one_cycle(clean_lab, watcher(clean_lab, store, rec, start_from="all"))
    assert rec.subjects == ["one", "two", "three"]
    assert store.inbound.checkpoint(USER, "INBOX").uidvalidity == before + 1000
    assert any("UIDVALIDITY changed" in e["event"] for e in logs)


class OverlapRecorder(Recorder):
    """Holds the first batch until the second has arrived (so the two are in flight at once)
    and notes the checkpoint while the first is still running."""

    def __init__(self, store) -> None:  # noqa: F811
        super().__init__()
        self.store = store
        self.second_arrived = asyncio.Event()
        self.checkpoint_while_first_ran: int | None = None
        self.batches = 0

    async def handle_batch(self, account, folder, mailbox, items):
        self.batches += 1
        if self.batches == 1:
            await asyncio.wait_for(self.second_arrived.wait(), 10)  # sequential batches: TimeoutError
            await asyncio.sleep(0.2)  # the second one finishes first
            checkpoint = self.store.inbound.checkpoint(USER, "INBOX")
            self.checkpoint_while_first_ran = checkpoint.last_uid if checkpoint else 0
        else:
            self.second_arrived.set()
        return await super().handle_batch(account, folder, mailbox, items)


async def test_two_batches_in_flight_and_the_checkpoint_waits_for_the_older(clean_lab, store):  # noqa: F811
    deliver(clean_lab, *(f"m{i}" for i in range(6)))
    rec = OverlapRecorder(store)
    acct = account(clean_lab, start_from="all")
    w = ImapWatcher(USER, acct, "INBOX", rules(), rec, store.inbound, batch_size=2, credentials=login(acct.imap))
    await one_cycle(clean_lab, w)
    assert sorted(rec.subjects) == [f"m{i}" for i in range(6)] and rec.batches == 3
    assert rec.checkpoint_while_first_ran == 0  # the second batch was done, but not the first
    assert store.inbound.checkpoint(USER, "INBOX").last_uid == server_uids(clean_lab)[-1]


async def test_stop_lets_batches_in_flight_finish_and_starts_no_more(clean_lab, store):  # noqa: F811
    deliver(clean_lab, *(f"m{i}" for i in range(6)))
    stop = asyncio.Event()

    class StopAfterFirst(Recorder):
        async def handle_batch(self, account, folder, mailbox, items):
            stop.set()  # SIGTERM while the first batch is being handled
            return await super().handle_batch(account, folder, mailbox, items)

    rec = StopAfterFirst()
    acct = account(clean_lab, start_from="all")
    w = ImapWatcher(USER, acct, "INBOX", rules(), rec, store.inbound, batch_size=2, credentials=login(acct.imap))
    conn = ImapConnection(USER, w.cfg, w.credentials)
    await conn.connect()
    try:
        assert await w.cycle(conn, stop) is False
    finally:
        await conn.close()
    # the two batches in flight (in either order: each reads the store off the loop first), not the third
    assert sorted(rec.subjects) == ["m0", "m1", "m2", "m3"]
    assert store.inbound.checkpoint(USER, "INBOX").last_uid == server_uids(clean_lab)[3]
    await one_cycle(clean_lab, w)  # the next start takes the rest
    assert sorted(rec.subjects) == [f"m{i}" for i in range(6)]


async def test_a_failing_message_does_not_block_the_others(clean_lab, store):  # noqa: F811
    deliver(clean_lab, "ok 1", "poison", "ok 2")
    rec = Recorder(poison=["poison"])
    await one_cycle(clean_lab, watcher(clean_lab, store, rec, start_from="all"))
    assert rec.subjects == ["ok 1", "ok 2"]
    checkpoint = store.inbound.checkpoint(USER, "INBOX")
    uids = server_uids(clean_lab)
    assert checkpoint.last_uid == uids[-1]
    assert store.inbound.status(f"{USER}/INBOX/{checkpoint.uidvalidity}/{uids[1]}") == FAILED


async def test_failed_message_is_retried_then_set_aside(clean_lab, store):  # noqa: F811
    from datetime import timedelta

    deliver(clean_lab, "refused")
    store.inbound.retry_base = timedelta(0)
    store.inbound.max_attempts = 2
    rec = Recorder(refuse=["refused"])
    w = watcher(clean_lab, store, rec, start_from="all")
    for _ in range(3):
        await one_cycle(clean_lab, w)
    assert rec.subjects == ["refused", "refused"]  # tried, retried once, then given up
    assert [row.uid for row in store.inbound.set_aside(USER)] == server_uids(clean_lab)


async def test_permanent_failure_is_set_aside_at_once(clean_lab, store):  # noqa: F811
    deliver(clean_lab, "hopeless", "fine")
    rec = Recorder(hopeless=["hopeless"])
    await one_cycle(clean_lab, watcher(clean_lab, store, rec, start_from="all"))
    assert rec.subjects == ["hopeless", "fine"]
    assert [row.uid for row in store.inbound.set_aside(USER)] == server_uids(clean_lab)[:1]


async def test_prefilter_skips_non_matching_but_advances(clean_lab, store):  # noqa: F811
    rec = Recorder()
    w = watcher(clean_lab, store, rec, match={"subject": {"contains": "[report]"}}, start_from="all")
    await one_cycle(clean_lab, w)
    deliver(clean_lab, "hello", "[report] daily", "bye")
    await one_cycle(clean_lab, w)
    assert rec.subjects == ["[report] daily"]
    uids = server_uids(clean_lab)
    checkpoint = store.inbound.checkpoint(USER, "INBOX")
    assert checkpoint.last_uid == uids[-1]
    assert store.inbound.status(f"{USER}/INBOX/{checkpoint.uidvalidity}/{uids[0]}") is None  # never fetched


async def test_dry_run_acts_on_nothing(clean_lab, store):  # noqa: F811
    deliver(clean_lab, "one")
    rec = Recorder()
    with capture_logs() as logs:
        await one_cycle(clean_lab, watcher(clean_lab, store, rec, start_from="all", dry_run=True))
    assert rec.subjects == []
    assert store.inbound.checkpoint(USER, "INBOX") is None
    assert any(e["event"] == "would flag" for e in logs)


async def run_watcher(w, until: Callable[[], bool], during: Callable[[], None] | None = None) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    try:
        await eventually(lambda: w.inbound.checkpoint(USER, "INBOX") is not None)
        if during:
            await asyncio.to_thread(during)
        await eventually(until, timeout=60)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_idle_watcher_sees_delivered_mail(clean_lab, store):  # noqa: F811
    rec = Recorder()
    w = watcher(clean_lab, store, rec)
    await run_watcher(
        w, lambda: rec.subjects == ["while idle"], during=lambda: (time.sleep(0.3), deliver(clean_lab, "while idle"))
    )


async def test_mail_announced_during_a_pass_is_taken_without_waiting_for_idle(clean_lab, store):  # noqa: F811
    """Mail that arrives while a pass runs is announced (EXISTS) in the reply to one of the
    pass's own commands, once; IDLE would not announce it again. The watcher must look."""
    deliver(clean_lab, "first")

    class DeliversDuringThePass(Recorder):
        async def handle_batch(self, account, folder, mailbox, items):
            if not self.subjects:
                await asyncio.to_thread(deliver, clean_lab, "during 1", "during 2", start=10)
                await mailbox.flags([items[0].uid])  # a command whose reply carries the EXISTS
            return await super().handle_batch(account, folder, mailbox, items)

    rec = DeliversDuringThePass()
    acct = account(clean_lab, start_from="all")
    w = ImapWatcher(
        USER, acct, "INBOX", rules(), rec, store.inbound, idle_timeout=120, credentials=login(acct.imap)
    )  # without the look, "during" would wait for IDLE's renewal
    started = time.monotonic()
    await run_watcher(w, lambda: len(rec.subjects) == 3)
    assert rec.subjects == ["first", "during 1", "during 2"] and time.monotonic() - started < 30


async def test_polling_watcher_sees_delivered_mail(clean_lab, store):  # noqa: F811
    rec = Recorder()
    w = watcher(clean_lab, store, rec, idle=False, poll_interval="1s")
    await run_watcher(w, lambda: rec.subjects == ["polled"], during=lambda: deliver(clean_lab, "polled"))


async def test_watcher_survives_a_dovecot_restart(clean_lab, store):  # noqa: F811
    rec = Recorder()
    w = watcher(clean_lab, store, rec)

    def restart_and_deliver() -> None:
        clean_lab.stop_dovecot()
        time.sleep(0.5)
        clean_lab.start_dovecot()
        deliver(clean_lab, "after restart")

    with capture_logs() as logs:
        await run_watcher(w, lambda: rec.subjects == ["after restart"], during=restart_and_deliver)
    assert any(e["event"].startswith("watcher connection trouble") for e in logs)


# -- POP3 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("delete_after", [False, True])
async def test_pop3_watcher(clean_lab, store, delete_after):  # noqa: F811
    deliver(clean_lab, "one", "two", "kept")
    rec = Recorder(refuse=["kept"])
    acct = pop3_account(clean_lab, start_from="all", delete_after=delete_after)
    w = Pop3Watcher(USER, acct, rules(), rec, store.inbound, credentials=login(acct.pop3))
    await w.poll_once()
    assert sorted(rec.subjects) == ["kept", "one", "two"] and rec.mailboxes == [None]
    await w.poll_once()
    assert len(rec.subjects) == 3  # nothing new; "kept" waits for its retry backoff
    # with delete_after only the done ones leave the maildrop; the not-done one stays
    assert await maildrop_size(clean_lab) == (1 if delete_after else 3)


async def test_pop3_first_start_new_skips_existing(clean_lab, store):  # noqa: F811
    deliver(clean_lab, "old")
    rec = Recorder()
    acct = pop3_account(clean_lab, delete_after=True)
    w = Pop3Watcher(USER, acct, rules(), rec, store.inbound, credentials=login(acct.pop3))
    await w.poll_once()
    deliver(clean_lab, "new", start=5)
    await w.poll_once()
    assert rec.subjects == ["new"]
    assert await maildrop_size(clean_lab) == 1  # "old" was never handled, so never deleted


async def test_one_accounts_trouble_does_not_stall_another(clean_lab, store):  # noqa: F811
    rec_bad, rec_good = Recorder(), Recorder()
    bad = watcher(clean_lab, store, rec_bad, password="wrong")
    good = watcher(clean_lab, store, rec_good)
    stop = asyncio.Event()
    with capture_logs() as logs:
        bad_task = asyncio.create_task(bad.run(stop))
        await run_watcher(
            good, lambda: rec_good.subjects == ["still flowing"], during=lambda: deliver(clean_lab, "still flowing")
        )
        await eventually(lambda: any(e["event"].startswith("watcher cannot work") for e in logs))
    stop.set()
    await asyncio.wait_for(bad_task, 30)  # and it stops promptly, mid-way through its long wait
    assert rec_bad.subjects == []


# -- the inbound store, on SQLite and PostgreSQL ------------------------------------------


async def test_inbound_store_rows_and_retries(any_store):  # noqa: F811
    from datetime import UTC, datetime, timedelta

    from postroom.store.inbound import DONE, SET_ASIDE, InboundStore

    inbound = InboundStore(any_store.engine, calls=any_store.calls, max_attempts=3, retry_base=timedelta(minutes=1))
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    assert (
        inbound.begin("a/INBOX/7/1", account="a", folder="INBOX", now=now, uidvalidity=7, uid=1, message_id="<x@t>")
        is None
    )
    assert inbound.begin("a/INBOX/7/1", account="a", folder="INBOX", now=now, uidvalidity=7, uid=1) == "pending"
    assert inbound.finish("a/INBOX/7/1", DONE, now=now) == DONE
    assert inbound.seen_message_ids("a", "INBOX", ["<x@t>", "<y@t>"]) == {"<x@t>"}
    assert inbound.seen_message_ids("a", "Other", ["<x@t>"]) == set()

    inbound.begin("a/pop3/U2", account="a", folder="INBOX", now=now, uidl="U2")
    assert inbound.known_uidls("a") == set()  # pending: a crash mid-handling is taken in again
    assert inbound.finish("a/pop3/U2", FAILED, now=now, error="boom") == FAILED
    assert inbound.known_uidls("a") == {"U2"}
    assert inbound.retry_candidates("a", "INBOX", now=now) == []  # backoff not over
    later = now + timedelta(minutes=1)
    assert [r.uidl for r in inbound.retry_candidates("a", "INBOX", now=later)] == ["U2"]
    assert inbound.finish("a/pop3/U2", FAILED, now=later) == FAILED
    assert inbound.retry_candidates("a", "INBOX", now=later + timedelta(minutes=1)) == []  # now 2 min
    assert inbound.finish("a/pop3/U2", FAILED, now=later) == SET_ASIDE  # third failure: give up
    assert [r.key for r in inbound.set_aside("a")] == ["a/pop3/U2"]

    inbound.set_checkpoint("a", "INBOX", uidvalidity=7, last_uid=5, start_from="new", now=now)
    inbound.set_checkpoint("a", "INBOX", uidvalidity=7, last_uid=9, start_from="new", now=later)
    checkpoint = inbound.checkpoint("a", "INBOX")
    assert (checkpoint.last_uid, checkpoint.updated_at) == (9, later)
