"""One MOVE for a whole pass on the real Dovecot (SEARCHRES, RFC 5182): when one rule that
SEARCH decides exactly matches more than a batch, the watcher saves the result on the server
(``UID SEARCH RETURN (SAVE)``) and the handler's move of all of it is one ``UID MOVE $``, never
a UID set long enough to hit the server's line limit. Without SEARCHRES, or with several rules,
batches as before. The commands are read off the client's socket writes (imaplib's ``send``:
the server stays the real one)."""

from __future__ import annotations

import imaplib

import pytest
from postroom.config.model import Config
from postroom.incoming.imap import ImapConnection
from postroom.incoming.rules import compile_rules
from postroom.incoming.watcher import ImapWatcher

from tests.support.action_rig import make_rig
from tests.support.inbox import USER, account, raw_message
from tests.support.logins import login
from tests.support.store_fixtures import sqlite_url, store  # noqa: F401

MESSAGES = 120
BATCH = 25  # so the pass is several batches (the watcher's default is 2,000)


@pytest.fixture
def sent(monkeypatch) -> list[bytes]:
    """Every command line the client writes (upper-cased), in order."""
    lines: list[bytes] = []
    send = imaplib.IMAP4.send

    def recording(self: imaplib.IMAP4, data: bytes) -> None:
        lines.append(bytes(data).upper())
        send(self, data)

    monkeypatch.setattr(imaplib.IMAP4, "send", recording)
    return lines


def seed(lab) -> list[str]:
    subjects = [f"[report] {i}" if i % 2 else f"hello {i}" for i in range(MESSAGES)]
    lab.seed_maildir(USER, "INBOX", [raw_message(i, subject=s) for i, s in enumerate(subjects)])
    with lab.imap_client(USER) as client:
        if not client.folder_exists("Archive"):
            client.create_folder("Archive")
    return subjects


def count(lab, folder: str) -> int:
    with lab.imap_client(USER) as client:
        return int(client.folder_status(folder, [b"MESSAGES"])[b"MESSAGES"])


def rule(name: str = "archive", **match) -> dict:
    return {
        "name": name,
        "account": USER,
        "match": match or {"subject": {"contains": "[report]"}},
        "actions": [{"move": "Archive"}],
    }


async def one_pass(lab, store, rules: list[dict], *, searchres: bool = True) -> None:  # noqa: F811
    acct = account(lab, start_from="all")
    config = Config.model_validate({"accounts": {USER: acct.model_dump()}, "rules": rules})
    rig = make_rig(store, config)
    w = ImapWatcher(
        USER,
        acct,
        "INBOX",
        compile_rules(config.rules),
        rig.executor,
        store.inbound,
        batch_size=BATCH,
        credentials=login(acct.imap),
    )
    conn = ImapConnection(USER, w.cfg, login(w.cfg))
    await conn.connect()
    try:
        assert conn.has("SEARCHRES")  # the lab's Dovecot has it
        if not searchres:  # what the watcher sees of a server without it
            conn.capabilities = conn.capabilities - {"SEARCHRES"}
        assert await w.cycle(conn)
    finally:
        await conn.close()


def moves(lines: list[bytes]) -> list[bytes]:
    return [line.split(b" UID MOVE ", 1)[1].split(b" ", 1)[0] for line in lines if b" UID MOVE " in line]


def keys(store) -> list[str]:  # noqa: F811
    """Every key the pass may have written (UIDs go on from earlier tests' messages)."""
    cp = store.inbound.checkpoint(USER, "INBOX")
    return [f"{USER}/INBOX/{cp.uidvalidity}/{uid}" for uid in range(1, cp.last_uid + 1)]


def all_done(store) -> list[str]:  # noqa: F811
    return sorted(store.inbound.statuses(keys(store)).values())


async def test_a_pass_over_several_batches_is_one_move_of_the_saved_result(clean_lab, store, sent):  # noqa: F811
    seed(clean_lab)
    await one_pass(clean_lab, store, [rule()])
    assert [line for line in sent if b"RETURN (SAVE)" in line]
    assert moves(sent) == [b"$"]
    assert count(clean_lab, "Archive") == MESSAGES // 2
    assert count(clean_lab, "INBOX") == MESSAGES // 2
    assert all_done(store) == ["done"] * (MESSAGES // 2)


async def test_without_searchres_the_pass_moves_batch_by_batch(clean_lab, store, sent):  # noqa: F811
    seed(clean_lab)
    await one_pass(clean_lab, store, [rule()], searchres=False)
    assert not [line for line in sent if b"RETURN (SAVE)" in line]
    assert len(moves(sent)) == (MESSAGES // 2 + BATCH - 1) // BATCH
    assert b"$" not in moves(sent)
    assert count(clean_lab, "Archive") == MESSAGES // 2
    assert all_done(store) == ["done"] * (MESSAGES // 2)


async def test_several_rules_move_batch_by_batch(clean_lab, store, sent):  # noqa: F811
    seed(clean_lab)
    await one_pass(clean_lab, store, [rule(), rule("other", subject={"contains": "[nothing]"})])
    assert b"$" not in moves(sent)
    assert count(clean_lab, "Archive") == MESSAGES // 2
    assert all_done(store) == ["done"] * (MESSAGES // 2)


async def test_messages_planned_before_a_crash_are_checked_then_moved_once(clean_lab, store, sent):  # noqa: F811
    """The ledger's in-doubt path under one big MOVE: a pass planned every match and died
    before its MOVE (the worst moment for an in-process test; the kill -9 test in
    test_incoming_crash_move covers after it); the next pass checks them on the server,
    finds them all still there and moves them with one ``UID MOVE $``."""
    seed(clean_lab)
    await _plan_then_die(clean_lab, store)
    assert count(clean_lab, "Archive") == 0
    sent.clear()
    await one_pass(clean_lab, store, [rule()])
    assert moves(sent) == [b"$"]
    assert count(clean_lab, "Archive") == MESSAGES // 2
    assert all_done(store) == ["done"] * (MESSAGES // 2)
    entries = store.ledger.entries(keys(store)).values()
    assert len(entries) == MESSAGES // 2
    assert {(e.status, e.attempts) for e in entries} == {("done", 2)}  # planned twice, moved once


async def _plan_then_die(lab, store) -> None:  # noqa: F811
    class Died(BaseException):  # not an Exception: nothing on the way catches it, as with a kill
        pass

    async def no_move(self, uids, folder) -> None:
        raise Died  # as if the process ended here: the plan is committed, nothing moved

    original = ImapConnection.move
    ImapConnection.move = no_move  # type: ignore[method-assign]
    try:
        with pytest.raises(Died):
            await one_pass(lab, store, [rule()])
    finally:
        ImapConnection.move = original  # type: ignore[method-assign]
