"""Sieve scripts: what ``check`` refuses (with file, line and column), the interpreter's
bounds against hostile scripts, and how a decision becomes the executor's planned actions.
(tests/test_sieve_pigeonhole.py compares the decisions with Pigeonhole's.)"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from postroom.action_kinds import Kind
from postroom.cli import app
from postroom.config.rules import RuleConfig
from postroom.errors import ConfigError
from postroom.incoming.envelope import Envelope
from postroom.incoming.message import ParsedMessage
from postroom.incoming.rules import compile_rules
from postroom.sieve import match
from postroom.sieve.interpret import MAX_VARIABLE, Store, run
from postroom.sieve.plan import planned_actions
from postroom.sieve.rule import SieveRule
from postroom.sieve.syntax import MAX_SCRIPT_BYTES, SieveSyntaxError, parse_script

NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
MESSAGE = b"""Return-Path: <alice@example.org>
Delivered-To: carol@example.test
From: Alice <alice@example.org>
To: carol@example.test
Subject: Invoice 2026-117 due
Date: Mon, 07 Dec 2026 09:15:00 +0000
Message-ID: <m1@example.org>

Please pay the invoice.
"""
CONFIG = """\
accounts:
  carol:
    address: carol@example.test
    imap: {{host: 127.0.0.1, port: 1, security: none, username: carol, password: x}}
    sieve: {script}
