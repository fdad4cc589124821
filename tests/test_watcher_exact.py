"""The watcher's no-fetch path on the real Dovecot: when SEARCH decides every rule exactly and
every action is an IMAP one, matched messages are acted on without a FETCH; otherwise (a rule
the server can't decide, an action that needs the message) the watcher fetches as before."""

from __future__ import annotations

import pytest
from postroom.config.model import Config
from postroom.incoming.imap import ImapConnection
from postroom.incoming.message import decode_header_value
from postroom.incoming.rules import (
    HAZARD_BLOCKS,
    _casing_agrees,
    _unicode_hazards,
    compile_rules,
)
from postroom.incoming.watcher import ImapWatcher
from structlog.testing import capture_logs

from tests.support.action_rig import make_rig
from tests.support.inbox import USER, account, raw_message
from tests.support.logins import login
from tests.support.store_fixtures import sqlite_url, store  # noqa: F401

NOFETCH = "rules decided by SEARCH alone; nothing fetched"


def folder_subjects(lab, folder: str) -> list[str]:
    client = lab.imap_client(USER)
    try:
        client.select_folder(folder, readonly=True)
        uids = client.search("ALL")
        data = client.fetch(uids, ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"]) if uids else {}
        return sorted(
            decode_header_value(row[b"BODY[HEADER.FIELDS (SUBJECT)]"].decode().partition(":")[2].strip())
            for row in data.values()
        )
    finally:
        client.logout()


async def first_pass(lab, store, rules: list[dict]) -> list[dict]:  # noqa: F811
    acct = account(lab, start_from="all")
    config = Config.model_validate({"accounts": {USER: acct.model_dump()}, "rules": rules})
    rig = make_rig(store, config)
    w = ImapWatcher(
        USER, acct, "INBOX", compile_rules(config.rules), rig.executor, store.inbound, credentials=login(acct.imap)
    )
    conn = ImapConnection(USER, w.cfg, w.credentials)
    await conn.connect()
    try:
        with capture_logs() as logs:
            await w.cycle(conn)
    finally:
        await conn.close()
    return logs


SUBJECTS = ["[report] one", "hello", "[REPORT] two", "report without brackets", "[report] three", "café [report]"]


def seed(lab) -> None:
    lab.deliver_many(USER, [raw_message(i, subject=s) for i, s in enumerate(SUBJECTS)])
    with lab.imap_client(USER) as client:
        if not client.folder_exists("Archive"):
            client.create_folder("Archive")


def archive_rule(**extra) -> dict:
    return {
        "name": "archive",
        "account": USER,
        "match": {"subject": {"contains": "[report]"}},
        "actions": [{"move": "Archive"}],
        **extra,
    }


async def test_exact_rules_move_exactly_the_matches_without_fetching(clean_lab, store):  # noqa: F811
    seed(clean_lab)
    logs = await first_pass(clean_lab, store, [archive_rule()])
    assert any(e["event"] == NOFETCH for e in logs)
    assert folder_subjects(clean_lab, "Archive") == ["[REPORT] two", "[report] one", "[report] three", "café [report]"]
    assert folder_subjects(clean_lab, "INBOX") == ["hello", "report without brackets"]
    rows = store.inbound.statuses(
        [
            f"{USER}/INBOX/{cp.uidvalidity}/{uid}"
            for cp in [store.inbound.checkpoint(USER, "INBOX")]
            for uid in range(1, cp.last_uid + 1)
        ]
    )
    assert sorted(rows.values()) == ["done"] * 4


async def test_stop_and_several_rules_plan_as_evaluate_would(clean_lab, store):  # noqa: F811
    seed(clean_lab)
    rules = [
        archive_rule(actions=[{"flag": "\\Flagged"}, {"stop": True}]),
        {
            "name": "later",
            "account": USER,
            "match": {"subject": {"contains": "[report]"}},
            "actions": [{"move": "Archive"}],
        },
    ]
    logs = await first_pass(clean_lab, store, rules)
    assert any(e["event"] == NOFETCH for e in logs)
    assert folder_subjects(clean_lab, "Archive") == []  # the first rule stopped the second
    client = clean_lab.imap_client(USER)
    try:
        client.select_folder("INBOX", readonly=True)
        assert len(client.search(["FLAGGED"])) == 4
    finally:
        client.logout()


@pytest.mark.parametrize(
    "rule",
    [
        archive_rule(
            actions=[{"move": "Archive"}, {"webhook": {"url": "http://127.0.0.1:9/h", "secret": "whsec_c2VjcmV0"}}]
        ),
        archive_rule(match={"subject": {"regex": r"(?i)\[report\]"}}),
        archive_rule(match={"subject": {"contains": "report"}}),  # 'report' can meet 'ſ'/'ﬅ'-style folds
        archive_rule(actions=[{"copy": "Archive"}]),  # a repeated copy would duplicate
    ],
)
async def test_falls_back_to_fetching_when_the_message_matters(clean_lab, store, rule):  # noqa: F811
    seed(clean_lab)
    logs = await first_pass(clean_lab, store, [rule])
    assert not any(e["event"] == NOFETCH for e in logs)
    assert len(folder_subjects(clean_lab, "Archive")) >= 4  # and the rule still did its work


def test_casing_agrees_only_where_server_and_casefold_cannot_differ():
    assert _casing_agrees("[report]")
    assert not _casing_agrees("cafe")  # Dovecot finds "café" (e + U+0301); casefold does not
    assert not _casing_agrees("strasse")  # casefold finds "Straße"; Dovecot does not
    assert not _casing_agrees("[file]")  # casefold finds "ﬁ"; Dovecot does not


def test_hazard_blocks_cover_all_of_unicode():
    everything = (range(0x80, 0xD800), range(0xE000, 0x110000))
    assert _unicode_hazards(HAZARD_BLOCKS) == _unicode_hazards(everything)
