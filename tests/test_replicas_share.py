"""Replicas that share the work and heal in seconds: real `postroom run` processes on one real
PostgreSQL (a database per test) and the lab's Dovecot and Postfix, with test-sized leases
(POSTROOM_LEASE_SECONDS=3).

- 6 watched folders, 3 replicas: each holds 2 once settled; one stops, the other two hold 3.
- a merge with long leases (60 s): every replica's sender joins within seconds of its rows
  being stored, each row is sent once.
- kill -9 of the replica that fired a merge and holds busy folders, with webhooks in flight:
  its rows, webhooks and folders resume on the others within 30 s; nothing is lost, and a
  repeat is only ever the same Message-ID or webhook-id.
"""

from __future__ import annotations

import email
import email.policy
import json
import sqlite3
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.support.daemon import (
    REPLICAS_CONFIG,
    Daemon,
    DataServer,
    assert_each_row_once,
    free_port,
    mail,
    postroom_env,
    run_cli,
    wait_ready,
    wait_until,
)

FOLDERS = [f"f{i}" for i in range(1, 7)]
LEASE = "4"  # seconds: heartbeats every 1.3 s; a dead replica's work moves within a few
RESUME = 30  # seconds: the most a dead replica's work may wait for another


@pytest.fixture
def hooks():
    server = DataServer()
    yield server
    server.close()


class Replicas:
    """Replicas of one config, each a `postroom run` with its own name, HTTP port and log."""

    def __init__(
        self,
        tmp_path: Path,
        lab,
        pg_url: str,
        hooks: DataServer,
        *,
        merge_rows: int = 0,
        merge_in: float = 3600,
        lease: str = LEASE,
    ):
        self.tmp, self.lab, self.pg_url, self.lease = tmp_path, lab, pg_url, lease
        for folder in FOLDERS:
            lab.doveadm("mailbox", "create", "-u", "alice", folder)
        shop = tmp_path / "shop.db"
        with sqlite3.connect(shop) as db:
            db.execute("CREATE TABLE customers (name TEXT, email TEXT, balance REAL)")
            db.executemany(
                "INSERT INTO customers VALUES (?, ?, ?)",
                [(f"Row {i:04d}", "bob@example.test", float(i)) for i in range(merge_rows)],
            )
        at = (datetime.now(UTC) + timedelta(seconds=merge_in)).strftime("%Y-%m-%dT%H:%M:%S")
        (tmp_path / "postroom.yaml").write_text(
            REPLICAS_CONFIG.format(
                smtp=lab.ports.smtp, imap=lab.ports.imap, at=at, shop=shop, folders=", ".join(FOLDERS), hooks=hooks.url
            )
        )
        self.daemons: dict[str, Daemon] = {}
        self.ports: dict[str, int] = {}
        self.engine = create_engine(pg_url)

    def env(self, name: str, port: int = 0) -> dict[str, str]:
        return postroom_env(
            self.lab,
            self.tmp,
            POSTROOM_HTTP=f"127.0.0.1:{port}" if port else "",
            POSTROOM_DATABASE_URL=self.pg_url,
            POSTROOM_INSTANCE=name,
            POSTROOM_LEASE_SECONDS=self.lease,
            POSTROOM_STATE_DIR=str(self.tmp / name),
        )

    def start(self, name: str) -> Daemon:
        port = free_port()
        daemon = Daemon(self.env(name, port), log=self.tmp / f"{name}.log")
        self.daemons[name], self.ports[name] = daemon, port
        wait_ready(port, daemon, timeout=120)  # a loaded host starts slowly
        return daemon

    def count_rows(self) -> int:
        """How many rows the outbox holds, whatever their status."""
        with self.engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM outbox")).scalar() or 0)

    def holders(self) -> Counter[str]:
        """How many watches each replica holds, by the lease rows (expired ones not counted)."""
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT owner FROM watch_leases WHERE expires_at > now()")).scalars()
            return Counter(rows)

    def readyz(self, name: str) -> dict:
        return httpx.get(f"http://127.0.0.1:{self.ports[name]}/readyz", timeout=5).json()

    def close(self) -> None:
        for name, daemon in self.daemons.items():
            if daemon.proc.poll() is None:
                assert daemon.terminate() == 0, (self.tmp / f"{name}.log").read_text()[-3000:]
        self.engine.dispose()


def settled(replicas: Replicas, expected: dict[str, int]) -> bool:
    return dict(replicas.holders()) == expected


def mid_merge(replicas: Replicas, rows: int) -> str | None:
    """The replica holding the most merge rows, once some are sent and most are not."""
    with replicas.engine.connect() as conn:
        sent = conn.execute(text("SELECT count(*) FROM outbox WHERE status = 'sent'")).scalar() or 0
        held = conn.execute(
            text(
                "SELECT split_part(lease_owner, '/', 1), count(*) FROM outbox "
                "WHERE status = 'sending' GROUP BY 1 ORDER BY 2 DESC"
            )
        ).first()
    return held[0] if held and 30 <= sent <= rows - 500 else None


