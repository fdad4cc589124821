"""MIME composition: rendered parts + headers → the message's wire bytes, refused when unsafe.

Pure, and the one MIME writer: ``compose_bytes(...)`` is exactly what is stored in the outbox
and sent — a job's message, an auto-reply, a forward with the original attached as
message/rfc822. CRLF line ends, folded headers, RFC 2047 encoded words for non-ASCII, 7-bit
throughout except an attached original that arrived with 8-bit bytes (carried as they are).
Every address and header value is checked first: CR/LF anywhere in a header, or several
addresses where one is expected, raise MessageRefused and the message never exists.
"""

from __future__ import annotations

import base64
import binascii
import csv
import email.policy
import email.utils
import io
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.header import Header
from functools import cached_property
from typing import Any, NamedTuple

from postroom.errors import MessageRefused

from .headers import header_name_problem, header_value_problem

__all__ = [
    "Attachment",
    "check_header_value",
    "compose_bytes",
    "crlf",
    "make_message_id",
    "rows_to_csv",
    "validate_address",
]

_FORBIDDEN_IN_HEADER = ("\r", "\n", "\0")
_DOMAIN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
_MESSAGE_ID = re.compile(r"^<[^<>\s@]+@[^<>\s@]+>$")
_CONTENT_TYPE = re.compile(r"^[A-Za-z0-9][\w!#$&^.+-]*/[A-Za-z0-9][\w!#$&^.+-]*$")
# A bare addr-spec of dot-atoms (RFC 5322 atext), which needs no parsing or quoting.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_ADDRESS = re.compile(rf"^{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*$")
_CRLF = b"\r\n"
_FOLD_AT = 78  # RFC 5322's recommended line length: fold (or encode) beyond it
_MAX_LINE = 998  # RFC 5322's hard limit, CRLF excluded


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: bytes
    content_type: str = "application/octet-stream"

    @cached_property
    def mime_part(self) -> _Part:
        """Checked and base64-encoded once: a merge attaches the same file to every message."""
        return _attachment_part(self)


def check_header_value(value: str, *, what: str) -> str:
    """``value`` unchanged, or MessageRefused when it could start a new header line."""
    if not isinstance(value, str):
        raise MessageRefused(f"{what}: expected text, got {type(value).__name__}")
    if any(bad in value for bad in _FORBIDDEN_IN_HEADER):
        raise MessageRefused(f"{what}: contains a line break or NUL (header injection?): {value!r}")
    return value


def validate_address(value: str, *, what: str) -> str:
    """Exactly one mailbox (``a@x.test`` or ``Name <a@x.test>``), returned normalised."""
    return _mailbox(value, what=what).text


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


def crlf(raw: bytes) -> bytes:
    """Every line ending as CRLF (bare LF and bare CR alike), ending with one."""
    text = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    return text if text.endswith(b"\r\n") else text + b"\r\n"


def compose_bytes(
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
    attached_message: bytes | None = None,
    extra_headers: Mapping[str, str] = {},
    auto_submitted: str = "auto-generated",
) -> bytes:
    """The wire bytes of the message to store and send: text/plain, or multipart/alternative
    (text + html), inside multipart/mixed when there are attachments or an attached message
    (``attached_message``: a whole message's bytes, attached byte for byte as message/rfc822
    after the text — line ends made CRLF — as a forward carries the original).

    Written directly rather than through email.message (whose header objects cost ~2 ms a
    message): CRLF line ends, headers folded at 78 columns where they have spaces, RFC 2047
    encoded words for non-ASCII header text, bodies 7bit when ASCII with short lines, else
    quoted-printable or base64 (whichever is shorter) — so no line exceeds 998 octets and the
    whole message is 7-bit."""
    if isinstance(to, str) or isinstance(cc, str):
        raise TypeError("compose: to and cc are sequences of addresses, not one string")
    if date.tzinfo is None or date.utcoffset() is None:
        raise ValueError("compose: date must be timezone-aware")
    recipients_to = [_mailbox(a, what="to") for a in to]
    recipients_cc = [_mailbox(a, what="cc") for a in cc]
    if not recipients_to and not recipients_cc:
        raise MessageRefused("message has no recipients")
    check_header_value(message_id, what="message-id")
    if not _MESSAGE_ID.match(message_id):
        raise MessageRefused(f"message-id is not <local@domain>: {message_id!r}")
    extras = _checked_extra_headers(extra_headers)
    from_ = _mailbox(sender, what="sender")
    reply = _mailbox(reply_to, what="reply-to") if reply_to is not None else None
    check_header_value(subject, what="subject")
    check_header_value(auto_submitted, what="auto-submitted")
    parts = [_Part.encoded(attachment) for attachment in attachments]  # checks before any work
    if attached_message is not None:
        parts.insert(0, _message_part(attached_message))

    head = [_address_header("From", [from_])]
    if recipients_to:
        head.append(_address_header("To", recipients_to))
    if recipients_cc:
        head.append(_address_header("Cc", recipients_cc))
    if reply is not None:
        head.append(_address_header("Reply-To", [reply]))
    head.append(_text_header("Subject", subject))
    head.append(b"Date: " + email.utils.format_datetime(date).encode("ascii"))
    head.append(b"Message-ID: " + message_id.encode("ascii"))
    head.append(b"MIME-Version: 1.0")
    head.append(_text_header("Auto-Submitted", auto_submitted))
    head.extend(_text_header(name, value) for name, value in extras)

    body = _text_part("plain", text)
    if html is not None:
        body = _multipart("alternative", [body, _text_part("html", html)])
    if parts:
        body = _multipart("mixed", [body, *parts])
    return _CRLF.join(head) + _CRLF + body.head + _CRLF + _CRLF + body.body


