"""MIME composition: structure, headers, refusals; everything checked by parsing the bytes back."""

from __future__ import annotations

import csv
import email
import email.policy
import io
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from email.message import EmailMessage
from typing import Any

import pytest
from postroom.errors import MessageRefused
from postroom.mail.compose import (
    Attachment,
    check_header_value,
    compose_bytes,
    make_message_id,
    rows_to_csv,
    validate_address,
)

DATE = datetime(2026, 1, 5, 8, 30, 0, tzinfo=timezone(timedelta(hours=1)))
MSG_ID = "<0123abcd@example.test>"


def build(**overrides: Any) -> EmailMessage:
    args: dict[str, Any] = {
        "sender": "Alice <alice@example.test>",
        "to": ["bob@example.test"],
        "subject": "Orders",
        "text": "Hello\n",
        "message_id": MSG_ID,
        "date": DATE,
    }
    args.update(overrides)
    msg = email.message_from_bytes(compose_bytes(**args), policy=email.policy.SMTP)
    assert isinstance(msg, EmailMessage)
    return msg


def parse(msg: EmailMessage) -> EmailMessage:
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def content(part: Any) -> str:
    """Decoded text of a part; the wire uses CRLF, the caller passed LF."""
    return part.get_content().replace("\r\n", "\n")


def test_plain_text_only() -> None:
    parsed = parse(build())
    assert parsed.get_content_type() == "text/plain"
    assert content(parsed) == "Hello\n"
    assert parsed["From"] == "Alice <alice@example.test>"
    assert parsed["To"] == "bob@example.test"
    assert parsed["MIME-Version"] == "1.0"
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed["Date"] == "Mon, 05 Jan 2026 08:30:00 +0100"
    assert parsed["Cc"] is None and parsed["Reply-To"] is None


def test_alternative_inside_mixed_with_csv_attachment() -> None:
    rows = [{"id": 1, "customer": "Acme, Inc.", "total": Decimal("12.50")}, {"id": 2, "customer": "Bö", "total": None}]
    msg = build(
        html="<p>Hello</p>",
        cc=["Carol <carol@example.test>"],
        reply_to="support@example.test",
        attachments=[Attachment("orders.csv", rows_to_csv(rows), "text/csv")],
    )
    raw = msg.as_bytes()
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    parsed = parse(msg)
    assert parsed.get_content_type() == "multipart/mixed"
    alternative, attachment = parsed.get_payload()
    assert alternative.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in alternative.get_payload()] == ["text/plain", "text/html"]
    assert content(alternative.get_payload()[1]) == "<p>Hello</p>\n"
    assert attachment.get_content_type() == "text/csv"
    assert attachment.get_filename() == "orders.csv"
    assert attachment.get_content_disposition() == "attachment"
    table = list(csv.reader(io.StringIO(attachment.get_payload(decode=True).decode("utf-8"))))
    assert table == [["id", "customer", "total"], ["1", "Acme, Inc.", "12.50"], ["2", "Bö", ""]]
    assert parsed["Cc"] == "Carol <carol@example.test>"
    assert parsed["Reply-To"] == "support@example.test"


def test_message_id_kept_as_given_and_generated_ids_are_unique() -> None:
    assert parse(build())["Message-ID"] == MSG_ID
    first, second = make_message_id("example.test"), make_message_id("example.test")
    assert first != second
    assert first.startswith("<") and first.endswith("@example.test>")
    assert parse(build(message_id=first))["Message-ID"] == first
    with pytest.raises(MessageRefused):
        build(message_id="no-angle-brackets@example.test")
    with pytest.raises(MessageRefused):
        make_message_id("bad domain\r\n")


def test_non_ascii_subject_and_names_round_trip() -> None:
    subject = "Grüße aus Köln — 日本語 " + "long " * 30
    msg = build(subject=subject.strip(), sender="Zoë Ünal <zoe@example.test>")
    raw = msg.as_bytes()
    raw.decode("ascii")  # headers encoded, body transfer-encoded: the wire is 7-bit
    parsed = parse(msg)
    assert parsed["Subject"] == subject.strip()
    assert parsed["From"].addresses[0].display_name == "Zoë Ünal"


def test_long_lines_and_non_ascii_body_survive() -> None:
    text = "ü" + "x" * 5000 + "\nline two\r\nline three\n"
    msg = build(text=text, html="<p>" + "y" * 5000 + "</p>")
    raw = msg.as_bytes()
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    parsed = parse(msg)
    plain, html = parsed.get_payload()
    assert content(plain) == "ü" + "x" * 5000 + "\nline two\nline three\n"
    assert content(html).startswith("<p>" + "y" * 5000)


@pytest.mark.parametrize(
    "overrides",
    [
        {"subject": "Hello\r\nBcc: victim@example.test"},
        {"subject": "two\nlines"},
        {"to": ["bob@example.test\r\nBcc: victim@example.test"]},
        {"sender": "alice@example.test\n"},
        {"extra_headers": {"X-Job": "a\r\nBcc: victim@example.test"}},
        {"extra_headers": {"X-Bad Name": "v"}},
        {"extra_headers": {"Bcc": "victim@example.test"}},
        {"auto_submitted": "auto-generated\r\nX: y"},
        {"attachments": [Attachment("a\r\n.csv", b"x")]},
        {"reply_to": "a@example.test\rb"},
    ],
)
def test_header_injection_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(MessageRefused):
        build(**overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        {"to": ["a@x.test, b@y.test"]},
        {"to": ["bob@example.test"], "cc": ["a@x.test; b@y.test"]},
        {"sender": "alice@example.test, mallory@example.test"},
        {"reply_to": "a@x.test, b@y.test"},
        {"to": ["group: a@x.test;"]},
        {"to": ["not an address"]},
        {"to": ["bob@"]},
        {"to": []},
    ],
)
def test_invalid_or_multiple_addresses_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(MessageRefused):
        build(**overrides)


