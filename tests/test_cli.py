"""One-shot commands that read the store: what a person sees when something went wrong."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

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
        store.inbound.finish_many([(key, "failed", "parse: boom")], now=NOW,
                                  rows={key: {"account": "alice", "folder": "INBOX", "message_id": "<m@x>"}})
    aid = (key, "invoices", 0)
    store.ledger.plan([(aid, "forward")], now=NOW)
    store.ledger.finish([(aid, "dead", None, "ServerRejected: 554 no")], now=NOW)
    store.ledger.enqueue_webhooks([{"webhook_id": "msg_1", "action_key": f"{key}|alerts|0", "rule": "alerts",
                                    "url": "http://127.0.0.1:9/hook", "payload": b"{}"}], now=NOW)
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
