"""deploy/grafana/postroom.json is what deploy/grafana/build.py generates (no hand edits), and
every metric it queries, with the labels it uses, is one postroom exports."""

from __future__ import annotations

import importlib.util
import json
import sys
from datetime import UTC, datetime
from types import ModuleType

from postroom.metrics import DaemonGauges, Metrics, OutboxGauges, WatchGauge
from prometheus_client import generate_latest

from tests.support.metric_uses import DASHBOARD, ROOT, dashboard_expressions, scraped, uses

BUILD = ROOT / "deploy" / "grafana" / "build.py"


def build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("postroom_dashboard_build", BUILD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def exported() -> dict[str, set[str]]:
    """What a daemon's /metrics holds once each kind of event happened once."""
    at = datetime(2030, 1, 1, tzinfo=UTC)
    m = Metrics(build_version="0")
    m.known_accounts(["alice"])
    m.watch_store(lambda: OutboxGauges({"queued": 1, "dead": 1}, at), lambda: at)
    m.watch_daemon(
        lambda: DaemonGauges(
            ready=True,
            store_up=True,
            watches={("alice", "INBOX"): WatchGauge("IDLE", connected=True, held=True, last_pass=at)},
            signed_in={"alice": True},
            replicas_alive=2,
            last_reload_at=at,
        )
    )
    for result in ("sent", "deferred", "dead", "held"):
        m.outbox_result(result, "alice")
    m.oauth2_refresh("alice", "ok", at)
    m.job_run("digest", "done", 1.0)
    m.set_jobs({"digest": at})
    m.inbound("alice", "INBOX", "matched")
    m.action("move", "ok")
    m.webhook("delivered")
    m.watcher_ok("alice", "INBOX", at)
    m.reload("ok")
    m.bounce("alice", "hard")
    m.suppressed("digest", "alice", 1)
    m.store_call(0.01, "ok")
    m.smtp_send(0.1, "ok", "alice")
    return scraped(generate_latest(m.registry).decode())


def test_the_committed_dashboard_is_the_generators_output():
    assert DASHBOARD.read_text() == build_script().render(), "run: .venv/bin/python deploy/grafana/build.py"


def test_every_metric_the_dashboard_queries_is_exported_with_its_labels():
    have = exported()
    used = uses(dashboard_expressions())
    assert len(used) >= 20  # the expressions were read at all
    for name, use in sorted(used.items()):
        assert name in have, f"{sorted(use.where)}: {name} is not a postroom metric"
        assert use.labels <= have[name], f"{sorted(use.where)}: {name} has no label {use.labels - have[name]}"


def test_the_dashboard_covers_every_row_the_issue_asks_for():
    titles = {expr_where for expr_where, _ in dashboard_expressions()}
    rows = [p["title"] for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] == "row"]
    assert rows == ["Overview", "Out", "In", "Replicas", "Store"]
    needed = {"Replicas ready", "OAuth2 accounts signed in", "Dead letters", "Outbox backlog", "SMTP send latency"}
    assert needed <= titles
