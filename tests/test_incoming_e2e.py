"""Incoming mail end to end: the reference rules with `postroom run` as a real process,
mail delivered into real Dovecot, replies and forwards through real Postfix."""

from __future__ import annotations

import email
import email.policy
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from postroom.webhooks.signing import verify

from tests.support.daemon import (
    HOOK_SECRET,
    REFERENCE,
    Daemon,
    DataServer,
    free_port,
    lab_config_text,
    mail,
    postroom_env,
    wait_ready,
    wait_until,
)


def outbox_origins(db: Path) -> dict[str, int]:
    """How many messages each rule or job put into the outbox."""
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT origin, count(*) FROM outbox GROUP BY origin").fetchall())


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


@pytest.fixture
def hooks():
    server = DataServer()
    yield server
    server.close()


@pytest.fixture
def running(tmp_path, clean_lab, hooks):
    """The daemon on the reference config (bob's POP3 polled every second for the test)."""
    text = lab_config_text(clean_lab, REFERENCE.read_text(), hooks)
    text = text.replace("delete_after: false}", "delete_after: false, poll_interval: 1s}")
    (tmp_path / "postroom.yaml").write_text(text)
    port = free_port()
    env = postroom_env(clean_lab, tmp_path, POSTROOM_HTTP=f"127.0.0.1:{port}", HOOK_SECRET=HOOK_SECRET)
    daemon = Daemon(env, log=tmp_path / "daemon.log")
    try:
        wait_ready(port, daemon)
        yield daemon, port, tmp_path / "state" / "postroom.db"
    finally:
        code = daemon.terminate()
    assert code == 0, (tmp_path / "daemon.log").read_text()[-3000:]


def test_reference_rules(running, clean_lab, hooks):
    lab = clean_lab
    # archive-reports
    lab.deliver("alice", mail("reports@example.test", "alice@example.test", "[report] nightly").as_bytes())
    # invoices: vendor mail with an attachment
    invoice = mail("Billing <billing@vendor.test>", "alice@example.test", "Invoice 7")
    invoice.add_attachment(b"%PDF-1.4 demo", maintype="application", subtype="pdf", filename="inv7.pdf")
    lab.deliver("alice", invoice.as_bytes())
    # vendor mail without attachment: no match
    lab.deliver("alice", mail("billing@vendor.test", "alice@example.test", "Just a note").as_bytes())
    # alerts (POP3)
    lab.deliver("bob", mail("monitor@example.test", "bob@example.test", "disk", X_Alert="critical").as_bytes())
    lab.deliver("bob", mail("monitor@example.test", "bob@example.test", "disk", X_Alert="low").as_bytes())

    archived = lab.wait_for_messages("alice", 1, folder="Archive", timeout=20)
    assert parse(archived[0])["Subject"] == "[report] nightly"

    forwarded = lab.wait_for_messages("carol", 1, timeout=20)
    fwd = parse(forwarded[0])
    assert fwd["From"].addresses[0].addr_spec == "alice@example.test"
    assert "billing@vendor.test" in str(fwd["Reply-To"])
    attached = [p for p in fwd.walk() if p.get_content_type() == "message/rfc822"]
    assert attached and "Invoice 7" in attached[0].as_string()

    client = lab.imap_client("alice")
    try:
        client.select_folder("INBOX", readonly=True)
        flagged = client.search(["FLAGGED"])
        subjects = {
            parse(v[b"BODY[HEADER.FIELDS (SUBJECT)]"] + b"\r\n")["Subject"]
            for v in client.fetch(flagged, ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"]).values()
        }
    finally:
        client.logout()
    assert subjects == {"Invoice 7"}

    wait_until(lambda: hooks.posts, 20, "the webhook")
    time.sleep(1.5)  # a second poll must not send it again
    assert len(hooks.posts) == 1
    headers, body = hooks.posts[0]
    verify(HOOK_SECRET, headers, body)  # raises if the signature is wrong
    payload = httpx.Response(200, content=body).json()
    assert payload["rule"] == "alerts" and payload["subject"] == "disk" and payload["account"] == "bob"

    # carol's out-of-office saw the forwarded invoice and did not answer it (a reply would
    # go to the vendor's domain, which the lab discards, so ask the store what was sent)
    time.sleep(1.5)
    assert outbox_origins(running[2]) == {"invoices": 1}


def test_out_of_office_once_per_sender_and_never_to_machines(running, clean_lab):
    lab = clean_lab
    lab.deliver("carol", mail("Dave <dave@example.test>", "carol@example.test", "lunch?").as_bytes())
    (reply,) = lab.wait_for_messages("dave", 1, timeout=20)
    msg = parse(reply)
    assert msg["Subject"] == "Auto: lunch?"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Return-Path"] == "<>"
    assert msg["In-Reply-To"]
    # the same person again within `days`: no second reply
    lab.deliver("carol", mail("dave@example.test", "carol@example.test", "lunch, really?").as_bytes())
    # machines and lists: never
    lab.deliver(
        "carol", mail("dave@example.test", "carol@example.test", "list", List_Id="<ops.example.test>").as_bytes()
    )
    lab.deliver("carol", mail("dave@example.test", "carol@example.test", "bulk", Precedence="bulk").as_bytes())
    lab.deliver(
        "carol", mail("bob@example.test", "carol@example.test", "Auto: away", Auto_Submitted="auto-replied").as_bytes()
    )
    lab.deliver("carol", mail("bob@example.test", "carol@example.test", "a real one").as_bytes())
    (to_bob,) = lab.wait_for_messages("bob", 1, timeout=20)
    assert parse(to_bob)["Subject"] == "Auto: a real one"
    time.sleep(1)
    assert len(lab.fetch_all("dave")) == 1
    assert len(lab.fetch_all("bob")) == 1
    assert outbox_origins(running[2]) == {"out-of-office": 2}