class _Mailbox(NamedTuple):
    display_name: str
    addr_spec: str
    text: str  # normalised, as validate_address returns it


@dataclass(frozen=True)
class _Part:
    """One MIME entity: its header block (no trailing CRLF) and its body (ending in CRLF)."""

    head: bytes
    body: bytes

    @staticmethod
    def encoded(attachment: Attachment) -> _Part:
        return attachment.mime_part


def _mailbox(value: str, *, what: str) -> _Mailbox:
    check_header_value(value, what=what)
    if _SIMPLE_ADDRESS.match(value):
        # The common case, a bare dot-atom addr-spec: the stdlib parser (≈0.25 ms) would
        # accept it and return it unchanged.
        return _Mailbox("", value, value)
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
    return _Mailbox(address.display_name, address.addr_spec, str(address))


def _address_header(name: str, mailboxes: Sequence[_Mailbox]) -> bytes:
    """``Name: a, b`` folded between addresses; non-ASCII display names as encoded words."""
    tokens = []
    for box in mailboxes:
        if not box.display_name:
            tokens.append(box.addr_spec.encode("utf-8"))
        elif box.addr_spec.isascii():
            pair = email.utils.formataddr((box.display_name, box.addr_spec), charset="utf-8")
            tokens.append(pair.replace("\n", "\r\n").encode("ascii"))
        else:  # an SMTPUTF8 address: sent as UTF-8, like its envelope
            tokens.append(box.text.encode("utf-8"))
    out = name.encode("ascii") + b": " + tokens[0]
    line = len(out) - out.rfind(b"\n") - 1
    for token in tokens[1:]:
        first = token.split(b"\r\n", 1)[0]
        if line + 2 + len(first) > _FOLD_AT:
            out += b",\r\n " + token
            line = 1 + len(token)
        else:
            out += b", " + token
            line += 2 + len(token)
        if b"\r\n" in token:
            line = len(token) - token.rfind(b"\n") - 1
    if any(len(piece) > _MAX_LINE for piece in out.split(b"\r\n")):
        raise MessageRefused(f"{name}: an address (or its display name) is too long for one line")
    return out


def _text_header(name: str, value: str) -> bytes:
    """An unstructured header: as is when short ASCII, folded at spaces when long, else
    RFC 2047 encoded words (also for ASCII that looks like one, so it reads back the same)."""
    if value.isascii() and "=?" not in value:
        line = f"{name}: {value}"
        if len(line) <= _FOLD_AT:
            return line.encode("ascii")
        folded = _fold_at_spaces(name, value)
        if all(len(piece) <= _MAX_LINE for piece in folded):
            return "\r\n".join(folded).encode("ascii")
    encoded = Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
    return f"{name}: {encoded}".encode("ascii")


def _fold_at_spaces(name: str, value: str) -> list[str]:
    """Lines of ``name: value`` broken before spaces; unfolding (dropping CRLF) restores it."""
    lines: list[str] = []
    current = f"{name}:"
    has_text = False  # never leave a line of only whitespace
    for word in value.split(" "):
        if word and has_text and len(current) + 1 + len(word) > _FOLD_AT:
            lines.append(current)
            current, has_text = " " + word, True
        else:
            current += " " + word
            has_text = has_text or bool(word)
    lines.append(current)
    return lines


