"""A real `postroom run` (three OAuth2 accounts on the OAuth2 lab, replicas' PostgreSQL store,
a job every 2 s, rules with actions and a webhook) is scraped: every metric the alert rules
and the dashboard use is there with the labels they use, and `promtool check metrics` finds
nothing to say about the exposition."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from tests.support.daemon import wait_until
from tests.support.metric_uses import dashboard_expressions, rule_expressions, scraped, uses
from tests.test_oauth2_e2e import USERS, Run, _deliver_traffic, run  # noqa: F401  (run: the fixture)

# Samples that show the daemon went through each kind of work at least once.
WARMED_UP = (
    'postroom_job_runs_total{job="ping",status="done"}',
    'postroom_actions_total{kind="move",result="done"}',
    "postroom_webhook_deliveries_total{",
    'postroom_oauth2_refreshes_total{account="alice",result="ok"}',
    "postroom_watch_lease_held{",
    "postroom_watcher_last_pass_timestamp_seconds{",
    'postroom_smtp_send_duration_seconds_count{account="alice",result="ok"}',
)


@pytest.mark.timeout(300)  # the OAuth2 lab, four sign-ins and the daemon's first passes
def test_every_metric_the_alerts_and_dashboard_use_is_scraped_with_its_labels(run: Run, pg_url):  # noqa: F811
    run.env["POSTROOM_DATABASE_URL"] = pg_url
    for user in USERS:  # the refresh tokens, now in the PostgreSQL store
        run.sign_in(user)
    run.start()
    # Every watcher at work before the traffic: a replica that has just started takes its
    # folders over a few seconds (its share settles first), and a folder's first pass starts
    # from new mail, so mail delivered before it would be skipped.
    wait_until(lambda: _all_connected(run.get("/metrics").text), 60, "every watcher connected")
    _deliver_traffic(run, rounds=2, every=0.5, tag="scrape ")

    missing: list[str] = []

    def warmed_up() -> str | None:
        text = run.get("/metrics").text
        missing[:] = [sample for sample in WARMED_UP if not _has_sample(text, sample)]
        time.sleep(0.5)
        return None if missing else text

    try:
        text = wait_until(warmed_up, timeout=80, what="every kind of work seen in /metrics")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; still missing: {missing}") from None
    have = scraped(text)
    used = uses([*rule_expressions(), *dashboard_expressions()])
    assert len(used) >= 25
    for name, use in sorted(used.items()):
        assert name in have, f"{sorted(use.where)} use {name}, which a running postroom does not export"
        assert use.labels <= have[name], f"{sorted(use.where)}: {name} lacks labels {use.labels - have[name]}"

    promtool = shutil.which("promtool")
    assert promtool is not None, "deploy/setup.sh installs promtool (Debian's prometheus package)"
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    assert checked.returncode == 0 and not checked.stdout.strip() and not checked.stderr.strip(), (
        checked.stdout + checked.stderr
    )
    run.stop()


def _all_connected(text: str) -> bool:
    connected = [line for line in text.splitlines() if line.startswith("postroom_watcher_connected{")]
    return len(connected) >= len(USERS) and all(line.endswith(" 1.0") for line in connected)


def _has_sample(text: str, start: str) -> bool:
    return any(line.startswith(start) and not line.endswith(" 0.0") for line in text.splitlines())
