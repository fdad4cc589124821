"""One-shot commands that read the store: what a person sees when something went wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import CliRunner
from postroom.cli import app
from postroom.store import NewMessage, Store

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
CONFIG = """\
accounts:
  alice:
    address: alice@example.test
    smtp: {host: 127.0.0.1, port: 1, security: none}
"""


def invoke(tmp_path, *args: str):
    (tmp_path / "postroom.yaml").write_text(CONFIG)
    env = {"POSTROOM_CONFIG": str(tmp_path / "postroom.yaml"), "POSTROOM_STATE_DIR": str(tmp_path / "state")}
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


def open_store(tmp_path) -> Store:
    return Store.open(f"sqlite:///{tmp_path / 'state' / 'postroom.db'}", owner="test")


def test_rules_failed_lists_set_aside_messages_dead_actions_and_webhooks(tmp_path):
    store = open_store(tmp_path)
    key = "alice/INBOX/7/42"
    for _ in range(store.inbound.max_attempts):
        store.inbound.finish_many(
            [(key, "failed", "parse: boom")],
            now=NOW,
            rows={key: {"account": "alice", "folder": "INBOX", "message_id": "<m@x>"}},
        )
    aid = (key, "invoices", 0)
    store.ledger.plan([(aid, "forward")], now=NOW)
    store.ledger.finish([(aid, "dead", None, "ServerRejected: 554 no")], now=NOW)
    store.ledger.enqueue_webhooks(
        [
            {
                "webhook_id": "msg_1",
                "action_key": f"{key}|alerts|0",
                "rule": "alerts",
                "url": "http://127.0.0.1:9/hook",
                "payload": b"{}",
            }
        ],
        now=NOW,
    )
    (delivery,) = store.ledger.claim_webhooks(now=NOW, limit=5, lease=timedelta(minutes=1))
    store.ledger.webhook_dead(delivery, now=NOW, error="HTTP 410: gone")
    store.close()

    result = invoke(tmp_path, "rules", "failed")
    assert result.exit_code == 0, result.output
    assert "messages set aside: 1" in result.output and "parse: boom" in result.output
    assert "actions given up on: 1" in result.output and "554 no" in result.output
    assert "webhooks given up on: 1" in result.output and "HTTP 410: gone" in result.output


def test_outbox_dead_then_retry_puts_it_back(tmp_path):
    store = open_store(tmp_path)
    store.outbox.enqueue([NewMessage("k", "<1@x.test>", "alice", "alice@example.test", ["b@x.test"], b"x")], now=NOW)
    (item,) = store.outbox.claim_due(now=NOW, limit=1, lease=timedelta(minutes=1))
    store.outbox.kill(item, now=NOW, error="550 5.1.1 no such user")
    store.close()

    dead = invoke(tmp_path, "outbox", "--dead")
    assert "550 5.1.1 no such user" in dead.output and "postroom outbox retry" in dead.output
    again = invoke(tmp_path, "outbox", "retry", str(item.id))
    assert again.exit_code == 0 and "queued again" in again.output
    assert "queued 1" in invoke(tmp_path, "outbox").output
    missing = invoke(tmp_path, "outbox", "retry", "999")
    assert missing.exit_code == 1 and "no outbox message with ID 999" in missing.output


# -- init, schema, and commands that must write nothing ------------------------------------
def postroom(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command in a fresh process, in `cwd`, with no POSTROOM_* settings inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
    return subprocess.run(
        [sys.executable, "-m", "postroom.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_init_writes_a_starter_that_check_offline_accepts_as_is(tmp_path):
    made = postroom(tmp_path, "init", "proj")
    assert made.returncode == 0, made.stderr
    project = tmp_path / "proj"
    assert {
        "postroom.yaml",
        ".env.example",
        ".env",
        "postroom.schema.json",
        "templates/layout.j2",
        "templates/hello.j2",
    } <= files_under(project)
    assert "postroom check --offline" in made.stdout and "cd proj" in made.stdout
    assert (project / ".env").stat().st_mode & 0o077 == 0  # it will hold the password
    first_line = (project / "postroom.yaml").read_text().splitlines()[0]
    assert first_line == "# yaml-language-server: $schema=./postroom.schema.json"

    checked = postroom(project, "check", "--offline")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "OK — 1 account, 1 job," in checked.stdout
    shown = postroom(project, "send", "hello", "--dry-run")
    assert shown.returncode == 0, shown.stderr
    assert "Subject: Hello from postroom" in shown.stdout


def test_init_refuses_to_overwrite_and_force_keeps_dotenv(tmp_path):
    (tmp_path / "postroom.yaml").write_text("mine\n")
    (tmp_path / ".env").write_text("MAIL_PASSWORD=real\n")
    refused = postroom(tmp_path, "init")
    assert refused.returncode == 1
    assert "already has postroom.yaml; nothing written" in refused.stderr
    assert files_under(tmp_path) == {"postroom.yaml", ".env"}
    assert (tmp_path / "postroom.yaml").read_text() == "mine\n"

    forced = postroom(tmp_path, "init", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "postroom.yaml  (overwritten)" in forced.stdout
    assert (tmp_path / "postroom.yaml").read_text().startswith("# yaml-language-server:")
    assert (tmp_path / ".env").read_text() == "MAIL_PASSWORD=real\n"


def test_schema_prints_the_config_json_schema():
    result = CliRunner().invoke(app, ["schema"], catch_exceptions=False)
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert {"accounts", "jobs", "rules"} <= set(schema["properties"])
    every = json.dumps(schema["$defs"]["ScheduleConfig"]["properties"]["every"])
    assert "15m" in every  # durations as written in the YAML, not ISO 8601


JOB_CONFIG = (
    CONFIG
    + """\
