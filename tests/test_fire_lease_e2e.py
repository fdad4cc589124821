"""A fire's claim is a lease: two real `postroom run` replicas on one real PostgreSQL, the lab's
Postfix and Dovecot. The replica that claimed a merge is killed (-9) while it waits on the
merge's slow `http:` data source; the other takes the fire over within two leases (not at some
replica's next start) and every row is sent once, with no run left `running`."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.support.daemon import (
    Daemon,
    assert_each_row_once,
    free_port,
    postroom_env,
    wait_ready,
    wait_until,
)

LEASE = 3.0  # seconds (POSTROOM_LEASE_SECONDS): renewed every second, lapsed after three
ROWS = 40

CONFIG = """\
accounts:
  alice:
    address: alice@example.test
    smtp: {{host: 127.0.0.1, port: {smtp}, security: starttls, username: alice@example.test,
           password: "${{ALICE_PASSWORD}}"}}
jobs:
  merge:
    schedule: {{at: "{at}"}}
    account: alice
    template: statement
    for_each: customers
    to: ["{{{{ row.email }}}}"]
    data:
      customers: {{http: "{data}/customers.json", timeout: 120}}
"""


class SlowRows:
    """Serves the merge's rows as JSON; the first request waits `first_delay` seconds (the
    fetch its claimer is killed in), later ones answer at once. Records when each came."""

    def __init__(self, first_delay: float):
        self.requests: list[float] = []
        owner = self
        body = json.dumps(
            [{"name": f"Row {i:04d}", "email": "bob@example.test", "balance": float(i)} for i in range(ROWS)]
        ).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests.append(time.monotonic())
                if len(owner.requests) == 1:
                    time.sleep(first_delay)
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the killed claimer's connection is gone

            def log_message(self, *_a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def write_config(path: Path, lab, data: SlowRows, at: datetime) -> None:
    path.write_text(CONFIG.format(smtp=lab.ports.smtp, data=data.url, at=at.strftime("%Y-%m-%dT%H:%M:%S")))


@pytest.mark.timeout(240)
def test_a_fire_whose_claimer_is_killed_mid_fetch_is_taken_over_within_two_leases(tmp_path, clean_lab, pg_url):
    data = SlowRows(first_delay=60)
    config = tmp_path / "postroom.yaml"
    write_config(config, clean_lab, data, datetime.now(UTC) + timedelta(days=1))
    engine = create_engine(pg_url)
    daemons: dict[str, Daemon] = {}
    try:
        for name in ("r1", "r2"):
            port = free_port()
            env = postroom_env(
                clean_lab,
                tmp_path,
                POSTROOM_HTTP=f"127.0.0.1:{port}",
                POSTROOM_DATABASE_URL=pg_url,
                POSTROOM_INSTANCE=name,
                POSTROOM_LEASE_SECONDS=str(LEASE),
                POSTROOM_STATE_DIR=str(tmp_path / name),
            )
            daemons[name] = Daemon(env, log=tmp_path / f"{name}.log")
            wait_ready(port, daemons[name], timeout=120)
        # both up: the merge is due in a few seconds (a reload schedules it on both)
        write_config(config, clean_lab, data, datetime.now(UTC) + timedelta(seconds=4))
        for daemon in daemons.values():
            daemon.proc.send_signal(1)  # SIGHUP
            daemon.wait_log("config reloaded", timeout=60)

        wait_until(lambda: data.requests, 60, "the claimer fetching the merge's rows")
        with engine.connect() as conn:
            claimer = conn.execute(text("SELECT claimed_by FROM fire_claims WHERE job_id = 'merge'")).scalar_one()
        daemons[claimer].kill9()
        killed = time.monotonic()

        wait_until(lambda: len(data.requests) >= 2, 60, "another replica fetching the rows again")
        taken_over = data.requests[1] - killed
        raws = clean_lab.wait_for_messages("bob", ROWS, timeout=120)
        time.sleep(2)  # time for a duplicate to show up
        raws = clean_lab.fetch_all("bob")
        with engine.connect() as conn:
            fire = conn.execute(text("SELECT claimed_by, status FROM fire_claims WHERE job_id = 'merge'")).one()
            runs = conn.execute(text("SELECT status FROM job_runs WHERE job_id = 'merge' ORDER BY id")).scalars().all()
    finally:
        for daemon in daemons.values():
            if daemon.proc.poll() is None:
                daemon.terminate()
        engine.dispose()
        data.close()
    assert taken_over <= 2 * LEASE, f"taken over {taken_over:.1f} s after the kill"
    assert fire.status == "done" and fire.claimed_by != claimer
    assert "running" not in runs and runs[-1] == "done", runs
    assert_each_row_once(raws, rows=ROWS, max_duplicates=0)
    assert len(data.requests) == 2
