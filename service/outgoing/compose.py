"""MIME composition: rendered parts + headers → one EmailMessage, refused when unsafe.

Pure. ``compose(...).as_bytes()`` (policy SMTP: CRLF line ends, folded headers, RFC 2047
encoded words for non-ASCII) is exactly what is stored in the outbox and sent.
Every address and header value is checked first: CR/LF anywhere in a header, or several
addresses where one is expected, raise MessageRefused and the message never exists.
"""

from __future__ import annotations

import csv
import email.policy
import email.utils
import io
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from typing import Any

from service.errors import MessageRefused

__all__ = [
    "Attachment",
    "check_header_value",
    "compose",
    "make_message_id",
    "rows_to_csv",
    "validate_address",
]

# Headers compose() sets itself; extra_headers may not replace (or smuggle in) these.
_OWN_HEADERS = frozenset(
    {"from", "to", "cc", "bcc", "reply-to", "subject", "date", "message-id", "mime-version",
     "auto-submitted", "content-type", "content-transfer-encoding", "content-disposition", "sender"}
)
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 ftext: printable ASCII except ':'
_FORBIDDEN_IN_HEADER = ("\r", "\n", "\0")
_DOMAIN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
_MESSAGE_ID = re.compile(r"^<[^<>\s@]+@[^<>\s@]+>$")
_CONTENT_TYPE = re.compile(r"^[A-Za-z0-9][\w!#$&^.+-]*/[A-Za-z0-9][\w!#$&^.+-]*$")


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: bytes
    content_type: str = "application/octet-stream"


def check_header_value(value: str, *, what: str) -> str:
    """``value`` unchanged, or MessageRefused when it could start a new header line."""
    if not isinstance(value, str):
        raise MessageRefused(f"{what}: expected text, got {type(value).__name__}")
    if any(bad in value for bad in _FORBIDDEN_IN_HEADER):
        raise MessageRefused(f"{what}: contains a line break or NUL (header injection?): {value!r}")
    return value


def validate_address(value: str, *, what: str) -> str:
    """Exactly one mailbox (``a@x.test`` or ``Name <a@x.test>``), returned normalised."""
    check_header_value(value, what=what)
    try:
        header = email.policy.SMTP.header_factory("to", value)
        addresses, groups, defects = header.addresses, header.groups, header.defects
    except Exception as exc:  # the stdlib parser raises assorted errors on garbage
        raise MessageRefused(f"{what}: not an email address: {value!r}") from exc
    if len(addresses) != 1:
        raise MessageRefused(f"{what}: expected exactly one address, got {len(addresses)}: {value!r}")
    address = addresses[0]
    if defects or groups[0].display_name is not None or not address.username or not address.domain:
        raise MessageRefused(f"{what}: not a valid email address: {value!r}")
    return str(address)


def make_message_id(domain: str) -> str:
    """A fresh ``<random@domain>``; generate once per message and keep it for every retry."""
    if not _DOMAIN.match(domain):
        raise MessageRefused(f"message-id domain is not a host name: {domain!r}")
    return f"<{secrets.token_hex(16)}@{domain}>"


def rows_to_csv(rows: Sequence[Mapping[str, Any]] | Sequence[Sequence[Any]]) -> bytes:
    """UTF-8 CSV (CRLF line ends, RFC 4180); mapping rows get a header row from their keys."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    if rows and isinstance(rows[0], Mapping):
        columns: dict[str, None] = {}
        for row in rows:
            if not isinstance(row, Mapping):
                raise TypeError("rows_to_csv: rows mix mappings and sequences")
            columns.update(dict.fromkeys(row))
        writer.writerow(columns)
        for row in rows:
            writer.writerow(_cell(row.get(key)) for key in columns)  # type: ignore[union-attr]
    else:
        for row in rows:
            if isinstance(row, Mapping | str | bytes):
                raise TypeError("rows_to_csv: each row must be a sequence of values")
            writer.writerow(_cell(value) for value in row)
    return buffer.getvalue().encode("utf-8")


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def compose(
    *,
    sender: str,
    to: Sequence[str],
    subject: str,
    text: str,
    html: str | None = None,
    cc: Sequence[str] = (),
    reply_to: str | None = None,
    message_id: str,
    date: datetime,
    attachments: Sequence[Attachment] = (),
    extra_headers: Mapping[str, str] = {},  # noqa: B006 - read only
    auto_submitted: str = "auto-generated",
) -> EmailMessage:
    """The message to store and send: text/plain, or multipart/alternative (text + html),
    inside multipart/mixed when there are attachments."""
    if isinstance(to, str) or isinstance(cc, str):
        raise TypeError("compose: to and cc are sequences of addresses, not one string")
    if date.tzinfo is None or date.utcoffset() is None:
        raise ValueError("compose: date must be timezone-aware")
    recipients_to = [validate_address(a, what="to") for a in to]
    recipients_cc = [validate_address(a, what="cc") for a in cc]
    if not recipients_to and not recipients_cc:
        raise MessageRefused("message has no recipients")
    check_header_value(message_id, what="message-id")
    if not _MESSAGE_ID.match(message_id):
        raise MessageRefused(f"message-id is not <local@domain>: {message_id!r}")
    extras = _checked_extra_headers(extra_headers)

    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = validate_address(sender, what="sender")
    if recipients_to:
        msg["To"] = ", ".join(recipients_to)
    if recipients_cc:
        msg["Cc"] = ", ".join(recipients_cc)
    if reply_to is not None:
        msg["Reply-To"] = validate_address(reply_to, what="reply-to")
    msg["Subject"] = check_header_value(subject, what="subject")
    msg["Date"] = email.utils.format_datetime(date)
    msg["Message-ID"] = message_id
    msg["MIME-Version"] = "1.0"
    msg["Auto-Submitted"] = check_header_value(auto_submitted, what="auto-submitted")
    for name, value in extras:
        msg[name] = value

    msg.set_content(_normal_newlines(text), subtype="plain", charset="utf-8")
    if html is not None:
        msg.add_alternative(_normal_newlines(html), subtype="html", charset="utf-8")
    for attachment in attachments:
        _attach(msg, attachment)
    return msg


def _normal_newlines(body: str) -> str:
    # A stray CR in a body would end up as a bare CR on the wire (RFC 5322 forbids it).
    return body.replace("\r\n", "\n").replace("\r", "\n")


def _checked_extra_headers(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    checked = []
    for name, value in headers.items():
        if not _HEADER_NAME.match(name):
            raise MessageRefused(f"extra header name is not valid: {name!r}")
        if name.lower() in _OWN_HEADERS:
            raise MessageRefused(f"extra header {name!r} would replace one compose sets itself")
        checked.append((name, check_header_value(value, what=f"header {name}")))
    return checked


def _attach(msg: EmailMessage, attachment: Attachment) -> None:
    filename = check_header_value(attachment.filename, what="attachment filename")
    if not filename or "/" in filename or "\\" in filename:
        raise MessageRefused(f"attachment filename must be a plain file name: {filename!r}")
    if not _CONTENT_TYPE.match(attachment.content_type):
        raise MessageRefused(f"attachment {filename!r}: not a content type: {attachment.content_type!r}")
    if not isinstance(attachment.content, bytes | bytearray):
        raise TypeError(f"attachment {filename!r}: content must be bytes")
    maintype, subtype = attachment.content_type.lower().split("/", 1)
    if maintype in ("multipart", "message"):
        raise MessageRefused(f"attachment {filename!r}: {maintype}/* can't be attached as bytes")
    msg.add_attachment(bytes(attachment.content), maintype=maintype, subtype=subtype, filename=filename)