def hook_mail(lab, prefix: str, per_folder: int) -> list[str]:
    """Append [hook] messages to every watched folder; returns their subjects."""
    subjects = []
    with lab.imap_client("alice") as client:
        for folder in FOLDERS:
            for i in range(per_folder):
                subject = f"[hook] {prefix} {folder} {i}"
                client.append(folder, mail("carol@example.test", "alice@example.test", subject).as_bytes())
                subjects.append(subject)
    return subjects


def assert_each_hook_once_per_id(hooks: DataServer, subjects: list[str]) -> None:
    """Every subject's webhook arrived; any repeat carries the same webhook-id."""
    by_subject: dict[str, set[str]] = {}
    for headers, body in hooks.posts:
        by_subject.setdefault(json.loads(body)["subject"], set()).add(headers["webhook-id"])
    assert sorted(by_subject) == sorted(subjects)
    assert all(len(ids) == 1 for ids in by_subject.values()), "a repeat with a new webhook-id"


@pytest.mark.timeout(300)
def test_six_folders_three_replicas_two_each_then_three_each(tmp_path, clean_lab, pg_url, hooks):
    replicas = Replicas(tmp_path, clean_lab, pg_url, hooks)
    try:
        for name in ("r1", "r2", "r3"):
            replicas.start(name)
        wait_until(lambda: settled(replicas, {"r1": 2, "r2": 2, "r3": 2}), RESUME, "2 folders each")
        assert len(replicas.readyz("r2")["replica"]["holds"]) == 2
        status = run_cli(["status"], replicas.env("cli"))
        assert status.returncode == 0, status.stderr
        assert all(f"alice/{folder}" in status.stdout for folder in FOLDERS) and "r3" in status.stdout
        first = hook_mail(clean_lab, "first", 2)
        wait_until(lambda: len(hooks.posts) >= len(first), RESUME, "the first webhooks")

        assert replicas.daemons["r3"].terminate() == 0  # leaves: its 2 folders go to the others
        wait_until(lambda: settled(replicas, {"r1": 3, "r2": 3}), RESUME, "3 folders each")
        second = hook_mail(clean_lab, "second", 2)
        wait_until(lambda: len(hooks.posts) >= len(first) + len(second), RESUME, "the second webhooks")
        time.sleep(2)  # time for a duplicate to show up
    finally:
        replicas.close()
    assert_each_hook_once_per_id(hooks, first + second)
    assert len(hooks.posts) == len(first) + len(second)  # a folder changing hands handled none twice


JOIN = 5.0  # seconds from a merge's rows stored to every replica's sender holding some


@pytest.mark.timeout(400)
def test_kill_9_mid_merge_and_busy_folders_resume_on_the_others(tmp_path, clean_lab, pg_url, hooks):
    rows = 1500
    hooks.delay = 0.5  # deliveries take a while: some are in flight at the kill
    replicas = Replicas(tmp_path, clean_lab, pg_url, hooks, merge_rows=rows, merge_in=25)
    try:
        for name in ("r1", "r2", "r3"):
            replicas.start(name)
        wait_until(lambda: settled(replicas, {"r1": 2, "r2": 2, "r3": 2}), RESUME, "2 folders each")
        subjects = hook_mail(clean_lab, "busy", 5)
        # mid-merge (some sent, not all), kill -9 the replica holding the most of its rows
        busiest = wait_until(lambda: mid_merge(replicas, rows), 90, "the merge under way")
        replicas.daemons[busiest].kill9()
        survivors = [n for n in replicas.daemons if n != busiest]

        wait_until(lambda: settled(replicas, {n: 3 for n in survivors}), RESUME, "its folders taken over")
        wait_until(lambda: len(clean_lab.fetch_all("bob")) >= rows, RESUME * 4, "the whole merge")
        with replicas.engine.connect() as conn:  # its rows resumed: nothing of it left leased
            wait_until(
                lambda: not conn.execute(text("SELECT count(*) FROM outbox WHERE status <> 'sent'")).scalar(),
                RESUME,
                "every row sent",
            )
        later = hook_mail(clean_lab, "after", 1)  # every folder is worked again
        wait_until(
            lambda: len({json.loads(b)["subject"] for _, b in hooks.posts}) >= len(subjects + later),
            RESUME * 2,
            "every webhook",
        )
        time.sleep(2)
    finally:
        replicas.close()
    raws = clean_lab.fetch_all("bob")
    # every row arrived under one Message-ID; a repeat (in flight at the kill) has the same one
    assert_each_row_once(raws, rows=rows, max_duplicates=12)
    ids = Counter(email.message_from_bytes(r, policy=email.policy.default)["Message-ID"] for r in raws)
    assert len(ids) == rows
    assert_each_hook_once_per_id(hooks, subjects + later)
