"""A message the server cannot serve: a BYE (IMAP) or a dropped connection (POP3) every time
it is fetched. The watcher backs off between such sessions, finds the message, sets it aside
after ``max_attempts`` counted in the store (across restarts), and the rest of the folder is
handled. Real socket servers speaking the protocols: Dovecot can't be made to do this."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import timedelta

import pytest
from postroom.config.model import AccountConfig
from postroom.incoming import watch_loop
from postroom.incoming.watch_loop import Watcher, WatcherHooks
from postroom.incoming.watcher import ImapWatcher, Pop3Watcher
from postroom.store.inbound import DONE, FAILED, SET_ASIDE

from tests.support.inbox import USER, Recorder, eventually, rules
from tests.support.logins import login
from tests.support.scripted_imap import capability, scripted_imap
from tests.support.scripted_pop3 import scripted_pop3
from tests.support.store_fixtures import sqlite_url, store  # noqa: F401

BACKOFF = 0.05  # the watcher's first reconnect delay, test-sized
MAX_ATTEMPTS = 3
UIDS = (1, 2, 3, 4, 5)
POISON = 3


def _uid_set(text: bytes, highest: int) -> set[int]:
    wanted: set[int] = set()
    for part in text.decode().split(","):
        low, _, high = part.partition(":")
        first = highest if low == "*" else int(low)
        last = first if not high else highest if high == "*" else int(high)
        wanted.update(range(min(first, last), max(first, last) + 1))
    return wanted


def _header(uid: int) -> bytes:
    return b"Subject: m%d\r\nMessage-ID: <m%d@example.test>\r\n\r\n" % (uid, uid)


def poisoned_folder(tag: bytes, command: bytes) -> bytes | tuple[bytes, bool] | None:
    """An INBOX of UIDs 1-5 (no IDLE: the watcher polls). Any FETCH that reaches UID 3 is cut
    off by a BYE after the messages before it, as a server that can't read a file does."""
    words = command.split(b" ")
    verb = b" ".join(words[:2]).upper() if words[0].upper() == b"UID" else words[0].upper()
    if verb == b"CAPABILITY":
        return capability(tag)
    if verb == b"LOGIN":
        return tag + b" OK logged in\r\n"
    if verb == b"SELECT":
        return (
            b"* 5 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n* OK [UIDNEXT 6] ok\r\n" + tag + b" OK [READ-WRITE] selected\r\n"
        )
    if verb == b"UID SEARCH":
        found = _uid_set(words[words.index(b"UID", 1) + 1], max(UIDS)) & set(UIDS)
        return b"* SEARCH " + b" ".join(b"%d" % u for u in sorted(found)) + b"\r\n" + tag + b" OK done\r\n"
    if verb == b"UID FETCH":
        wanted = _uid_set(words[2], max(UIDS))
        section = re.search(rb"BODY\.PEEK(\[[^\]]*\])", command)
        reply = b""
        for seq, uid in enumerate(UIDS, 1):
            if uid not in wanted:
                continue
            if uid == POISON:
                return reply + b"* BYE Internal error reading this message\r\n", True
            header = _header(uid)
            reply += b"* %d FETCH (UID %d RFC822.SIZE 100 BODY%s {%d}\r\n%s)\r\n" % (
                seq,
                uid,
                section.group(1) if section else b"[]",
                len(header),
                header,
            )
        return reply + tag + b" OK done\r\n"
    if verb == b"LOGOUT":
        return b"* BYE bye\r\n" + tag + b" OK done\r\n", True
    return tag + b" BAD not scripted\r\n"


