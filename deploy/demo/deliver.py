"""Deliver the demo's four incoming messages into the lab (LMTP, as Postfix would)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

from tests.lab.__main__ import _running_lab


def message(sender: str, to: str, subject: str, body: str, **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2].rstrip(">"))
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg


def main(root: Path) -> None:
    lab = _running_lab(root)
    report = message("Reports <reports@example.test>", "alice@example.test", "[report] nightly build", "All green.")
    invoice = message(
        "Billing <billing@vendor.test>", "alice@example.test", "Invoice 2026-117", "Please find attached."
    )
    invoice.add_attachment(
        b"%PDF-1.4\n% demo invoice\n", maintype="application", subtype="pdf", filename="invoice-2026-117.pdf"
    )
    alert = message(
        "Monitor <monitor@example.test>", "bob@example.test", "disk almost full", "95% on /var", X_Alert="critical"
    )
    note = message("Dave <dave@example.test>", "carol@example.test", "lunch on friday?", "Are you around?")
    lab.deliver("alice", report.as_bytes())
    lab.deliver("alice", invoice.as_bytes())
    lab.deliver("bob", alert.as_bytes())
    lab.deliver("carol", note.as_bytes())
    print("delivered: alice ← [report], alice ← vendor invoice (PDF), bob ← X-Alert: critical, carol ← dave's note")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
