"""The config of the incoming-side actions of issue 13: ``save: {maildir|mbox}``, webhook
``include``/``max_bytes``, and ``move``/``copy`` to another account - what loads (the
contract's own example) and what is refused, with the key that is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
from postroom.config import Settings, load_config
from postroom.config.schema import config_schema
from postroom.errors import ConfigError
from postroom.incoming.rules import compile_rules

ACCOUNTS = """\
accounts:
  alice:
    address: alice@example.test
    imap: {host: 127.0.0.1}
  archive:
    address: archive@example.test
    imap: {host: 127.0.0.1}
  bob:
    address: bob@example.test
    pop3: {host: 127.0.0.1}
"""


def load(tmp_path: Path, rules: str):
    path = tmp_path / "postroom.yaml"
    path.write_text(ACCOUNTS + "rules:\n" + rules)
    return load_config(Settings(config=path), environ={}).config


def refused(tmp_path: Path, rules: str) -> str:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, rules)
    return str(err.value)


def test_the_contract_example_loads_and_plans_the_kinds_the_executor_runs(tmp_path):
    config = load(
        tmp_path,
        """\
  - {name: keep-local, account: bob, match: {}, actions: [{save: {maildir: /var/mail/bob}}]}
  - {name: keep-mbox, account: bob, actions: [{save: {mbox: ~/mail/bob.mbox}}]}
  - {name: to-archive, account: alice, match: {older_than: 30d}, actions: [{move: {account: archive, folder: "2026"}}]}
  - {name: copy-it, account: alice, actions: [{copy: {account: archive}}, {copy: Saved}, {move: Done}]}
  - name: hook
    account: alice
    actions: [{webhook: {url: "https://hooks.example.test/x", include: [text, html, attachments], max_bytes: 2M}}]
""",
    )
    rules = compile_rules(config.rules)
    planned = {(a.rule, a.kind): a.params for r in rules.rules for a in r.planned()[0]}
    assert planned[("keep-local", "save")] == {"maildir": "/var/mail/bob"}
    assert planned[("keep-mbox", "save")] == {"mbox": "~/mail/bob.mbox"}
    assert planned[("to-archive", "move_to")] == {"account": "archive", "folder": "2026"}
    assert planned[("copy-it", "copy_to")] == {"account": "archive", "folder": "INBOX"}
    assert planned[("copy-it", "copy")] == {"folder": "Saved"} and planned[("copy-it", "move")] == {"folder": "Done"}
    assert planned[("hook", "webhook")]["include"] == ["text", "html", "attachments"]
    assert planned[("hook", "webhook")]["max_bytes"] == 2 * 1024 * 1024


@pytest.mark.parametrize(
    ("rules", "key", "says"),
    [
        (
            "  - {name: r, account: alice, actions: [{move: {account: nobody, folder: X}}]}\n",
            "rules.0.actions.0.move.account",
            "unknown account 'nobody'",
        ),
        (
            "  - {name: r, account: alice, actions: [{copy: {account: bob, folder: X}}]}\n",
            "rules.0.actions.0.copy.account",
            "needs its imap: section",
        ),
        (
            "  - {name: r, account: alice, actions: [{save: {maildir: mail/bob}}]}\n",
            "rules.0.actions.0.save",
            "not an absolute path",
        ),
        (
            "  - {name: r, account: alice, actions: [{save: {maildir: /a, mbox: /b}}]}\n",
            "rules.0.actions.0.save",
            "give maildir or mbox",
        ),
        ("  - {name: r, account: alice, actions: [{save: {}}]}\n", "rules.0.actions.0.save", "give maildir or mbox"),
        (
            "  - {name: r, account: alice, actions: [{webhook: {url: 'https://h.test/x', include: [body]}}]}\n",
            "rules.0.actions.0.webhook.include.0",
            "'text', 'html', 'attachments' or 'raw'",
        ),
        (
            "  - {name: r, account: bob, actions: [{move: {account: archive, folder: X}}]}\n",
            "rules.0.actions.0.move",
            "needs IMAP",
        ),
    ],
)
def test_refused_with_the_key(tmp_path, rules, key, says):
    msg = refused(tmp_path, rules)
    assert key in msg and says in msg, msg


def test_schema_describes_the_new_forms():
    text = str(config_schema())
    for needle in ("maildir", "mbox", "include", "max_bytes", "OtherAccount"):
        assert needle in text, needle
