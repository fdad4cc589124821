"""The store goes away under running daemons (issue 11, issue 10): real `postroom run`
processes, the machine's PostgreSQL behind a TCP proxy the test cuts or stalls (the shared
server itself is never stopped), a SQLite file deleted under the daemon.

- PostgreSQL unreachable for 20 s under an `every: 5s` job with 3 replicas: every fire of the
  outage runs once after it returns (within its grace), none twice.
- A stalled store (the proxy accepts but forwards nothing): /healthz still answers (the loop
  turns), /readyz says 503 and why.
- The SQLite store file deleted: /readyz 503 naming it, a log line, no new file made.
"""

from __future__ import annotations

import email
import email.policy
import shutil
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from postroom.config.model import ScheduleConfig
from postroom.schedule.fires import fires_between, make_trigger
from sqlalchemy import create_engine, text

from tests.support.daemon import Daemon, free_port, iter_json_lines, mail, postroom_env, wait_ready, wait_until
from tests.support.tcp_proxy import TcpProxy

CONFIG = """\
timezone: UTC
accounts:
  alice:
    address: alice@example.test
    smtp: {{host: 127.0.0.1, port: {smtp}, security: starttls, username: alice@example.test,
           password: "${{ALICE_PASSWORD}}"}}
jobs:
  tick:
    schedule: {{every: 5s}}
    account: alice
    template: tick
    to: [bob@example.test]
"""
TEMPLATE = """{% block subject %}tick {{ fire_time.strftime('%H:%M:%S') }}{% endblock %}
{% block text %}fired at {{ fire_time }}{% endblock %}
"""
# The stalled store's daemon also watches alice's INBOX: a message arriving while the store
# hangs makes the watcher reach for it, which must not stop the event loop either.
WATCHED = (
    CONFIG.replace(
        "jobs:",
        """\
    imap: {{host: 127.0.0.1, port: {imap}, security: starttls, username: alice@example.test,
           password: "${{ALICE_PASSWORD}}"}}
jobs:""",
    )
    + """\
rules:
  - name: flag
    account: alice
    match: {{subject: {{contains: "[stall]"}}}}
    actions: [{{mark_read: true}}]
"""
)
OUTAGE = 20.0  # seconds PostgreSQL is unreachable


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    forwarder = TcpProxy()
    yield forwarder
    forwarder.close()


def write_config(tmp_path, lab, config: str = CONFIG) -> None:
    (tmp_path / "templates").mkdir(exist_ok=True)
    (tmp_path / "templates" / "tick.j2").write_text(TEMPLATE)
    (tmp_path / "postroom.yaml").write_text(config.format(smtp=lab.ports.smtp, imap=lab.ports.imap))


def start(tmp_path, lab, url: str, name: str, *, wait: bool = True) -> tuple[Daemon, int]:
    port = free_port()
    env = postroom_env(
        lab,
        tmp_path,
        POSTROOM_HTTP=f"127.0.0.1:{port}",
        POSTROOM_DATABASE_URL=url,
        POSTROOM_INSTANCE=name,
        POSTROOM_TEMPLATES=str(tmp_path / "templates"),
        POSTROOM_STATE_DIR=str(tmp_path / name),
    )
    daemon = Daemon(env, log=tmp_path / f"{name}.log")
    if wait:
        try:
            wait_ready(port, daemon, timeout=90)  # the machine is shared: a start may be slow
        except AssertionError:
            daemon.kill9()
            raise AssertionError(f"{name} not ready:\n{daemon.log.read_text()[-3000:]}") from None
    return daemon, port


def fire_states(pg_url: str) -> dict[datetime, str]:
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT fire_time, status FROM fire_claims WHERE job_id = 'tick'"))
            return {t.astimezone(UTC): status for t, status in rows}
    finally:
        engine.dispose()


def not_ready(port: int) -> dict | None:
    """/readyz's details when it says 503, else None."""
    response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
    return response.json() if response.status_code == 503 else None


