"""What mail-merge users reach for on day one: per-row attachments, extra headers,
List-Unsubscribe (RFC 2369 / 8058 one-click) and a templated Reply-To — built by the real job
runner from a real config file; one merge goes through the lab's Postfix and back over IMAP."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
from postroom.config import Settings, load_config
from postroom.errors import ConfigError, DataSourceError, MessageRefused
from postroom.mail.templates import TemplateRenderer
from postroom.outgoing.jobs import JobRunner

from tests.support.daemon import lab_config_text, postroom_env, run_cli

NOW = datetime(2026, 11, 29, 6, 0, tzinfo=UTC)
ROWS = [
    {"id": 7, "email": "bob@example.test", "name": "Bob", "manager": "carol@example.test"},
    {"id": 8, "email": "carol@example.test", "name": "Carol", "manager": ""},
]
TEMPLATE = "{% block subject %}Invoice {{ row.id }}{% endblock %}{% block text %}Dear {{ row.name }}{% endblock %}\n"
JOB = """\
accounts:
  shop:
    address: billing@shop.example
    smtp: {host: 127.0.0.1, port: 25, security: none}
jobs:
  statements:
    schedule: {cron: "0 6 1 * *"}
    account: shop
    template: statement
    to: ["{{ row.email }}"]
    reply_to: "{{ row.manager }}"
    data:
      customers: {file: customers.json}
    for_each: customers
%s
"""
EXTRAS = """\
    headers: {X-Campaign: "statements-{{ today }}", X-Customer: "{{ row.id }}"}
    list_unsubscribe: {url: "https://shop.example/u/{{ row.id }}", mailto: "unsub@shop.example", one_click: true}
    attachments: [{file: "invoices/{{ row.id }}.pdf", filename: "invoice-{{ row.id }}.pdf"}]
