"""Webhook ``include``: the text, the HTML and the attachments (base64, with filename, type
and size) of a message read from the lab's Dovecot, as the receiver gets them through the real
delivery queue; over ``max_bytes``, what does not fit is left out and listed instead."""

from __future__ import annotations

import base64
import json
from email.message import EmailMessage
from typing import Any

from postroom.incoming.actions import webhook_content
from postroom.store import Store
from postroom.store.ledger import LedgerStore
from postroom.webhooks.delivery import WebhookQueue

from tests.support.action_rig import make_config, make_rig
from tests.support.webhook_receiver import WebhookReceiver
from tests.test_actions import LabMailbox, items_from_server

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40  # binary: base64 must carry every byte
HTML = "<p>Invoice <b>7</b> is attached.</p>"


def invoice() -> bytes:
    msg = EmailMessage()
    msg["From"] = "Dora <dora@elsewhere.test>"
    msg["To"] = "alice@example.test"
    msg["Subject"] = "invoice 7"
    msg["Message-ID"] = "<inv7@elsewhere.test>"
    msg.set_content("Invoice 7 is attached.\n")
    msg.add_alternative(HTML, subtype="html")
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="invoice-7.pdf")
    return msg.as_bytes()


def hook(name: str, url: str, **spec: Any) -> dict[str, Any]:
    return {"name": name, "account": "alice", "actions": [{"webhook": {"url": url, **spec}}]}


async def test_text_html_and_attachment_reach_the_receiver_and_a_cap_leaves_a_marker(store: Store, lab):
    lab.clear_mailbox("alice")
    lab.deliver("alice", invoice())
    with WebhookReceiver() as receiver:
        rig = make_rig(
            store,
            make_config(
                lab,
                [
                    hook("full", receiver.url + "/full", include=["text", "html", "attachments"]),
                    hook("capped", receiver.url + "/capped", include=["text", "html", "attachments"], max_bytes="1k"),
                    hook("plain", receiver.url + "/plain"),
                ],
            ),
        )
        queue = WebhookQueue(
            LedgerStore(store.engine, owner="test", calls=store.calls),
            spec_lookup=rig.rules.action_config,
            clock=rig.clock,
        )
        rig.executor.webhooks = queue
        with lab.imap_client("alice") as client:
            box = LabMailbox(client, "alice", "INBOX")
            items = items_from_server(rig, box)  # headers only: the executor fetches the bytes
            [outcome] = (await rig.executor.handle_batch("alice", "INBOX", box, items)).values()
        assert outcome.done, outcome.error
        assert await queue.deliver_due() == 3
        got = {r.path: json.loads(r.body) for r in receiver.received}

    full = got["/full"]["content"]
    assert full["text"] == "Invoice 7 is attached.\n"
    assert full["html"].strip() == HTML
    [pdf] = full["attachments"]
    assert (pdf["filename"], pdf["content_type"], pdf["size"]) == ("invoice-7.pdf", "application/pdf", len(PDF))
    assert base64.b64decode(pdf["content_base64"]) == PDF
    assert full["truncated"] is False and "omitted" not in full

    capped = got["/capped"]["content"]
    assert capped["truncated"] is True and capped["max_bytes"] == 1024
    assert capped["text"] == "Invoice 7 is attached.\n"  # what fits is still there
    assert capped["attachments"] == []
    assert {
        "part": "attachment",
        "filename": "invoice-7.pdf",
        "content_type": "application/pdf",
        "size": len(PDF),
    } in capped["omitted"]

    assert "content" not in got["/plain"]  # without include the payload is what it was


def test_raw_is_base64_of_the_bytes_and_counts_against_the_cap():
    raw = invoice()
    content = webhook_content(raw, ["raw"], 10 * len(raw))
    assert base64.b64decode(content["raw_base64"]) == raw and content["truncated"] is False
    capped = webhook_content(raw, ["text", "raw"], 200)
    assert "raw_base64" not in capped and capped["text"] and capped["truncated"] is True
    assert capped["omitted"] == [{"part": "raw", "size": len(raw)}]