"""


def decide(source: str, raw: bytes = MESSAGE):
    script = parse_script(source.encode(), source="t.sieve")
    msg = ParsedMessage.from_bytes(raw, key="k")
    return run(script, msg, Envelope("alice@example.org", "carol@example.test"), now=NOW)


def plan(source: str, folder: str = "INBOX") -> list[tuple[str, dict]]:
    return [(a.kind, a.params) for a in planned_actions(decide(source), rule="sieve:t", folder=folder)]


def check(tmp_path: Path, script: str):
    (tmp_path / "filters.sieve").write_text(script)
    (tmp_path / "postroom.yaml").write_text(CONFIG.format(script="filters.sieve"))
    env = {"POSTROOM_CONFIG": str(tmp_path / "postroom.yaml"), "POSTROOM_STATE_DIR": str(tmp_path / "state")}
    return CliRunner().invoke(app, ["check", "--offline"], env=env)


# -- check ---------------------------------------------------------------------------------


def test_check_accepts_a_good_script(tmp_path):
    result = check(tmp_path, 'require "fileinto";\nif header :contains "subject" "x" { fileinto "X"; }\n')
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ('require "fileinto";\nif true {\n  fileinto "A"\n}\n', "filters.sieve: line 4, column 1"),
        ('require ["fileinto", "frobnicate"];\nkeep;\n', "line 1, column 22: require 'frobnicate': an extension"),
        (
            'require "reject";\n\nreject "go away";\n',
            "line 3, column 1: reject: not possible after delivery; use vacation or redirect",
        ),
        (
            'require "ereject";\n  ereject "no";\n',
            "line 2, column 3: ereject: not possible after delivery; use vacation or redirect",
        ),
        ('fileinto "A";\n', "extension 'fileinto' not loaded"),
        ('require "regex";\nif header :regex "subject" "(a+)+$" { keep; }\n', "exponential time"),
        ('require "enotify";\n', "require 'enotify'"),
    ],
    ids=["syntax", "unknown-require", "reject", "ereject", "not-required", "evil-regex", "unsupported"],
)
def test_check_fails_naming_file_line_and_column(tmp_path, script, expected):
    result = check(tmp_path, script)
    assert result.exit_code == 78, result.output
    assert expected in result.output
    assert str(tmp_path / "filters.sieve") in result.output


def test_check_refuses_a_missing_script(tmp_path):
    (tmp_path / "postroom.yaml").write_text(CONFIG.format(script="nowhere.sieve"))
    env = {"POSTROOM_CONFIG": str(tmp_path / "postroom.yaml"), "POSTROOM_STATE_DIR": str(tmp_path / "state")}
    result = CliRunner().invoke(app, ["check", "--offline"], env=env)
    assert result.exit_code == 78 and "cannot read the Sieve script" in result.output


# -- hostile scripts -----------------------------------------------------------------------


def test_a_huge_script_is_refused_before_parsing():
    with pytest.raises(SieveSyntaxError, match="larger than"):
        parse_script(b"keep;\n" * (1024 * 1024 // 6), source="big.sieve")  # 1 MiB: over the limit
    assert MAX_SCRIPT_BYTES < 1024 * 1024


@pytest.mark.parametrize(
    "source",
    [
        "if " + "not " * 40 + "true { keep; }",
        "if true { " * 40 + "keep;" + " }" * 40,
        "if " + "anyof(" * 40 + "true" + ")" * 40 + " { keep; }",
    ],
    ids=["not", "blocks", "test-lists"],
)
def test_deep_nesting_is_refused(source):
    with pytest.raises(SieveSyntaxError, match="nested deeper than 32"):
        parse_script(source.encode(), source="deep.sieve")


def test_a_variable_cannot_grow_without_bound():
    doubling = "".join('set "v" "${v}${v}";\n' for _ in range(14))  # 2**15 characters unbounded
    outcome = decide('require ["variables", "imap4flags"];\nset "v" "xy";\n' + doubling + 'addflag "${v}";')
    (store,) = outcome.stores()
    assert all(len(flag) <= MAX_VARIABLE for flag in store.flags)


def test_too_many_redirects_are_a_runtime_error_and_the_message_is_kept():
    redirects = "".join(f'redirect "r{i}@example.test";\n' for i in range(10))
    outcome = decide(redirects)
    assert outcome.error and "redirects" in outcome.error
    assert outcome.actions == [Store("INBOX", explicit=False)]


def test_regex_reads_a_bounded_value():
    long_subject = b"Subject: " + b"a" * 5_000_000 + b"b\n"
    raw = MESSAGE.replace(b"Subject: Invoice 2026-117 due\n", long_subject)
    started = time.monotonic()
    outcome = decide('require ["regex", "fileinto"];\nif header :regex "subject" "a*a*a*b$" { fileinto "X"; }', raw)
    assert time.monotonic() - started < 10
    assert outcome.error is None
    assert [s.folder for s in outcome.stores()] == ["INBOX"]  # the "b" lies past what :regex reads
    assert match.check_regex("(x+)*y") is not None


def test_a_variable_made_regex_is_checked_when_it_runs():
    outcome = decide(
        'require ["regex", "variables"];\nset "p" "(a+)+";\nif header :regex "subject" "${p}" { discard; }'
    )
    assert outcome.error and "exponential" in outcome.error
    assert outcome.actions == [Store("INBOX", explicit=False)]


# -- planned actions -----------------------------------------------------------------------


def test_fileinto_is_a_move_and_with_keep_a_copy():
    assert plan('require "fileinto"; fileinto "A";') == [("move", {"folder": "A"})]
    assert plan('require "fileinto"; fileinto "A"; keep;') == [("copy", {"folder": "A"})]
    assert plan('require ["fileinto", "copy"]; fileinto :copy "A"; fileinto "B";') == [
        ("copy", {"folder": "A"}),
        ("move", {"folder": "B"}),
    ]


def test_fileinto_create_creates_the_folder_first():
    assert plan('require ["fileinto", "mailbox"]; fileinto :create "New";') == [
        ("create_folder", {"folder": "New"}),
        ("move", {"folder": "New"}),
    ]


def test_keep_and_fileinto_the_watched_folder_do_nothing():
    assert plan("keep;") == []
    assert plan('require "fileinto"; fileinto "Lists";', folder="Lists") == []


def test_discard_and_redirect_without_copy_delete_after_delivery():
    assert plan("discard;") == [("delete", {})]
    assert plan('redirect "bob@example.test";') == [("redirect", {"to": ["bob@example.test"]}), ("delete", {})]
    assert plan('require "copy"; redirect :copy "bob@example.test";') == [("redirect", {"to": ["bob@example.test"]})]


def test_flags_go_with_the_folder_the_message_ends_in():
    assert plan('require ["fileinto", "imap4flags"]; addflag "\\\\Seen"; fileinto :flags "Done" "A";') == [
        ("flag", {"flags": ["Done"]}),
        ("move", {"folder": "A"}),
    ]
    assert plan('require "imap4flags"; setflag "a b"; removeflag "a";') == [("flag", {"flags": ["b"]})]


def test_vacation_is_planned_with_its_parameters():
    (kind, params), *_ = plan('require "vacation"; vacation :days 2 :subject "Away" :handle "h" "Gone.";')
    assert kind == Kind.VACATION and params == {"seconds": 172800, "handle": "h", "subject": "Away"}


def test_yaml_rules_run_first_and_their_stop_skips_the_script():
    script = parse_script(b'require "fileinto"; fileinto "Sieved";', source="s.sieve")
    sieve = SieveRule("sieve:s.sieve", "carol", "carol@example.test", script, ("INBOX",))
    msg = ParsedMessage.from_bytes(MESSAGE, key="k")

    def kinds(actions: list) -> list:
        rules = [RuleConfig.model_validate({"name": "tag", "account": "carol", "actions": actions})]
        ruleset = compile_rules(rules).with_scripts([sieve]).for_folder("carol", "INBOX")
        return [(a.rule, a.kind) for a in ruleset.evaluate(msg, now=NOW)]

    assert kinds([{"flag": "$seen-by-yaml"}]) == [("tag", "flag"), ("sieve:s.sieve", "move")]
    assert kinds([{"flag": "$seen-by-yaml"}, {"stop": True}]) == [("tag", "flag")]


def test_a_script_on_a_pop3_account_is_refused(tmp_path):
    (tmp_path / "f.sieve").write_text("keep;")
    (tmp_path / "postroom.yaml").write_text(
        "accounts:\n  carol:\n    address: carol@example.test\n"
        "    pop3: {host: 127.0.0.1, port: 1, security: none, username: c, password: x}\n"
        "    sieve: f.sieve\n"
    )
    env = {"POSTROOM_CONFIG": str(tmp_path / "postroom.yaml"), "POSTROOM_STATE_DIR": str(tmp_path / "state")}
    result = CliRunner().invoke(app, ["check", "--offline"], env=env)
    assert result.exit_code == 78 and "needs the account's imap: section" in result.output


def test_config_error_is_the_root_of_script_errors():
    assert issubclass(SieveSyntaxError, ConfigError)


def test_a_regex_past_its_deadline_is_a_runtime_error():
    late = match.Matcher(":regex", "i;octet", deadline=time.monotonic() - 1)
    with pytest.raises(match.SieveRuntimeError, match="ran out of time"):
        late.match("aaaa", "a+")