"""


def project(tmp_path: Path, extras: str = EXTRAS, rows: list[dict[str, object]] = ROWS) -> Path:
    (tmp_path / "templates").mkdir(exist_ok=True)
    (tmp_path / "templates" / "statement.j2").write_text(TEMPLATE)
    (tmp_path / "customers.json").write_text(json.dumps(rows))
    invoices = tmp_path / "attachments" / "invoices"  # the default attachments_dir: attachments/
    invoices.mkdir(parents=True, exist_ok=True)
    for row in (r for r in rows if isinstance(r["id"], int)):
        (invoices / f"{row['id']}.pdf").write_bytes(b"%PDF-1.4 invoice " + str(row["id"]).encode())
    (tmp_path / "postroom.yaml").write_text(JOB % extras)
    return tmp_path / "postroom.yaml"


def build(config_path: Path) -> list[EmailMessage]:
    loaded = load_config(Settings(config=config_path), environ={})
    runner = JobRunner(loaded.config, TemplateRenderer(loaded.templates_dir), None)
    built = asyncio.run(runner.build("statements", key_prefix="t", now=NOW))
    return [email.message_from_bytes(m.raw, policy=email.policy.default) for m in built.messages]  # type: ignore[misc]


def test_each_row_gets_its_own_invoice_headers_and_unsubscribe_link(tmp_path):
    first, second = build(project(tmp_path))

    (invoice,) = first.iter_attachments()
    assert invoice.get_filename() == "invoice-7.pdf" and invoice.get_content_type() == "application/pdf"
    assert invoice.get_content() == b"%PDF-1.4 invoice 7"
    assert [a.get_filename() for a in second.iter_attachments()] == ["invoice-8.pdf"]
    assert first["X-Campaign"] == "statements-2026-11-29" and first["X-Customer"] == "7"
    assert first["List-Unsubscribe"] == "<https://shop.example/u/7>, <mailto:unsub@shop.example?subject=unsubscribe>"
    assert first["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert second["List-Unsubscribe"].startswith("<https://shop.example/u/8>")
    assert first["Reply-To"] == "carol@example.test"
    assert second["Reply-To"] is None  # rendered empty: no Reply-To, as an empty cc has no Cc


@pytest.mark.parametrize("path", ["../secrets/{{ row.id }}", "/etc/{{ row.id }}", "invoices/../../{{ row.id }}"])
def test_a_per_row_path_cannot_leave_the_attachments_folder(tmp_path, path):
    extras = f'    attachments: [{{file: "{path}"}}]\n'
    refused = r"row 0: attachments\[0\]\.file: .* (leaves|leads out of) the attachments folder"
    with pytest.raises(MessageRefused, match=refused):
        build(project(tmp_path, extras))


def test_a_symlink_out_of_the_attachments_folder_is_refused(tmp_path):
    config = project(tmp_path, '    attachments: [{file: "invoices/{{ row.id }}.pdf"}]\n')
    (tmp_path / "attachments" / "invoices" / "8.pdf").unlink()
    (tmp_path / "attachments" / "invoices" / "8.pdf").symlink_to("/etc/hostname")
    with pytest.raises(MessageRefused, match=r"row 1: attachments\[0\]\.file: .* leads out of"):
        build(config)


def test_attachments_dir_moves_the_base_and_a_missing_file_fails_the_run_naming_the_row(tmp_path):
    config = project(tmp_path, '    attachments: [{file: "{{ row.id }}.pdf"}]\n')
    config.write_text("attachments_dir: attachments/invoices\n" + config.read_text())
    assert [a.get_filename() for m in build(config) for a in m.iter_attachments()] == ["7.pdf", "8.pdf"]

    (tmp_path / "attachments" / "invoices" / "8.pdf").unlink()
    with pytest.raises(DataSourceError, match=r"jobs\.statements row 1: attachment attachments\[0\] '.*8\.pdf'"):
        build(config)  # the whole run fails: no half merge


def test_unsafe_header_and_unsubscribe_values_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="'Subject' is set by postroom itself"):
        build(project(tmp_path, '    headers: {Subject: "x"}\n'))
    with pytest.raises(ConfigError, match="comes from the job's list_unsubscribe"):
        build(project(tmp_path, '    headers: {List-Unsubscribe: "<https://x>"}\n'))
    with pytest.raises(ConfigError, match="one_click needs a url starting https://"):
        build(project(tmp_path, '    list_unsubscribe: {url: "http://shop.example/u", one_click: true}\n'))
    # a row's value that would end the <...> early (or start a new header) never reaches the wire
    rows = [{**ROWS[0], "id": "7> <https://evil.example"}]
    with pytest.raises(MessageRefused, match=r"row 0: list_unsubscribe\.url is not a plain"):
        build(project(tmp_path, '    list_unsubscribe: {url: "https://shop.example/u/{{ row.id }}"}\n', rows))
    rows = [{**ROWS[0], "id": "7\r\nBcc: victim@example.test"}]
    with pytest.raises(MessageRefused, match="header X-Customer: contains a line break"):
        build(project(tmp_path, '    headers: {X-Customer: "{{ row.id }}"}\n', rows))


def test_statements_with_invoices_and_one_click_unsubscribe_through_postfix(tmp_path, clean_lab):
    config = project(tmp_path)
    alice = (
        "address: alice@example.test\n    smtp: {host: 127.0.0.1, port: 10025, security: starttls, "
        'username: alice@example.test, password: "${ALICE_PASSWORD}"}'
    )
    config.write_text(
        lab_config_text(
            clean_lab,
            config.read_text().replace(
                "address: billing@shop.example\n    smtp: {host: 127.0.0.1, port: 25, security: none}", alice
            ),
        )
    )
    env = postroom_env(clean_lab, tmp_path, POSTROOM_TEMPLATES=str(tmp_path / "templates"))
    done = run_cli(["send", "statements"], env)
    assert done.returncode == 0, done.stderr + done.stdout
    for user, row in (("bob", 7), ("carol", 8)):
        (raw,) = clean_lab.wait_for_messages(user, 1)
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert [(a.get_filename(), a.get_content()) for a in msg.iter_attachments()] == [
            (f"invoice-{row}.pdf", f"%PDF-1.4 invoice {row}".encode())
        ]
        assert msg["List-Unsubscribe"].startswith(f"<https://shop.example/u/{row}>")
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