def _text_part(subtype: str, text: str) -> _Part:
    data = _normal_newlines(text).encode("utf-8")
    if not data.endswith(b"\n"):
        data += b"\n"
    head = b"Content-Type: text/" + subtype.encode("ascii") + b'; charset="utf-8"\r\n'
    if data.isascii() and max(map(len, data.split(b"\n"))) <= _FOLD_AT:
        return _Part(head + b"Content-Transfer-Encoding: 7bit", data.replace(b"\n", b"\r\n"))
    quoted = binascii.b2a_qp(data, istext=True).replace(b"\n", b"\r\n")
    canonical = data.replace(b"\n", b"\r\n")  # text in base64 carries CRLF line ends (RFC 2045)
    if len(quoted) <= (len(canonical) + 2) // 3 * 4 * 78 // 76:
        return _Part(head + b"Content-Transfer-Encoding: quoted-printable", quoted)
    return _Part(head + b"Content-Transfer-Encoding: base64", _base64(canonical))


def _base64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def _multipart(subtype: str, parts: Sequence[_Part]) -> _Part:
    boundary = b"=_" + secrets.token_hex(16).encode("ascii")
    while any(boundary in p.body or boundary in p.head for p in parts):  # vanishingly rare
        boundary = b"=_" + secrets.token_hex(16).encode("ascii")
    delimiter = b"--" + boundary
    body = [delimiter + b"\r\n" + parts[0].head + b"\r\n\r\n" + parts[0].body]
    body.extend(b"\r\n" + delimiter + b"\r\n" + p.head + b"\r\n\r\n" + p.body for p in parts[1:])
    body.append(b"\r\n" + delimiter + b"--\r\n")
    head = b"Content-Type: multipart/" + subtype.encode("ascii") + b';\r\n boundary="' + boundary + b'"'
    return _Part(head, b"".join(body))


def _attachment_part(attachment: Attachment) -> _Part:
    filename = check_header_value(attachment.filename, what="attachment filename")
    if not filename or "/" in filename or "\\" in filename:
        raise MessageRefused(f"attachment filename must be a plain file name: {filename!r}")
    if not _CONTENT_TYPE.match(attachment.content_type):
        raise MessageRefused(f"attachment {filename!r}: not a content type: {attachment.content_type!r}")
    if not isinstance(attachment.content, bytes | bytearray):
        raise TypeError(f"attachment {filename!r}: content must be bytes")
    content_type = attachment.content_type.lower()
    maintype = content_type.split("/", 1)[0]
    if maintype in ("multipart", "message"):
        raise MessageRefused(f"attachment {filename!r}: {maintype}/* can't be attached as bytes")
    if filename.isascii():
        parameter = f'filename="{email.utils.quote(filename)}"'
    else:
        parameter = "filename*=" + email.utils.encode_rfc2231(filename, "utf-8")
    if len(parameter) > _MAX_LINE - 1:
        raise MessageRefused(f"attachment filename is too long: {filename[:40]!r}…")
    disposition = f"Content-Disposition: attachment; {parameter}"
    if len(disposition) > _FOLD_AT:
        disposition = f"Content-Disposition: attachment;\r\n {parameter}"
    head = f"Content-Type: {content_type}\r\nContent-Transfer-Encoding: base64\r\n{disposition}"
    return _Part(head.encode("ascii"), _base64(bytes(attachment.content)))


def _message_part(raw: bytes) -> _Part:
    """A whole message as message/rfc822, its bytes unchanged but for CRLF line ends: the
    email package would re-serialise it (and cannot carry 8-bit bytes through a nested
    generator). RFC 2046 5.2.1 allows 7bit or 8bit here, never an encoding."""
    original = crlf(raw)
    encoding = b"7bit" if original.isascii() else b"8bit"
    head = (
        b"Content-Type: message/rfc822\r\n"
        b'Content-Disposition: attachment; filename="forwarded-message.eml"\r\n'
        b"Content-Transfer-Encoding: " + encoding
    )
    return _Part(head, original)


def _normal_newlines(body: str) -> str:
    # A stray CR in a body would end up as a bare CR on the wire (RFC 5322 forbids it).
    return body.replace("\r\n", "\n").replace("\r", "\n")


def _checked_extra_headers(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    checked = []
    for name, value in headers.items():
        problem = header_name_problem(name)
        if problem is not None:
            raise MessageRefused(f"extra header: {problem}")
        checked.append((name, check_header_value(value, what=f"header {name}")))
        if (control := header_value_problem(value)) is not None:  # after a row's data is in it
            raise MessageRefused(f"header {name}: {control}")
    return checked