class Timeline:
    """What a watcher did between sessions: each reconnect delay, and each completed pass."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[float | str] = []
        real_sleep = watch_loop.sleep_or_stop

        async def recording_sleep(stop: asyncio.Event, delay: float) -> None:
            self.events.append(delay)
            await real_sleep(stop, delay)

        monkeypatch.setattr(watch_loop, "BACKOFF_START", BACKOFF)
        monkeypatch.setattr(watch_loop, "sleep_or_stop", recording_sleep)
        self.hooks = WatcherHooks(ok=lambda account, folder, at: self.events.append("pass"))

    def failure_runs(self) -> list[list[float]]:
        """The reconnect delays of each run of failed sessions with no completed pass between."""
        runs: list[list[float]] = [[]]
        for event in self.events:
            if event == "pass":
                runs.append([])
            else:
                assert isinstance(event, float)
                runs[-1].append(event)
        return [run for run in runs if run]


async def run_until(w: Watcher, until: Callable[[], bool]) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    try:
        await eventually(until, timeout=30)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_a_bye_in_the_middle_of_a_fetch_backs_off_and_sets_the_message_aside(store, monkeypatch):  # noqa: F811
    store.inbound.max_attempts = MAX_ATTEMPTS
    # a retry of the message comes after the rest had a pass (as the default minute does)
    store.inbound.retry_base = timedelta(seconds=1)
    timeline = Timeline(monkeypatch)
    rec = Recorder()
    key = f"{USER}/INBOX/7/{POISON}"
    with scripted_imap(poisoned_folder) as server:
        acct = AccountConfig.model_validate(
            {
                "address": "dave@example.test",
                "imap": dict(
                    host="127.0.0.1",
                    port=server.port,
                    security="none",
                    username="u",
                    password="p",
                    timeout=5,
                    start_from="all",
                    poll_interval=0.05,
                ),
            }
        )

        def watcher() -> ImapWatcher:
            return ImapWatcher(
                USER, acct, "INBOX", rules(), rec, store.inbound, hooks=timeline.hooks, credentials=login(acct.imap)
            )

        # first run: the message is found and its first failure counted; the others go on
        await run_until(watcher(), lambda: store.inbound.status(key) == FAILED and len(rec.subjects) == 4)
        # a restart: the count lives in the store, so the message is set aside all the same
        await run_until(watcher(), lambda: store.inbound.status(key) == SET_ASIDE)
        logins = sum(1 for line in server.lines if line.split(b" ")[1:2] == [b"LOGIN"])

    assert sorted(rec.subjects) == ["m1", "m2", "m4", "m5"]  # each once, none stuck behind it
    assert {store.inbound.status(f"{USER}/INBOX/7/{uid}") for uid in UIDS if uid != POISON} == {DONE}
    [aside] = store.inbound.set_aside(USER)
    assert (aside.uid, aside.attempts) == (POISON, MAX_ATTEMPTS)
    assert "connection broke on this message" in (aside.error or "")
    assert store.inbound.checkpoint(USER, "INBOX").last_uid == max(UIDS)
    # failed sessions in a row wait twice as long each time (no reset on a mere connect) ...
    runs = timeline.failure_runs()
    assert any(len(run) > 1 for run in runs), timeline.events
    for run in runs:
        assert run == [BACKOFF * 2**i for i in range(len(run))], timeline.events
    # ... and there are few of them: one per failed fetch of the message, one to narrow the
    # batch down per run, and the two sessions the test stopped
    assert logins == server.connections <= MAX_ATTEMPTS + 2 + 2


def poisoned_maildrop(command: bytes) -> bytes | None:
    """Messages 1-3; RETR 2 drops the connection without a word."""
    verb, _, arg = command.partition(b" ")
    verb = verb.upper()
    if verb == b"UIDL":
        return b"+OK\r\n" + b"".join(b"%d u%d\r\n" % (n, n) for n in (1, 2, 3)) + b".\r\n"
    if verb == b"RETR":
        if arg.strip() == b"2":
            return None
        return b"+OK\r\n" + _header(int(arg)) + b"body\r\n.\r\n"
    return b"+OK\r\n"


async def test_a_pop3_message_that_drops_the_connection_is_set_aside(store, monkeypatch):  # noqa: F811
    store.inbound.max_attempts = MAX_ATTEMPTS
    store.inbound.retry_base = timedelta(seconds=0.2)  # retries come at once: new mail must still pass them
    timeline = Timeline(monkeypatch)
    rec = Recorder()
    with scripted_pop3(poisoned_maildrop) as server:
        acct = AccountConfig.model_validate(
            {
                "address": "dave@example.test",
                "pop3": dict(
                    host="127.0.0.1",
                    port=server.port,
                    security="none",
                    username="u",
                    password="p",
                    timeout=5,
                    start_from="all",
                    poll_interval=0.05,
                ),
            }
        )
        w = Pop3Watcher(USER, acct, rules(), rec, store.inbound, hooks=timeline.hooks, credentials=login(acct.pop3))
        await run_until(w, lambda: store.inbound.status(f"{USER}/pop3/u2") == SET_ASIDE and len(rec.subjects) == 2)

    assert sorted(rec.subjects) == ["m1", "m3"]  # message 3 is not stuck behind message 2
    [aside] = store.inbound.set_aside(USER)
    assert (aside.uidl, aside.attempts) == ("u2", MAX_ATTEMPTS)
    assert "connection broke on this message" in (aside.error or "")
    for run in timeline.failure_runs():
        assert run == [BACKOFF * 2**i for i in range(len(run))], timeline.events