jobs:
  note:
    schedule: {every: 1h}
    account: alice
    template: note
    to: [bob@example.test]
"""
)


def test_check_dry_run_and_reading_commands_write_nothing(tmp_path):
    (tmp_path / "postroom.yaml").write_text(JOB_CONFIG)
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "note.j2").write_text(
        "{% block subject %}note{% endblock %}{% block text %}hello{% endblock %}"
    )
    before = files_under(tmp_path)
    for args in (
        ["check", "--offline"],
        ["send", "note", "--dry-run"],
        ["jobs"],
        ["outbox"],
        ["rules", "failed"],
        ["status"],
        ["outbox", "retry", "1"],
    ):
        result = postroom(tmp_path, *args)
        assert result.returncode == (1 if "retry" in args else 0), f"{args}: {result.stdout}{result.stderr}"
        assert files_under(tmp_path) == before, f"{args} wrote {files_under(tmp_path) - before}"
    assert "Subject: note" in postroom(tmp_path, "send", "note", "--dry-run").stdout
    assert "nothing waiting" in postroom(tmp_path, "outbox").stdout
    assert "messages set aside: 0" in postroom(tmp_path, "rules", "failed").stdout


def test_a_broken_config_exits_78_so_systemd_stops_restarting_it(tmp_path):
    (tmp_path / "postroom.yaml").write_text(CONFIG.replace("port: 1,", "port: 0,"))
    env = {
        **os.environ,
        "POSTROOM_CONFIG": str(tmp_path / "postroom.yaml"),
        "POSTROOM_STATE_DIR": str(tmp_path / "state"),
        "POSTROOM_HTTP": "",
    }
    for command in (["run"], ["check", "--offline"], ["send", "x", "--dry-run"]):
        done = subprocess.run(
            [sys.executable, "-m", "postroom.cli", *command],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 78, (command, done.stderr)  # EX_CONFIG
        assert "accounts.alice.smtp.port" in done.stderr
    assert not (tmp_path / "state").exists()  # the daemon opened no store for a broken config
