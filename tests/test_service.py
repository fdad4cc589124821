"""Running as a service, end to end with the real `postroom run` process and the mail lab:
sd_notify on a real datagram socket, SIGHUP reloads (good and broken), SIGTERM mid-batch,
and the /healthz, /readyz, /metrics endpoint around them."""

from __future__ import annotations

import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.lab import MailLab
from tests.support.daemon import (
    ACCOUNT_CONFIG,
    MERGE_CONFIG,
    Daemon,
    assert_each_row_once,
    free_port,
    postroom_env,
    run_cli,
    wait_until,
)

SERVICE_CONFIG = (
    ACCOUNT_CONFIG
    + """\
jobs:
{jobs}
rules:
  - name: archive-reports
    account: alice
    folder: INBOX
    match: {{subject: {{contains: "[report]"}}}}
    actions: [{{move: Archive}}]
"""
)

# A job that never fires while a test runs (1 January, 05:00): a merge, since its template
# reads `row` (`check` and the daemon refuse a template name a job does not give it).
QUIET_JOB = """\
  {name}:
    schedule: {{cron: "0 5 1 1 *"}}
    account: alice
    template: statement
    for_each: customers
    to: [bob@example.test]
    data:
      customers: {{sql: "SELECT name, email, balance FROM customers", database: "sqlite:///shop.db"}}
"""


def service_config(lab: MailLab, jobs: list[str]) -> str:
    return SERVICE_CONFIG.format(
        smtp=lab.ports.smtp, imap=lab.ports.imap, jobs="".join(QUIET_JOB.format(name=j) for j in jobs)
    )


def http_get(port: int, path: str) -> httpx.Response | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2)
    except httpx.HTTPError:
        return None


class NotifySocket:
    """A datagram socket standing in for systemd's: records every sd_notify message."""

    def __init__(self) -> None:
        # Short path: sun_path holds 108 bytes, pytest's tmp_path can be longer.
        self.dir = Path(tempfile.mkdtemp(prefix="pr-notify-"))
        self.path = self.dir / "notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def events(self) -> list[str]:
        """One word per message: READY, WATCHDOG, RELOADING or STOPPING."""
        out = []
        for _at, fields in list(self.messages):
            out.extend(
                k.removesuffix("=1") for k in ("READY", "WATCHDOG", "RELOADING", "STOPPING") if fields.get(k) == "1"
            )
        return out

    def wait_for(self, key: str, count: int = 1, timeout: float = 20) -> None:
        wait_until(lambda: self.events().count(key) >= count, timeout, f"{count} x {key}=1 on NOTIFY_SOCKET")

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


def start_daemon(lab: MailLab, workdir: Path, notify: NotifySocket | None, **extra: str) -> tuple[Daemon, int, dict]:
    port = free_port()
    more = {"NOTIFY_SOCKET": str(notify.path)} if notify is not None else {}
    env = postroom_env(lab, workdir, POSTROOM_HTTP=f"127.0.0.1:{port}", **more, **extra)
    return Daemon(env, log=workdir / "daemon.log"), port, env


def stop(daemon: Daemon) -> int:
    code = daemon.terminate()
    if code != 0:
        pytest.fail(f"daemon exited {code}:\n{daemon.log.read_text()[-3000:]}")
    return code


def test_notify_ready_watchdog_then_stopping_on_sigterm(tmp_path, clean_lab, notify):
    (tmp_path / "postroom.yaml").write_text(service_config(clean_lab, ["digest"]))
    # No WATCHDOG_PID: the pid isn't known before the spawn; the daemon then pings anyway.
    daemon, port, _env = start_daemon(clean_lab, tmp_path, notify, WATCHDOG_USEC="300000")
    try:
        notify.wait_for("READY")
        notify.wait_for("WATCHDOG", count=3, timeout=10)  # a ping every 150 ms
        ready_status = next(f["STATUS"] for _t, f in notify.messages if f.get("READY") == "1")
        assert "1 jobs, 1 watchers" in ready_status
        assert http_get(port, "/healthz").status_code == 200
        wait_until(lambda: (r := http_get(port, "/readyz")) is not None and r.status_code == 200, 20, "readyz 200")
    finally:
        code = daemon.terminate()
    assert code == 0, daemon.log.read_text()[-3000:]
    keys = notify.events()
    assert keys[0] == "READY" and "STOPPING" in keys
    first_ping = keys.index("WATCHDOG")
    assert first_ping > 0 and keys.index("STOPPING") > first_ping
    after_stop = keys[keys.index("STOPPING") + 1 :]
    assert "READY" not in after_stop


