"""Schedules keep the database's time: three real `postroom run` replicas on one real
PostgreSQL, one an hour fast and one an hour slow (libfaketime), the third right. The skewed
ones say so (/readyz, `postroom status`) and take no fires; no fire is early, doubled, skipped
or lost — an `at:` job with `misfire_grace: 30m` included, with the fast replica started first
(it used to mark that job's fire missed beyond grace, for everyone)."""

from __future__ import annotations

import email
import email.policy
import itertools
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.support.daemon import Daemon, free_port, postroom_env, run_cli, wait_ready, wait_until

LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"  # Debian's faketime package
LEASE = "3"
CONFIG = """\
accounts:
  alice:
    address: alice@example.test
    smtp: {{host: 127.0.0.1, port: {smtp}, security: starttls, username: alice@example.test,
           password: "${{ALICE_PASSWORD}}"}}
jobs:
  tick:
    schedule: {{every: 3s}}
    account: alice
    template: tick
    to: [bob@example.test]
  report:
    schedule: {{at: "{at}"}}
    misfire_grace: 30m
    account: alice
    template: report
    to: [bob@example.test]
"""
TICK = "{% block subject %}tick {{ fire_time }}{% endblock %}{% block text %}t{% endblock %}\n"
REPORT = "{% block subject %}report {{ fire_time }}{% endblock %}{% block text %}r{% endblock %}\n"


def start(tmp_path: Path, lab, pg_url: str, name: str, skew: str | None) -> tuple[Daemon, int]:
    port = free_port()
    # Monotonic time is faked too: with FAKETIME_DONT_FAKE_MONOTONIC, libfaketime 0.9.10 makes
    # every time.sleep() fail with EINVAL (its clock_nanosleep hook), and the migration child's
    # subprocess.run(timeout=…) sleeps whenever the child has not exited the moment its output
    # closes: the skewed replica died at start in about one run in three under load.
    fake = {"LD_PRELOAD": LIBFAKETIME, "FAKETIME": skew} if skew else {}
    env = postroom_env(
        lab,
        tmp_path,
        POSTROOM_HTTP=f"127.0.0.1:{port}",
        POSTROOM_DATABASE_URL=pg_url,
        POSTROOM_INSTANCE=name,
        POSTROOM_LEASE_SECONDS=LEASE,
        POSTROOM_TEMPLATES=str(tmp_path / "templates"),
        POSTROOM_STATE_DIR=str(tmp_path / name),
        **fake,
    )
    return Daemon(env, log=tmp_path / f"{name}.log"), port


def readyz(port: int) -> dict | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return None


def clock_answer(daemon: Daemon, port: int) -> dict | None:
    """/readyz's clock, once the daemon answers; the daemon's log if it ended instead."""
    if daemon.proc.poll() is not None:
        raise AssertionError(f"daemon exited {daemon.proc.returncode}:\n{daemon.log.read_text()[-3000:]}")
    return (readyz(port) or {}).get("clock")


@pytest.mark.timeout(300)
def test_replicas_an_hour_off_take_no_fires_and_none_is_early_doubled_skipped_or_lost(tmp_path, clean_lab, pg_url):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "tick.j2").write_text(TICK)
    (tmp_path / "templates" / "report.j2").write_text(REPORT)
    at = (datetime.now(UTC) + timedelta(seconds=50)).replace(microsecond=0)
    (tmp_path / "postroom.yaml").write_text(
        CONFIG.format(smtp=clean_lab.ports.smtp, at=at.strftime("%Y-%m-%dT%H:%M:%S"))
    )
    engine = create_engine(pg_url)
    daemons: dict[str, tuple[Daemon, int]] = {}
    began = datetime.now(UTC)
    try:
        # the fast one first: alone, at its start, with the `at:` fire "an hour ago" by its clock
        for name, skew in (("fast", "+1h"), ("slow", "-1h")):
            daemons[name] = start(tmp_path, clean_lab, pg_url, name, skew)
            daemon, port = daemons[name]
            answer = wait_until(lambda d=daemon, port=port: clock_answer(d, port), 120, f"{name} answering")
            assert answer["agrees"] is False and "takes no scheduled fires" in answer["problem"]
            assert abs(abs(answer["offset_s"]) - 3600) < 30
            daemon.wait_log("clock disagrees with the database's")
        daemons["right"] = start(tmp_path, clean_lab, pg_url, "right", None)
        wait_ready(daemons["right"][1], daemons["right"][0], timeout=120)
        assert readyz(daemons["right"][1])["clock"]["agrees"] is True
        status = run_cli(["status"], postroom_env(clean_lab, tmp_path, POSTROOM_DATABASE_URL=pg_url))
        assert status.returncode == 0, status.stderr
        off = [line for line in status.stdout.splitlines() if "takes no fires" in line]
        assert sorted(line.split()[0] for line in off) == ["fast", "slow"], status.stdout

        wait_until(lambda: datetime.now(UTC) > at + timedelta(seconds=8), 120, "the report's time")
        raws = clean_lab.wait_for_messages("bob", 4, timeout=60)
        time.sleep(4)  # time for a duplicate to show up
        raws = clean_lab.fetch_all("bob")
        ended = datetime.now(UTC)
        with engine.connect() as conn:
            claims = conn.execute(
                text("SELECT job_id, fire_time, claimed_by, claimed_at, status FROM fire_claims ORDER BY fire_time")
            ).all()
    finally:
        for daemon, _port in daemons.values():
            if daemon.proc.poll() is None:
                daemon.terminate()
        engine.dispose()

    subjects = Counter(email.message_from_bytes(r, policy=email.policy.default)["Subject"] for r in raws)
    assert set(subjects.values()) == {1}, subjects  # nothing doubled
    reports = [s for s in subjects if s.startswith("report ")]
    assert len(reports) == 1, subjects  # the `at:` job sent, once
    assert [c for c in claims if c.status == "skipped" and c.fire_time >= began] == []  # nothing skipped
    assert {c.claimed_by for c in claims} == {"right"}  # the skewed replicas took no fire
    assert all(c.claimed_at >= c.fire_time - timedelta(seconds=1) for c in claims)  # none early
    report = next(c for c in claims if c.job_id == "report")
    assert report.status == "done" and report.fire_time == at
    # every `tick` fire from the right replica's start to the end ran: none lost
    ticks = sorted(c.fire_time for c in claims if c.job_id == "tick" and c.status == "done")
    assert all(b - a == timedelta(seconds=3) for a, b in itertools.pairwise(ticks)), ticks
    assert ticks and ticks[-1] >= ended - timedelta(seconds=10)
