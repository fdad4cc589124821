"""Outgoing mail end to end: the reference jobs through the real `postroom` command, real
Postfix, read back over real IMAP."""

from __future__ import annotations

import email
import email.policy
import sqlite3
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support.daemon import MERGE_CONFIG, REFERENCE, Daemon, DataServer, lab_config_text, postroom_env, run_cli

ROOT = Path(__file__).resolve().parent.parent


def seed_shop(path: Path, *, orders: bool = True, customers: int = 3) -> None:
    db = sqlite3.connect(path)
    with db:
        db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, total REAL)")
        db.execute("CREATE TABLE customers (name TEXT, email TEXT, balance REAL)")
        if orders:
            db.executemany(
                "INSERT INTO orders VALUES (?, ?, ?)",
                [(1, "Ada <Lovelace>", 10.5), (2, "Grace", 20.25), (3, "Edsger", 30.0)],
            )
        people = ["bob", "carol", "dave"]
        db.executemany(
            "INSERT INTO customers VALUES (?, ?, ?)",
            [(f"Customer {i}", f"{people[i % 3]}@example.test", 100.0 + i) for i in range(customers)],
        )
    db.close()


@pytest.fixture
def data_server():
    server = DataServer()
    yield server
    server.close()


@pytest.fixture
def workdir(tmp_path, clean_lab, data_server) -> Path:
    (tmp_path / "postroom.yaml").write_text(lab_config_text(clean_lab, REFERENCE.read_text(), data_server))
    seed_shop(tmp_path / "shop.db")
    return tmp_path


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def test_send_orders_report_reaches_bob_as_html_text_and_csv(workdir, clean_lab):
    env = postroom_env(clean_lab, workdir)
    result = run_cli(["send", "orders-report"], env)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "sent 1" in result.stdout
    (raw,) = clean_lab.wait_for_messages("bob", 1)
    msg = parse(raw)
    assert msg["Subject"].startswith("[report] Orders for ")
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg.get_content_type() == "multipart/mixed"
    alternative = next(p for p in msg.iter_parts() if p.get_content_type() == "multipart/alternative")
    text = alternative.get_body(("plain",)).get_content()
    html = alternative.get_body(("html",)).get_content()
    assert "Ada <Lovelace>" in text and "Ada &lt;Lovelace&gt;" in html  # html escaped, text not
    assert "<table" in html and "style=" in html  # CSS inlined
    (csv_part,) = [p for p in msg.iter_attachments() if p.get_filename() == "orders.csv"]
    rows = csv_part.get_content().splitlines()
    assert rows[0] == "id,customer,total" and len(rows) == 4


def test_dry_run_prints_mime_and_sends_nothing(workdir, clean_lab):
    env = postroom_env(clean_lab, workdir)
    result = run_cli(["send", "orders-report", "--dry-run"], env)
    assert result.returncode == 0, result.stderr
    assert "Content-Type: multipart/mixed" in result.stdout
    assert 'filename="orders.csv"' in result.stdout
    assert "Subject: [report] Orders for" in result.stdout
    assert clean_lab.fetch_all("bob") == []
    status = run_cli(["outbox"], env)
    assert "nothing waiting" in status.stdout


def test_no_order_rows_means_no_mail(workdir, clean_lab):
    (workdir / "shop.db").unlink()
    seed_shop(workdir / "shop.db", orders=False)
    env = postroom_env(clean_lab, workdir)
    result = run_cli(["send", "orders-report"], env)
    assert result.returncode == 0, result.stderr
    assert "nothing to send (orders has no rows)" in result.stdout
    assert clean_lab.fetch_all("bob") == []


def test_statements_one_message_per_row_each_with_its_data(workdir, clean_lab):
    env = postroom_env(clean_lab, workdir)
    result = run_cli(["send", "statements"], env)
    assert result.returncode == 0, result.stderr + result.stdout
    for i, user in enumerate(["bob", "carol", "dave"]):
        (raw,) = clean_lab.wait_for_messages(user, 1)
        body = parse(raw).get_body(("plain", "html")).get_content()
        assert f"Customer {i}" in body and f"{100 + i:.2f}" in body


def test_send_to_override(workdir, clean_lab):
    env = postroom_env(clean_lab, workdir)
    result = run_cli(["send", "orders-report", "--to", "dave@example.test"], env)
    assert result.returncode == 0, result.stderr
    clean_lab.wait_for_messages("dave", 1)
    assert clean_lab.fetch_all("bob") == []