def test_validate_address_and_check_header_value() -> None:
    assert validate_address("  Bob  <bob@example.test>", what="to") == "Bob <bob@example.test>"
    assert validate_address("bob@example.test", what="to") == "bob@example.test"
    with pytest.raises(MessageRefused, match="to"):
        validate_address("a@x.test,b@x.test", what="to")
    assert check_header_value("fine", what="x") == "fine"
    with pytest.raises(MessageRefused, match="X-Thing"):
        check_header_value("bad\nvalue", what="X-Thing")


def test_extra_headers_and_auto_submitted_value() -> None:
    parsed = parse(
        build(extra_headers={"In-Reply-To": "<a@b.test>", "X-Postroom-Job": "orders"}, auto_submitted="auto-replied")
    )
    assert parsed["In-Reply-To"] == "<a@b.test>"
    assert parsed["X-Postroom-Job"] == "orders"
    assert parsed["Auto-Submitted"] == "auto-replied"


def test_naive_date_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        build(date=datetime(2026, 1, 1))


def test_rows_to_csv_shapes() -> None:
    assert rows_to_csv([]) == b""
    assert rows_to_csv([[1, "a"], (2, None)]) == b"1,a\r\n2,\r\n"
    assert rows_to_csv([{"a": 1}, {"b": 2}]) == b"a,b\r\n1,\r\n,2\r\n"


def test_compose_bytes_is_what_compose_serialises() -> None:
    raw = compose_bytes(
        sender="alice@example.test",
        to=["bob@example.test"],
        subject="Hi",
        text="Hello\n",
        html="<p>Hello</p>",
        message_id=MSG_ID,
        date=DATE,
    )
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/alternative"
    boundary = parsed.get_boundary()
    assert boundary is not None
    again = build(html="<p>Hello</p>", subject="Hi", sender="alice@example.test").as_bytes()
    other = email.message_from_bytes(again, policy=email.policy.default).get_boundary()
    assert again.replace(str(other).encode(), boundary.encode()) == raw


def test_long_ascii_subject_is_folded_and_non_ascii_body_is_7bit() -> None:
    subject = " ".join(f"word{i}" for i in range(60))
    raw = build(subject=subject, text="Grüße\n" * 3).as_bytes()
    raw.decode("ascii")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78
    parsed = parse(build(subject=subject, text="Grüße\n" * 3))
    assert parsed["Subject"] == subject
    assert content(parsed) == "Grüße\n" * 3


def test_static_attachment_is_encoded_once_and_reused() -> None:
    attachment = Attachment("r.csv", b"a,b\r\n1,2\r\n", "text/csv")
    first = build(attachments=[attachment]).as_bytes()
    assert attachment.mime_part is attachment.mime_part
    second = build(attachments=[attachment]).as_bytes()
    part = attachment.mime_part.head + b"\r\n\r\n" + attachment.mime_part.body
    assert part in first and part in second


def test_address_too_long_for_a_line_is_refused() -> None:
    with pytest.raises(MessageRefused, match="too long"):
        build(to=[f"{'Ü' * 400} <bob@example.test>"])


ORIGINAL = (
    b"From: Carol <carol@example.test>\nTo: bob@example.test\nSubject: =?utf-8?q?caf=C3=A9?=\n"
    b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\nCaf\xc3\xa9 au lait\r\nbye\n"
)


def test_an_attached_message_is_carried_byte_for_byte_as_message_rfc822() -> None:
    raw = compose_bytes(
        sender="alice@example.test",
        to=["bob@example.test"],
        subject="Fwd: café",
        text="Attached.\n",
        message_id=MSG_ID,
        date=DATE,
        attached_message=ORIGINAL,
    )
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/mixed"
    text, attached = msg.get_payload()
    assert text.get_content_type() == "text/plain" and content(text) == "Attached.\n"
    assert attached.get_content_type() == "message/rfc822"
    assert attached["Content-Transfer-Encoding"] == "8bit" and attached.get_filename() == "forwarded-message.eml"
    carried = ORIGINAL.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert b"\r\n\r\n" + carried in raw  # the original's bytes, only its line ends made CRLF
    assert all(line.endswith(b"\r") or not line for line in raw.split(b"\n")[:-1])


def test_an_ascii_attached_message_is_7bit_before_the_other_attachments() -> None:
    original = b"From: carol@example.test\r\nSubject: hi\r\n\r\nhello\r\n"
    msg = build(attached_message=original, attachments=[Attachment("a.csv", b"x,y\r\n", "text/csv")])
    kinds = [part.get_content_type() for part in msg.get_payload()]
    assert kinds == ["text/plain", "message/rfc822", "text/csv"]
    assert msg.get_payload()[1]["Content-Transfer-Encoding"] == "7bit"