@pytest.mark.timeout(400)  # three starts, a 20 s outage and its mail, on a shared machine
def test_fires_of_a_postgresql_outage_run_once_each_when_it_returns(tmp_path, clean_lab, pg_url, proxy):
    write_config(tmp_path, clean_lab)
    url = proxy.url(pg_url)
    replicas = []
    try:
        for name in ("replica-a", "replica-b", "replica-c"):
            replicas.append(start(tmp_path, clean_lab, url, name)[0])
        wait_until(lambda: "done" in fire_states(pg_url).values(), 30, "a first fire done")

        cut_at = datetime.now(UTC)
        proxy.cut()
        time.sleep(OUTAGE)
        restored_at = datetime.now(UTC)
        proxy.restore()
        # The fires of the outage (a second's margin at each end: a fire at the very edge may
        # have been claimed before the cut or fired after the return).
        trigger = make_trigger(ScheduleConfig(every="5s"), "UTC")
        missed = [
            f.astimezone(UTC)
            for f in fires_between(trigger, cut_at + timedelta(seconds=1), restored_at - timedelta(seconds=1))
        ]
        assert len(missed) >= 3

        def all_done() -> bool:
            states = fire_states(pg_url)
            return all(states.get(f) == "done" for f in missed)

        try:
            wait_until(all_done, 60, "every fire of the outage done")
        except AssertionError:
            states = fire_states(pg_url)
            raise AssertionError(
                f"fires of the outage not run: {[f.isoformat() for f in missed]} -> "
                f"{ {f.isoformat(): states.get(f) for f in missed} }"
            ) from None
        subjects = {f"tick {f.strftime('%H:%M:%S')}" for f in missed}
        clean_lab.wait_for_messages("bob", len(missed), timeout=60)

        def received() -> Counter[str]:
            return Counter(
                email.message_from_bytes(raw, policy=email.policy.default)["Subject"]
                for raw in clean_lab.fetch_all("bob")
            )

        wait_until(lambda: subjects <= set(received()), 60, "the outage's fires' mail")
        time.sleep(3)  # time for a duplicate to show up
    finally:
        for daemon in replicas:
            assert daemon.terminate() == 0, daemon.log.read_text()[-3000:]
    got = received()
    assert set(got.values()) == {1}, got  # no fire sent twice
    waited = [e for d in replicas for e in iter_json_lines(d.log) if e.get("event") == "job fire waits for the store"]
    assert waited, "the outage was not seen by any replica"


def test_a_stalled_store_leaves_the_loop_turning_and_makes_readyz_503(tmp_path, clean_lab, pg_url, proxy):
    write_config(tmp_path, clean_lab, WATCHED)
    daemon, port = start(tmp_path, clean_lab, proxy.url(pg_url), "stalled")
    try:
        proxy.stall()  # ready: the watcher is in IDLE on alice's INBOX
        clean_lab.deliver("alice", mail("carol@example.test", "alice@example.test", "[stall] hello").as_bytes())

        details = wait_until(lambda: not_ready(port), 30, "/readyz 503")
        assert details["store"] is False and "did not answer" in details["store_problem"]
        for _ in range(5):  # the loop goes on: each answer comes at once, not after the store
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).text == "ok\n"
            assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 503
            # /metrics leaves the store's gauges out instead of waiting on the store
            scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
            assert scraped.status_code == 200 and "postroom_outbox_depth" not in scraped.text
            time.sleep(0.5)
        proxy.restore()
        wait_ready(port, daemon)  # and back once the store answers
    finally:
        proxy.restore()
        assert daemon.terminate() == 0, daemon.log.read_text()[-3000:]


def test_a_deleted_sqlite_store_makes_the_daemon_not_ready_until_it_is_restored(tmp_path, lab):
    write_config(tmp_path, lab)
    db = tmp_path / "state" / "postroom.db"
    daemon, port = start(tmp_path, lab, f"sqlite:///{db}", "sqlite")
    backup = tmp_path / "backup.db"
    try:
        with sqlite3.connect(db) as live, sqlite3.connect(backup) as copy:
            live.backup(copy)
        live.close()
        copy.close()
        db.unlink()

        details = wait_until(lambda: not_ready(port), 30, "/readyz 503")
        assert details["store_problem"].startswith(f"the store file {db} is gone")
        daemon.wait_log("store unavailable")
        time.sleep(6)  # a fire or two of `every: 5s` would write to the store now
        assert not db.exists(), "the daemon made a new, empty store in place of the lost one"
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200

        for stale in (db.with_name("postroom.db-wal"), db.with_name("postroom.db-shm")):
            stale.unlink(missing_ok=True)  # restoring as docs/pages/upgrade.md says: the backup alone
        shutil.copyfile(backup, db)
        wait_ready(port, daemon, timeout=30)  # back on the restored file
        daemon.wait_log("store available again")
    finally:
        assert daemon.terminate() == 0, daemon.log.read_text()[-3000:]
    unavailable = [e for e in iter_json_lines(daemon.log) if e.get("event") == "store unavailable"]
    assert unavailable and str(db) in unavailable[0]["reason"]
