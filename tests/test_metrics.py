"""The Metrics facade: what the daemon's calls turn into on the registry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from postroom.metrics import DaemonGauges, Metrics, OutboxGauges, WatchGauge


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_outbox_results_land_on_their_counters():
    metrics = Metrics()
    metrics.known_accounts(["alice", "bob"])
    metrics.outbox_result("sent", "alice")
    metrics.outbox_result("deferred", "alice")
    metrics.outbox_result("dead", "bob")
    assert value(metrics, "postroom_messages_sent_total", account="alice") == 1
    assert value(metrics, "postroom_messages_deferred_total", account="alice") == 1
    assert value(metrics, "postroom_messages_failed_total", account="bob") == 1
    assert value(metrics, "postroom_messages_sent_total", account="bob") == 0  # pre-created
    assert value(metrics, "postroom_bounces_total", account="bob", kind="hard") == 0
    with pytest.raises(ValueError, match="unknown outbox result"):
        metrics.outbox_result("bounced", "alice")


def test_job_runs_and_schedule():
    metrics = Metrics()
    metrics.job_run("digest", "done", 1.5)
    metrics.job_run("digest", "failed", 0.2)
    assert value(metrics, "postroom_job_runs_total", job="digest", status="done") == 1
    assert value(metrics, "postroom_job_run_duration_seconds_count", job="digest") == 2
    assert value(metrics, "postroom_job_run_duration_seconds_sum", job="digest") == pytest.approx(1.7)

    at = datetime(2030, 1, 1, 9, tzinfo=UTC)
    metrics.set_jobs({"digest": at, "old": at, "once": None})
    assert value(metrics, "postroom_jobs") == 3
    assert value(metrics, "postroom_job_runs_total", job="old", status="failed") == 0  # pre-created
    assert value(metrics, "postroom_job_next_fire_timestamp_seconds", job="digest") == at.timestamp()
    assert value(metrics, "postroom_job_next_fire_timestamp_seconds", job="once") is None
    # a reload that removed "old" stops exporting it
    metrics.set_jobs({"digest": at})
    assert value(metrics, "postroom_jobs") == 1
    assert value(metrics, "postroom_job_next_fire_timestamp_seconds", job="old") is None


def test_incoming_side():
    metrics = Metrics()
    seen = datetime(2030, 1, 1, tzinfo=UTC)
    metrics.inbound("alice", "INBOX", "matched")
    metrics.action("move", "ok")
    metrics.webhook("delivered")
    metrics.watcher_ok("alice", "INBOX", seen)
    metrics.reload("ok")
    assert value(metrics, "postroom_inbound_messages_total", account="alice", folder="INBOX", result="matched") == 1
    assert value(metrics, "postroom_actions_total", kind="move", result="ok") == 1
    assert value(metrics, "postroom_webhook_deliveries_total", result="delivered") == 1
    assert (
        value(metrics, "postroom_watcher_last_success_timestamp_seconds", account="alice", folder="INBOX")
        == seen.timestamp()
    )
    assert value(metrics, "postroom_config_reloads_total", result="ok") == 1


def test_store_gauges_are_read_at_scrape_time():
    counts = {"queued": 1, "sending": 0, "dead": 0}
    now = datetime(2030, 1, 1, 12, tzinfo=UTC)
    oldest: list[datetime | None] = [None]
    metrics = Metrics()
    metrics.watch_store(lambda: OutboxGauges(counts, oldest[0]), lambda: now)
    assert value(metrics, "postroom_outbox_depth") == 1
    assert value(metrics, "postroom_outbox_oldest_age_seconds") == 0  # nothing waiting: no age
    counts.update(queued=5, sending=2, dead=3)
    oldest[0] = now - timedelta(minutes=7)
    assert value(metrics, "postroom_outbox_depth") == 7
    assert value(metrics, "postroom_outbox_oldest_age_seconds") == 420
    assert value(metrics, "postroom_dead_letters") == 3


def test_daemon_gauges_are_read_at_scrape_time():
    at = datetime(2030, 1, 1, tzinfo=UTC)
    state = [
        DaemonGauges(
            ready=True,
            store_up=True,
            watches={("alice", "INBOX"): WatchGauge("IDLE", connected=True, held=True, last_pass=at)},
            signed_in={"ms": True},
            replicas_alive=3,
            last_reload_at=at,
        )
    ]
    metrics = Metrics()
    metrics.watch_daemon(lambda: state[0])
    assert value(metrics, "postroom_ready") == 1
    assert value(metrics, "postroom_store_up") == 1
    assert value(metrics, "postroom_watcher_connected", account="alice", folder="INBOX") == 1
    assert value(metrics, "postroom_watcher_state", account="alice", folder="INBOX", state="IDLE") == 1
    assert value(metrics, "postroom_watcher_state", account="alice", folder="INBOX", state="failing") == 0
    assert value(metrics, "postroom_watch_lease_held", account="alice", folder="INBOX") == 1
    assert value(metrics, "postroom_watcher_last_pass_timestamp_seconds", account="alice", folder="INBOX") == (
        at.timestamp()
    )
    assert value(metrics, "postroom_oauth2_signed_in", account="ms") == 1
    assert value(metrics, "postroom_replicas_alive") == 3
    assert value(metrics, "postroom_config_last_reload_successful") == 1
    assert value(metrics, "postroom_config_last_reload_timestamp_seconds") == at.timestamp()
    state[0] = DaemonGauges(
        ready=False,
        store_up=False,
        watches={("alice", "INBOX"): WatchGauge("standing by", connected=False, held=False)},
        signed_in={"ms": False},
        last_reload_ok=False,
    )
    assert value(metrics, "postroom_ready") == 0
    assert value(metrics, "postroom_store_up") == 0
    assert value(metrics, "postroom_watcher_state", account="alice", folder="INBOX", state="standing by") == 1
    assert value(metrics, "postroom_watcher_state", account="alice", folder="INBOX", state="IDLE") == 0
    assert value(metrics, "postroom_oauth2_signed_in", account="ms") == 0
    assert value(metrics, "postroom_replicas_alive") is None  # one box: no replica count
    assert value(metrics, "postroom_config_last_reload_successful") == 0


def test_store_calls_are_timed_by_result():
    metrics = Metrics()
    assert value(metrics, "postroom_store_call_duration_seconds_count", result="unavailable") == 0
    metrics.store_call(0.004, "ok")
    metrics.store_call(3.0, "unavailable")
    assert value(metrics, "postroom_store_call_duration_seconds_count", result="ok") == 1
    assert value(metrics, "postroom_store_call_duration_seconds_sum", result="unavailable") == 3.0


def test_each_instance_has_its_own_registry_and_no_address_labels():
    first, second = Metrics(), Metrics()
    first.outbox_result("sent", "alice")
    assert value(second, "postroom_messages_sent_total", account="alice") is None
    labels = {
        label
        for family in first.registry.collect()
        if family.name.startswith("postroom_")
        for sample in family.samples
        for label in sample.labels
    }
    assert labels <= {"version", "job", "status", "account", "folder", "result", "kind", "le", "state"}


def test_smtp_sends_are_timed_per_account_and_result():
    metrics = Metrics()
    metrics.known_accounts(["alice"])
    assert value(metrics, "postroom_smtp_send_duration_seconds_count", account="alice", result="ok") == 0
    metrics.smtp_send(0.2, "ok", "alice")
    metrics.smtp_send(30.0, "error", "alice")
    assert value(metrics, "postroom_smtp_send_duration_seconds_count", account="alice", result="ok") == 1
    assert value(metrics, "postroom_smtp_send_duration_seconds_sum", account="alice", result="error") == 30.0


def test_hostile_folder_names_stay_one_well_formed_series():
    """A folder name is the server's (IMAP allows quotes, backslashes, newlines in UTF-7 names'
    decoded form): the exposition escapes it, and it parses back as one series, unchanged."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    folder = 'Ärger "quoted" \\ back\nslash} {x="y"}'
    metrics = Metrics()
    metrics.watch_daemon(
        lambda: DaemonGauges(
            ready=True, store_up=True, watches={("alice", folder): WatchGauge("IDLE", connected=True, held=False)}
        )
    )
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())}
    (sample,) = families["postroom_watcher_connected"].samples
    assert sample.labels == {"account": "alice", "folder": folder}
    assert len(families["postroom_watcher_state"].samples) == 5  # one per state, not split by the name