def jobs_listed(env: dict) -> str:
    result = run_cli(["jobs"], env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def metric_lines(port: int) -> list[str]:
    response = http_get(port, "/metrics")
    assert response is not None and response.status_code == 200
    return [line for line in response.text.splitlines() if not line.startswith("#")]


def test_sighup_applies_a_new_job_and_keeps_the_old_config_when_broken(tmp_path, clean_lab, notify):
    config = tmp_path / "postroom.yaml"
    config.write_text(service_config(clean_lab, ["digest"]))
    daemon, port, env = start_daemon(clean_lab, tmp_path, notify)
    try:
        notify.wait_for("READY")
        assert "postroom_jobs 1.0" in metric_lines(port)
        assert "weekly" not in jobs_listed(env)

        # A good reload: the new job is scheduled and exported without a restart.
        config.write_text(service_config(clean_lab, ["digest", "weekly"]))
        daemon.proc.send_signal(signal.SIGHUP)
        notify.wait_for("READY", count=2)
        lines = metric_lines(port)
        assert "postroom_jobs 2.0" in lines
        assert any(line.startswith('postroom_job_next_fire_timestamp_seconds{job="weekly"}') for line in lines)
        assert 'postroom_config_reloads_total{result="ok"} 1.0' in lines
        listed = jobs_listed(env)
        assert "weekly" in listed and "0 5 1 1 *" in listed

        # A broken reload: refused, logged, and the previous config keeps running.
        config.write_text(config.read_text().replace('cron: "0 5 1 1 *"', 'cron: "0 5 32 1 *"'))
        daemon.proc.send_signal(signal.SIGHUP)
        notify.wait_for("READY", count=3)
        daemon.wait_log("reload refused")
        assert "jobs.digest.schedule.cron" in daemon.log.read_text()
        reload_keys = [k for k in notify.events() if k in ("RELOADING", "READY")]
        assert reload_keys == ["READY", "RELOADING", "READY", "RELOADING", "READY"]
        failed_status = [f.get("STATUS", "") for _t, f in notify.messages if f.get("READY") == "1"][-1]
        assert failed_status.startswith("reload failed")
        lines = metric_lines(port)
        assert 'postroom_config_reloads_total{result="failed"} 1.0' in lines
        assert "postroom_jobs 2.0" in lines
        assert http_get(port, "/readyz").status_code == 200
        # ...and its rules still act on new mail.
        clean_lab.deliver(
            "alice",
            b"From: r@example.test\r\nTo: alice@example.test\r\nSubject: [report] after a bad reload\r\n\r\nbody\r\n",
        )
        clean_lab.wait_for_messages("alice", 1, folder="Archive", timeout=20)
    finally:
        stop(daemon)


def test_sigterm_mid_batch_exits_in_time_and_a_restart_sends_the_rest_once(tmp_path, clean_lab, notify):
    at = (datetime.now(UTC) + timedelta(seconds=6)).strftime("%Y-%m-%dT%H:%M:%S")
    (tmp_path / "postroom.yaml").write_text(MERGE_CONFIG.format(smtp=clean_lab.ports.smtp, at=at))
    with sqlite3.connect(tmp_path / "shop.db") as db:
        db.execute("CREATE TABLE customers (name TEXT, email TEXT, balance REAL)")
        db.executemany(
            "INSERT INTO customers VALUES (?, ?, ?)",
            [(f"Row {i:03d}", "bob@example.test", float(i)) for i in range(500)],
        )
    db.close()
    first, port, env = start_daemon(clean_lab, tmp_path, notify)
    try:
        notify.wait_for("READY")
        assert http_get(port, "/readyz").status_code == 200
        clean_lab.wait_for_messages("bob", 50, timeout=60)
        first.proc.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        # Best effort: while it finishes in-flight work, /readyz must already say no.
        while first.proc.poll() is None and time.monotonic() - stopped_at < 20:
            response = http_get(port, "/readyz")
            if response is not None:
                assert response.status_code == 503, response.text
            time.sleep(0.05)
        try:
            code = first.proc.wait(timeout=max(0.0, 20 - (time.monotonic() - stopped_at)))
        except subprocess.TimeoutExpired:
            pytest.fail(f"no exit within 20 s of SIGTERM:\n{first.log.read_text()[-3000:]}")
    finally:
        first.terminate()
    assert code == 0, first.log.read_text()[-3000:]
    assert "STOPPING" in notify.events()
    outbox = sqlite3.connect(tmp_path / "state" / "postroom.db")
    statuses = dict(outbox.execute("SELECT status, count(*) FROM outbox GROUP BY status").fetchall())
    outbox.close()
    assert "sending" not in statuses, f"rows left leased at exit: {statuses}"

    second = Daemon(env, log=tmp_path / "daemon2.log")
    try:
        second.wait_log("postroom running")
        raws = clean_lab.wait_for_messages("bob", 500, timeout=60)
    finally:
        stop(second)
    assert_each_row_once(raws, rows=500, max_duplicates=4)  # at most what was in flight on 2 connections


# -- what stays resident: the footprint's import weight (bench/footprint measures the rest) ----

RESIDENT_PROBE = """\
import sys
from postroom.cli import app  # the daemon's entry point, as `postroom run` imports it
from postroom.bootstrap import open_daemon_store
from postroom.config import Settings
store = open_daemon_store(Settings(database_url=sys.argv[1], instance="probe"))
store.close()
print(" ".join(m for m in ("alembic", "mako", "pygments", "rich") if m in sys.modules) or "none")
"""


def test_daemon_migrates_in_a_child_and_keeps_alembic_and_rich_out_of_memory(tmp_path):
    from tests.support.daemon import ROOT

    url = f"sqlite:///{tmp_path / 'state' / 'postroom.db'}"
    for _ in ("fresh database: migrated by a child", "current database: nothing to do"):
        probe = subprocess.run(
            [sys.executable, "-c", RESIDENT_PROBE, url],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
        assert probe.returncode == 0, probe.stderr
        assert probe.stdout.splitlines()[-1] == "none"
    from postroom.store import open_engine, schema_is_current

    engine = open_engine(url)
    assert schema_is_current(engine)
    engine.dispose()


def test_the_daemon_imports_no_cryptography_until_an_oauth2_account_needs_the_vault():
    # cryptography (the refresh-token vault's Fernet) is ~7 MiB resident: only OAuth2 accounts pay it.
    probe = "import sys, postroom.app; print('cryptography' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_a_schema_from_a_newer_postroom_stops_the_start_naming_both_versions(tmp_path):
    from postroom.bootstrap import open_daemon_store
    from postroom.config import Settings
    from postroom.errors import PostroomError

    db = tmp_path / "postroom.db"
    with sqlite3.connect(db) as conn:  # a schema from a newer postroom than this one
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES ('9999_from_the_future')")
    conn.close()
    from postroom.store.engine import head_revisions

    head = ", ".join(sorted(head_revisions()))
    newer = rf"store schema 9999_from_the_future is newer than this postroom \({head}\); upgrade postroom"
    with pytest.raises(PostroomError, match=newer):
        open_daemon_store(Settings(database_url=f"sqlite:///{db}", instance="probe"))


def test_head_revisions_read_from_the_files_match_alembic():
    from alembic.script import ScriptDirectory
    from postroom.store.engine import _alembic_config, head_revisions, open_engine

    engine = open_engine("sqlite://")
    assert head_revisions() == set(ScriptDirectory.from_config(_alembic_config(engine)).get_heads())