def test_check_offline_then_online(workdir, clean_lab):
    env = postroom_env(clean_lab, workdir)
    offline = run_cli(["check", "--offline"], env)
    assert offline.returncode == 0, offline.stderr
    online = run_cli(["check"], env)
    assert online.returncode == 0, online.stdout + online.stderr
    assert online.stdout.count("ok ") >= 6  # smtp x3, imap x2, pop3 x1


def test_check_names_broken_config_and_template(workdir, clean_lab, tmp_path):
    env = postroom_env(clean_lab, workdir)
    cfg = workdir / "postroom.yaml"
    cfg.write_text(cfg.read_text().replace('cron: "0 6 1 * *"', 'cron: "0 6 32 * *"'))
    result = run_cli(["check", "--offline"], env)
    assert result.returncode == 78  # EX_CONFIG: systemd does not restart on it
    assert "jobs.statements.schedule.cron" in result.stderr and "postroom.yaml: line 38" in result.stderr

    cfg.write_text(lab_config_text(clean_lab, REFERENCE.read_text()))
    templates = tmp_path / "templates"
    templates.mkdir()
    for src in (ROOT / "templates").glob("*.j2"):
        (templates / src.name).write_text(src.read_text())
    (templates / "statement.j2").write_text("{% block subject %}Hi {{ row.name }{% endblock %}\n")
    result = run_cli(["check", "--offline"], {**env, "POSTROOM_TEMPLATES": str(templates)})
    assert result.returncode == 78
    assert "statement.j2:1" in result.stderr


def test_wrong_password_fails_check_naming_the_server(workdir, clean_lab):
    env = postroom_env(clean_lab, workdir, ALICE_PASSWORD="wrong")
    result = run_cli(["check"], env)
    assert result.returncode == 1
    assert "FAIL accounts.alice.smtp" in result.stdout and "FAIL accounts.alice.imap" in result.stdout


def merge_rows(raws: list[bytes]) -> dict[str, set[str]]:
    """Statement row ("Row 042") -> the Message-IDs it arrived with."""
    by_row: dict[str, set[str]] = {}
    for raw in raws:
        msg = parse(raw)
        text = msg.get_body(("plain", "html")).get_content()
        row = next(line for line in text.splitlines() if "Row " in line)
        by_row.setdefault(row.strip(), set()).add(msg["Message-ID"])
    return by_row


def test_kill_9_mid_merge_then_restart_everyone_gets_it_once(tmp_path, clean_lab):
    """500-row merge to bob; SIGKILL the daemon mid-send; restart: all 500 arrive, and any
    duplicate is a message that was in flight and carries the same Message-ID."""
    at = (datetime.now(UTC) + timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%S")
    (tmp_path / "postroom.yaml").write_text(MERGE_CONFIG.format(smtp=clean_lab.ports.smtp, at=at))
    db = sqlite3.connect(tmp_path / "shop.db")
    with db:
        db.execute("CREATE TABLE customers (name TEXT, email TEXT, balance REAL)")
        db.executemany(
            "INSERT INTO customers VALUES (?, ?, ?)",
            [(f"Row {i:03d}", "bob@example.test", float(i)) for i in range(500)],
        )
    db.close()
    env = postroom_env(clean_lab, tmp_path)
    first = Daemon(env, log=tmp_path / "daemon1.log")
    try:
        first.wait_log("postroom running")
        clean_lab.wait_for_messages("bob", 40, timeout=60)
    finally:
        first.kill9()
    second = Daemon(env, log=tmp_path / "daemon2.log")
    try:
        # a resend of a message that was in flight at the kill counts among the 500 in the
        # folder too: wait for 500 different rows, not just 500 messages
        deadline = time.monotonic() + 120
        raws = clean_lab.wait_for_messages("bob", 500, timeout=120)
        while len(merge_rows(raws)) < 500 and time.monotonic() < deadline:
            time.sleep(0.5)
            raws = clean_lab.fetch_all("bob")
    finally:
        assert second.terminate() == 0
    by_row = merge_rows(raws)
    assert len(by_row) == 500, "a recipient row is missing"
    assert all(len(ids) == 1 for ids in by_row.values()), "a duplicate with a new Message-ID"
    counts = Counter(parse(r)["Message-ID"] for r in raws)
    assert sum(n - 1 for n in counts.values()) <= 4  # at most what was in flight on 2 connections
