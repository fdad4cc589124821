"""``copy``/``move`` to another account through the executor, on the lab's Dovecot: the copy
lands in the other account's folder (created when missing) with the original's flags and an
``X-Postroom-Id`` marker; an action left in doubt is searched for there and not appended twice;
a move deletes the source only after the copy exists."""

from __future__ import annotations

import email
import email.policy

import pytest
from postroom.incoming.transfer import MARKER
from postroom.store import Store

from tests.support.action_rig import Rig, make_config, make_rig
from tests.test_actions import LabMailbox, items_from_server, make_raw


def in_folder(lab, user: str, folder: str) -> list[tuple[bytes, set[str]]]:
    with lab.imap_client(user) as client:
        if not client.folder_exists(folder):
            return []
        client.select_folder(folder, readonly=True)
        uids = client.search("ALL")
        data = client.fetch(uids, ["BODY.PEEK[]", "FLAGS"]) if uids else {}
    return [(d[b"BODY[]"], {f.decode() for f in d[b"FLAGS"]}) for d in data.values()]


@pytest.fixture
def mail(lab):
    for user in ("alice", "carol"):
        lab.clear_mailbox(user)
    lab.deliver("alice", make_raw("keep me", msgid="<keep@elsewhere.test>"))
    with lab.imap_client("alice") as client:
        client.select_folder("INBOX")
        client.add_flags(client.search("ALL"), [b"\\Flagged"])
    return lab


async def run(rig: Rig, lab) -> bool:
    with lab.imap_client("alice") as client:
        box = LabMailbox(client, "alice", "INBOX")
        items = items_from_server(rig, box)
        outcomes = await rig.executor.handle_batch("alice", "INBOX", box, items)
    return all(o.done for o in outcomes.values())


def forget_done(rig: Rig) -> None:
    """Make every ledger row "planned" again, as a crash before the executor recorded it."""
    with rig.stores.ledger.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE actions SET status = 'planned'")


async def test_copy_to_another_account_keeps_flags_and_is_not_repeated_when_in_doubt(store: Store, mail):
    rig = make_rig(
        store,
        make_config(
            mail, [{"name": "keep", "account": "alice", "actions": [{"copy": {"account": "carol", "folder": "Kept"}}]}]
        ),
    )
    assert await run(rig, mail)
    [(raw, flags)] = in_folder(mail, "carol", "Kept")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Message-ID"] == "<keep@elsewhere.test>" and msg[MARKER].startswith("pr-")
    assert "\\Flagged" in flags
    assert len(in_folder(mail, "alice", "INBOX")) == 1  # a copy leaves the source alone

    forget_done(rig)  # in doubt: the marker is found in carol's folder, nothing appended
    assert await run(rig, mail)
    assert len(in_folder(mail, "carol", "Kept")) == 1


async def test_move_to_another_account_deletes_the_source_after_the_copy(store: Store, mail):
    rig = make_rig(
        store,
        make_config(
            mail,
            [{"name": "archive", "account": "alice", "actions": [{"move": {"account": "carol", "folder": "2026"}}]}],
        ),
    )
    assert await run(rig, mail)
    assert len(in_folder(mail, "carol", "2026")) == 1
    assert in_folder(mail, "alice", "INBOX") == []
