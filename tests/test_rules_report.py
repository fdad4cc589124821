"""``postroom rules test`` tells the whole truth: each action with what the guards will
decide (the reply ledger read, never written), and a Sieve script's trace."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from click.testing import CliRunner
from postroom.cli import app
from postroom.clock import utcnow
from postroom.store import Store

LIST_MESSAGE = Path(__file__).parent / "data" / "sieve" / "messages" / "list.eml"
PERSONAL = Path(__file__).parent / "data" / "sieve" / "messages" / "personal.eml"
CONFIG = """\
accounts:
  carol:
    address: carol@example.test
    smtp: {host: 127.0.0.1, port: 1, security: none}
    imap: {host: 127.0.0.1, port: 1, security: none, username: carol, password: x}
    sieve: filters.sieve
rules:
  - name: out-of-office
    account: carol
    actions:
      - reply: {template: out_of_office, days: 7}
      - forward: {to: carol@example.test}
"""
SCRIPT = """require ["vacation", "fileinto"];
if header :contains "subject" "[ops]" { fileinto "Lists"; }
vacation :days 3 :handle "away" "I am away.";
"""


def invoke(tmp_path: Path, message: Path) -> str:
    (tmp_path / "postroom.yaml").write_text(CONFIG)
    (tmp_path / "filters.sieve").write_text(SCRIPT)
    (tmp_path / "templates").mkdir(exist_ok=True)
    (tmp_path / "templates" / "out_of_office.j2").write_text(
        "{% block subject %}Away{% endblock %}{% block text %}Away.{% endblock %}"
    )
    env = {
        "POSTROOM_CONFIG": str(tmp_path / "postroom.yaml"),
        "POSTROOM_STATE_DIR": str(tmp_path / "state"),
        "POSTROOM_TEMPLATES": str(tmp_path / "templates"),
    }
    result = CliRunner().invoke(app, ["rules", "test", str(message)], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_a_reply_to_a_list_message_is_shown_declined_with_the_reason(tmp_path):
    output = invoke(tmp_path, LIST_MESSAGE)
    assert "MATCH out-of-office" in output
    assert "0: reply (template=out_of_office, days=7) -> would be declined: List-Id present (RFC 3834 §2)" in output
    # the loop guard has nothing against this one
    assert "1: forward (to=['carol@example.test'], as=attachment) -> would send" in output


def test_a_sieve_script_shows_its_trace_and_its_vacation_guard(tmp_path):
    output = invoke(tmp_path, LIST_MESSAGE)
    assert "SIEVE sieve:filters.sieve" in output
    assert '| header :contains "subject" "[ops]": true' in output
    assert "| fileinto 'Lists'" in output
    assert "move (folder=Lists) -> will run" in output
    assert "vacation (seconds=259200, handle=away, subject=None) -> would be declined: List-Id present" in output


def test_already_answered_comes_from_the_real_reply_ledger_which_is_not_written(tmp_path):
    output = invoke(tmp_path, PERSONAL)  # creates nothing: no store yet
    assert not (tmp_path / "state" / "postroom.db").exists()
    assert "0: reply (template=out_of_office, days=7) -> would send" in output
    assert "vacation (seconds=259200, handle=away, subject=None) -> would send" in output
    store = Store.open(f"sqlite:///{tmp_path / 'state' / 'postroom.db'}", owner="test")
    an_hour_ago = utcnow() - timedelta(hours=1)
    store.ledger.record_replies(
        "carol",
        [("out-of-office", "alice@example.org"), ("sieve:filters.sieve#away", "alice@example.org")],
        now=an_hour_ago,
    )
    output = invoke(tmp_path, PERSONAL)
    assert "-> would be declined: already replied to alice@example.org within 7 days (the reply ledger)" in output
    assert "-> would be declined: already answered alice@example.org within 259200 s" in output
    assert store.ledger.last_replies("carol", [("out-of-office", "alice@example.org")]) == {
        ("out-of-office", "alice@example.org"): an_hour_ago
    }
