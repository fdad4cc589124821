"""A PostgreSQL outage while a merge is being sent resends nothing: two real `postroom run`
replicas reach the machine's PostgreSQL through a TCP proxy the test cuts (twice, each time
longer than two leases) while the lab's Postfix takes the merge. A sent message whose result
could not be recorded stays this replica's (in memory, its lease renewed once the store
answers) and is recorded when it does: every Message-ID arrives once, the run ends `done`,
and no background task "dies" over the outage."""

from __future__ import annotations

import email
import email.policy
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.support.daemon import Daemon, assert_each_row_once, free_port, postroom_env, wait_ready, wait_until
from tests.support.tcp_proxy import TcpProxy

LEASE = 3.0
ROWS = 600
CUT = 7.0  # seconds: longer than two leases, so every lease taken before the cut has run out

CONFIG = """\
accounts:
  alice:
    address: alice@example.test
    smtp: {{host: 127.0.0.1, port: {smtp}, security: starttls, username: alice@example.test,
           password: "${{ALICE_PASSWORD}}", connections: 2}}
jobs:
  merge:
    schedule: {{at: "{at}"}}
    account: alice
    template: statement
    for_each: customers
    to: ["{{{{ row.email }}}}"]
    data:
      customers: {{sql: "SELECT name, email, balance FROM customers", database: "sqlite:///{shop}"}}
"""


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    forwarder = TcpProxy()
    yield forwarder
    forwarder.close()


def write_config(tmp_path: Path, lab, at: datetime) -> None:
    (tmp_path / "postroom.yaml").write_text(
        CONFIG.format(smtp=lab.ports.smtp, at=at.strftime("%Y-%m-%dT%H:%M:%S"), shop=tmp_path / "shop.db")
    )


@pytest.mark.timeout(300)
def test_an_outage_mid_merge_resends_nothing_and_the_run_ends_done(tmp_path, clean_lab, pg_url, proxy):
    with sqlite3.connect(tmp_path / "shop.db") as db:
        db.execute("CREATE TABLE customers (name TEXT, email TEXT, balance REAL)")
        db.executemany(
            "INSERT INTO customers VALUES (?, ?, ?)",
            [(f"Row {i:04d}", "bob@example.test", float(i)) for i in range(ROWS)],
        )
    write_config(tmp_path, clean_lab, datetime.now(UTC) + timedelta(days=1))
    engine = create_engine(pg_url)  # the test's own view of the store, not through the proxy
    daemons: list[Daemon] = []

    def sent() -> int:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM outbox WHERE status = 'sent'")).scalar_one())

    try:
        for name in ("r1", "r2"):
            port = free_port()
            env = postroom_env(
                clean_lab,
                tmp_path,
                POSTROOM_HTTP=f"127.0.0.1:{port}",
                POSTROOM_DATABASE_URL=proxy.url(pg_url),
                POSTROOM_INSTANCE=name,
                POSTROOM_LEASE_SECONDS=str(LEASE),
                POSTROOM_STATE_DIR=str(tmp_path / name),
            )
            daemons.append(Daemon(env, log=tmp_path / f"{name}.log"))
            wait_ready(port, daemons[-1], timeout=120)
        write_config(tmp_path, clean_lab, datetime.now(UTC) + timedelta(seconds=3))
        for daemon in daemons:
            daemon.proc.send_signal(1)  # SIGHUP: the merge is scheduled on both
            daemon.wait_log("config reloaded", timeout=60)

        for threshold in (60, ROWS // 2):  # two cuts, each in the middle of sending
            wait_until(lambda threshold=threshold: sent() >= threshold, 120, f"{threshold} rows sent")
            proxy.cut()
            time.sleep(CUT)
            proxy.restore()
        assert sent() < ROWS, "the merge was over before the second cut: nothing was tested"
        wait_until(lambda: sent() == ROWS, 120, "every row recorded sent")
        clean_lab.wait_for_messages("bob", ROWS, timeout=60)
        time.sleep(3)  # time for a resend to show up
        raws = clean_lab.fetch_all("bob")
        with engine.connect() as conn:
            runs = conn.execute(text("SELECT status FROM job_runs WHERE job_id = 'merge'")).scalars().all()
            fire = conn.execute(text("SELECT status FROM fire_claims WHERE job_id = 'merge'")).scalar_one()
    finally:
        for daemon in daemons:
            if daemon.proc.poll() is None:
                daemon.terminate()
        engine.dispose()
    logs = "".join(daemon.log.read_text(errors="replace") for daemon in daemons)
    ids = Counter(email.message_from_bytes(raw, policy=email.policy.default)["Message-ID"] for raw in raws)
    assert [i for i, n in ids.items() if n > 1] == [], "a message sent again"
    assert_each_row_once(raws, rows=ROWS, max_duplicates=0)
    assert runs == ["done"] and fire == "done", (runs, fire)
    assert "background task died" not in logs and "Task exception was never retrieved" not in logs
