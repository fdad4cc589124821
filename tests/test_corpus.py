"""The corpus of real, odd and broken mail (tests/data/corpus) through every way in:
``postroom rules test`` on each file, and watchers on the lab's real Dovecot (IMAP, and POP3
with delete_after) taking in all of them at once, with rules that read headers, bodies and
attachments and actions that forward, call webhooks and flag. Nothing may crash; each message
ends handled or set aside with a reason, and the checkpoint passes them all. (The parser's own
answers for each file are pinned in tests/data/message_golden.json by tests/test_message.py.)"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from postroom.cli import app
from postroom.config.rules import RuleConfig
from postroom.incoming.imap import ImapConnection
from postroom.incoming.message import ParsedMessage
from postroom.incoming.rules import compile_rules
from postroom.incoming.watcher import ImapWatcher, Pop3Watcher
from postroom.store.inbound import DONE, FINISHED

from tests.support.action_rig import make_config, make_rig, queued
from tests.support.data import CORPUS, corpus_files
from tests.support.inbox import USER as POP3_USER
from tests.support.inbox import Recorder, maildrop_size, pop3_account
from tests.support.logins import login

RULES = [
    {
        "name": "attachments",
        "account": "alice",
        "match": {"any": [{"has_attachment": True}, {"attachment": {"filename": {"matches": "*.*"}}}]},
        "actions": [{"forward": {"to": ["carol@example.test"]}}],
    },
    {
        "name": "bodies",
        "account": "alice",
        "match": {"body": {"regex": r"(?i)\bthe\b"}},
        "actions": [{"webhook": {"url": "http://127.0.0.1:9/hook"}}],
    },
    {
        "name": "odd-headers",
        "account": "alice",
        "match": {
            "all": [
                {"from": {"matches": "*@*"}},
                {"not": {"subject": "zzz"}},
                {"size": {"over": 10}},
                {"header": {"name": "Content-Type", "contains": "multipart"}},
            ]
        },
        "actions": [{"flag": "\\Flagged"}],
    },
]
# `rules test` reads the same rules from a config file; the servers are never contacted
CONFIG = yaml.safe_dump(
    {
        "accounts": {
            "alice": {
                "address": "alice@example.test",
                "smtp": {"host": "127.0.0.1", "port": 1, "security": "none"},
                "imap": {"host": "127.0.0.1", "port": 1, "security": "none"},
            }
        },
        "rules": RULES,
    }
)

FILES = corpus_files()
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(Path(p).relative_to(CORPUS)))
def test_rules_test_reads_every_corpus_message(tmp_path, path):
    (tmp_path / "postroom.yaml").write_text(CONFIG)
    env = {"POSTROOM_CONFIG": str(tmp_path / "postroom.yaml"), "POSTROOM_STATE_DIR": str(tmp_path / "state")}
    result = CliRunner().invoke(
        app, ["rules", "test", str(path), "--account", "alice"], env=env, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("message: ")
    assert all(rule["name"] in result.output for rule in RULES)


async def test_a_watcher_takes_in_the_whole_corpus(clean_lab, store):
    raws = [path.read_bytes() for path in FILES]
    clean_lab.seed_maildir("alice", "INBOX", raws)
    config = make_config(clean_lab, RULES)
    account = config.accounts["alice"]
    account = account.model_copy(update={"imap": account.imap.model_copy(update={"start_from": "all"})})
    rig = make_rig(store, config)
    watcher = ImapWatcher(
        "alice", account, "INBOX", rig.rules, rig.executor, store.inbound, credentials=login(account.imap)
    )
    conn = ImapConnection("alice", account.imap, watcher.credentials)
    await conn.connect()
    try:
        assert await watcher.cycle(conn) is True
        uids = await conn.uids_from(1)
    finally:
        await conn.close()

    uidvalidity = store.inbound.checkpoint("alice", "INBOX").uidvalidity
    keys = [f"alice/INBOX/{uidvalidity}/{uid}" for uid in uids]
    statuses = store.inbound.statuses(keys)
    assert len(uids) == len(raws) and set(statuses) == set(keys)  # every message has its row
    assert set(statuses.values()) <= set(FINISHED)  # handled, or set aside with a reason
    assert list(statuses.values()).count(DONE) == len(raws)
    assert store.inbound.checkpoint("alice", "INBOX").last_uid == uids[-1]
    # the rules did act, as the parser says they should on each file
    planned = [
        {a.rule for a in rig.rules.evaluate(ParsedMessage.from_bytes(raw, key="k"), now=rig.clock())} for raw in raws
    ]
    assert len(rig.webhooks.requests) == sum("bodies" in rules for rules in planned) > 0
    forwards = sum("attachments" in rules for rules in planned)
    assert 0 < len(queued(rig)) <= forwards  # bounces among them are rightly not forwarded


async def test_a_pop3_watcher_takes_in_the_whole_corpus_and_empties_the_maildrop(clean_lab, store):
    raws = [path.read_bytes() for path in FILES]
    clean_lab.seed_maildir(POP3_USER, "INBOX", raws)
    ruleset = compile_rules([RuleConfig.model_validate({**rule, "account": POP3_USER}) for rule in RULES[:2]])
    recorder = Recorder()
    acct = pop3_account(clean_lab, start_from="all", delete_after=True)
    watcher = Pop3Watcher(POP3_USER, acct, ruleset, recorder, store.inbound, credentials=login(acct.pop3))
    await watcher.poll_once()
    matched = [ruleset.evaluate(ParsedMessage.from_bytes(raw, key="k"), now=NOW) for raw in raws]
    assert len(recorder.subjects) == sum(1 for planned in matched if planned) > 0
    await watcher.poll_once()  # the second session deletes what the first recorded done
    assert await maildrop_size(clean_lab) == 0
