"""The parsed view of an incoming message that rules and reply templates see.

Built from a whole raw message (``from_bytes``) or from header bytes plus what IMAP says about
the rest (``from_headers``: size, internal date, flags, attachments computed from
BODYSTRUCTURE). Parsing never raises: mail is hostile and often broken, so a header that
can't be read becomes empty, a bad charset falls back to a lossy decode, an unparsable date
becomes None. Messages are parsed by mail/parse.py (one policy, compat32: about 4x faster than
``email.policy.default`` on whole folders) and headers decoded on demand.

MIME nesting is bounded: a message whose multiparts nest deeper than MAX_MIME_DEPTH (found by
a linear scan, ``mime_depth``, before any recursive parse) is read as headers only, said in
one warning and in ``mime_too_deep``; 1,000 levels are an expected hostile input, not a
RecursionError in the log.
"""

from __future__ import annotations

import email.header
import email.utils
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from typing import Any, Generic, NamedTuple, TypeVar, overload

import structlog

from postroom.mail.parse import POLICY, decode_header_value, empty_message, parse_headers, parse_message, part_text
from postroom.mail.text import html_to_text

log = structlog.get_logger(__name__)

MAX_MIME_DEPTH = 50  # multipart levels read; mail clients nest a handful, the parser recurses
_BOUNDARY = re.compile(rb'boundary[ \t]*=[ \t]*"?([^";\s]{1,200})', re.IGNORECASE)


def mime_depth(raw: bytes, limit: int = MAX_MIME_DEPTH) -> int:
    """How deep multiparts nest in ``raw``, by one pass over its lines: each ``boundary=``
    opens a level, its closing ``--boundary--`` ends it (and any left open inside). Stops
    counting past ``limit``. A ``boundary=`` in plain text counts too: over, never under."""
    open_: list[bytes] = []
    deepest = 0
    for line in raw.split(b"\n"):
        if open_ and line.startswith(b"--"):
            closing = line.rstrip(b"\r \t")
            if closing.endswith(b"--") and closing[2:-2] in open_:
                del open_[open_.index(closing[2:-2]) :]
                continue
        if b"oundary" in line or b"OUNDARY" in line:
            for found in _BOUNDARY.finditer(line):
                open_.append(found.group(1))
                deepest = max(deepest, len(open_))
                if deepest > limit:
                    return deepest
    return deepest


def _too_deep(raw: bytes, key: str | None) -> bool:
    depth = mime_depth(raw)
    if depth <= MAX_MIME_DEPTH:
        return False
    log.warning("message MIME nesting too deep: read as headers only", key=key, limit=MAX_MIME_DEPTH)
    return True


class Address(NamedTuple):
    name: str  # decoded display name, "" when none
    addr: str  # addr-spec as written, "" when the header held only a name

    @property
    def display(self) -> str:
        """``Name <addr>`` (or just the one that is present), for matching and showing."""
        if self.name and self.addr:
            return f"{self.name} <{self.addr}>"
        return self.name or self.addr


class Attachment(NamedTuple):
    filename: str | None
    content_type: str  # lower case, e.g. "application/pdf"
    size: int  # decoded bytes when parsed from the message; BODYSTRUCTURE's octets otherwise


def _is_attachment(part: Message) -> bool:
    disposition = (part.get_content_disposition() or "").lower()
    if disposition == "attachment":
        return True
    return bool(_filename(part)) and part.get_content_maintype() not in ("text", "multipart")


def _filename(part: Message) -> str | None:
    try:
        name = part.get_filename()
    except Exception:
        return None
    return decode_header_value(name) if name else None


def _walk(part: Message, attachments: list[Message], texts: list[Message], htmls: list[Message]) -> None:
    """Collect attachments and inline text parts; attachments and embedded messages are leaves."""
    if _is_attachment(part):
        attachments.append(part)
        return
    content_type = part.get_content_type().lower()
    if part.is_multipart():
        if content_type == "message/rfc822":
            return  # a forwarded message's own parts are not ours
        payload = part.get_payload()
        for child in payload if isinstance(payload, list) else []:
            if isinstance(child, Message):
                _walk(child, attachments, texts, htmls)
    elif content_type == "text/plain":
        texts.append(part)
    elif content_type == "text/html":
        htmls.append(part)


def _payload(part: Message) -> bytes:
    """An attachment's decoded bytes (its text as UTF-8 when it can't be decoded)."""
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    return payload if isinstance(payload, bytes) else str(part.get_payload()).encode("utf-8", "replace")


def _attachment(part: Message) -> Attachment:
    return Attachment(_filename(part), part.get_content_type().lower(), len(_payload(part)))


class MessageParts(NamedTuple):
    text: str | None  # the inline text/plain parts, joined; None when there are none
    html: str | None
    attachments: list[tuple[str, str, bytes]]  # (filename or "", content type, decoded bytes)


def message_parts(raw: bytes) -> MessageParts:
    """What a webhook can carry of a message: its text, its HTML and its attachments. Never
    raises: an unreadable message has no parts."""
    attachments: list[Message] = []
    texts: list[Message] = []
    htmls: list[Message] = []
    if _too_deep(raw, None):
        return MessageParts(None, None, [])
    try:
        _walk(parse_message(raw), attachments, texts, htmls)
        return MessageParts(
            "\n".join(part_text(p) for p in texts).replace("\r\n", "\n") if texts else None,
            "\n".join(part_text(p) for p in htmls).replace("\r\n", "\n") if htmls else None,
            [(_filename(p) or "", p.get_content_type().lower(), _payload(p)) for p in attachments],
        )
    except Exception as exc:
        log.warning("message parts unreadable", error=repr(exc))
        return MessageParts(None, None, [])


def _parse_date(value: str) -> datetime | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None  # since Python 3.10 an unparsable date raises instead of returning None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)  # "-0000": zone unknown


_ADDR = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+"
_BARE_ADDRESS = re.compile(rf"\s*({_ADDR})\s*\Z")
_NAMED_ADDRESS = re.compile(rf"\s*([A-Za-z0-9'-]+(?: [A-Za-z0-9'-]+)*) <({_ADDR})>\s*\Z")


def _simple_address(value: str) -> tuple[str, str] | None:
    """(name, addr) of the two everyday shapes, ``a@b`` and ``Plain Name <a@b>``, exactly as
    ``email.utils.getaddresses`` reads them but without its full RFC 5322 parse (the hot path
    of address rules over a folder); None for anything else."""
    match = _BARE_ADDRESS.match(value)
    if match:
        return "", match.group(1)
    match = _NAMED_ADDRESS.match(value)
    return (match.group(1), match.group(2)) if match else None


def _simple_addresses(values: list[str]) -> list[tuple[str, str]] | None:
    """``_simple_address`` of every value, or None when any is of another shape."""
    pairs: list[tuple[str, str]] = []
    for value in values:
        pair = _simple_address(value)
        if pair is None:
            return None
        pairs.append(pair)
    return pairs


_HEADER_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+\Z")


class HeaderBlock:
    """The fields of a well-formed header block, read-only, answering ``get_all`` and ``keys``
    exactly as a compat32 ``Message`` holding them would. A folder's first pass builds one per
    message and asks it for two or three fields: a ``Message`` costs more to make, and its
    ``get_all`` runs the policy's sanitising on every value; here only a value with raw 8-bit
    bytes in it is sanitised (into a ``Header``, as compat32 does)."""

    __slots__ = ("_fields",)

    def __init__(self, fields: list[tuple[str, str]] | None = None):
        self._fields = fields or []

    def get_all(self, name: str, failobj: Any = None) -> list[Any] | Any:
        wanted = name.lower()
        values = [
            value if value.isascii() else POLICY.header_fetch_parse(stored, value)
            for stored, value in self._fields
            if stored.lower() == wanted
        ]
        return values or failobj

    def keys(self) -> list[str]:
        return [name for name, _ in self._fields]


def _plain_headers(header_bytes: bytes) -> HeaderBlock | None:
    """A well-formed header block as compat32's parser would store it, several times faster
    (a folder's worth of header fetches goes through here); None when anything looks unusual,
    and the full parser decides."""
    text = header_bytes.decode("ascii", "surrogateescape")
    fields: list[tuple[str, str]] = []
    name, value = "", ""
    for line in text.split("\r\n"):
        if not line:
            continue  # the blank line that ends the block (or a stray one: the parser agrees)
        if line[0] in " \t":
            if not name:
                return None
            value += "\r\n" + line  # folded: compat32 keeps the line break
            continue
        if name:
            fields.append((name, value))
        head, colon, rest = line.partition(":")
        if not colon or not _HEADER_NAME.match(head) or "\n" in line or "\r" in line:
            return None
        name, value = head, rest.lstrip(" \t")
    if name:
        fields.append((name, value))
    return HeaderBlock(fields)


# What every unread message's headers are: one shared empty block, since a folder's first pass
# may mark thousands of messages from SEARCH alone and nothing writes to a ParsedMessage's headers.
_NO_HEADERS = HeaderBlock()


_T = TypeVar("_T")


class _once(Generic[_T]):
    """``functools.cached_property`` without the lock that Python 3.11's takes on every first
    access (thousands of messages times several properties on a folder's first pass). The
    values are pure functions of the message: two threads racing would just compute twice."""

    def __init__(self, fn: Callable[[Any], _T]):
        self.fn = fn
        self.name = fn.__name__
        self.__doc__ = fn.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _once[_T]: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> _T: ...

    def __get__(self, obj: object, owner: type | None = None) -> _once[_T] | _T:
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.fn(obj)
        return value


@dataclass(eq=False)
class ParsedMessage:
    key: str  # the idempotency key, chosen by the caller (account/folder/UIDVALIDITY/UID or UIDL)
    headers: Message | HeaderBlock  # HeaderBlock: from_headers' fast path
    size: int
    internal_date: datetime | None = None
    raw: bytes | None = None
    flags: frozenset[str] = frozenset()
    known_attachments: tuple[Attachment, ...] | None = None  # from BODYSTRUCTURE, when no raw
    _walked: tuple[tuple[Attachment, ...], str] | None = field(default=None, repr=False)
    mime_too_deep: bool = False  # nested past MAX_MIME_DEPTH: headers only, no body or attachments

    @classmethod
    def from_bytes(
        cls, raw: bytes, *, key: str, internal_date: datetime | None = None, flags: Sequence[str] = ()
    ) -> ParsedMessage:
        deep = _too_deep(raw, key)
        try:
            # Too deep: the body stays one opaque payload (no recursion), the headers still count.
            parsed = parse_headers(raw) if deep else parse_message(raw)
        except Exception as exc:
            log.warning("message unparsable", key=key, error=repr(exc))
            parsed = empty_message()
        return cls(
            key=key,
            headers=parsed,
            size=len(raw),
            internal_date=internal_date,
            raw=raw,
            flags=frozenset(flags),
            mime_too_deep=deep,
        )

    @classmethod
    def from_headers(
        cls,
        header_bytes: bytes,
        *,
        key: str,
        size: int,
        internal_date: datetime | None = None,
        flags: Sequence[str] = (),
        attachments: Sequence[Attachment] | None = None,
    ) -> ParsedMessage:
        """Header bytes only; ``attachments`` as the IMAP layer read them from BODYSTRUCTURE."""
        try:
            parsed = _plain_headers(header_bytes) or parse_headers(header_bytes)
        except Exception as exc:
            log.warning("headers unparsable", key=key, error=repr(exc))
            parsed = empty_message()
        known = tuple(Attachment(*a) for a in attachments) if attachments is not None else None
        return cls(
            key=key,
            headers=parsed,
            size=size,
            internal_date=internal_date,
            flags=frozenset(flags),
            known_attachments=known,
        )

    @classmethod
    def unread(cls, key: str) -> ParsedMessage:
        """A message known only by its key: the server's SEARCH already decided the rules and
        every planned action is an IMAP one, so nothing of it was fetched (no headers, size 0)."""
        return cls(key=key, headers=_NO_HEADERS, size=0)

    # -- headers -------------------------------------------------------------------------

    def header(self, name: str) -> list[str]:
        """Every value of header ``name``, decoded; [] when absent."""
        try:
            values = self.headers.get_all(name) or []
        except Exception:
            return []
        return [decode_header_value(v) for v in values]

    def first(self, name: str) -> str:
        values = self.header(name)
        return values[0] if values else ""

    def nested_header(self, name: str) -> list[str]:
        """Every value of header ``name`` here and in every message attached inside this one
        (message/rfc822 parts, at any depth), decoded; only the top level when only headers
        were fetched. A forward wraps the message before it: its headers live on in there."""
        values = self.header(name)
        if self.raw is None or not isinstance(self.headers, Message):
            return values
        try:
            for part in self.headers.walk():
                if part.get_content_type() == "message/rfc822" and part.is_multipart():
                    for inner in part.get_payload():
                        if isinstance(inner, Message):
                            values.extend(decode_header_value(v) for v in inner.get_all(name) or [])
        except Exception as exc:  # a broken MIME tree: what was read so far still counts
            log.warning("attached message unreadable", key=self.key, error=repr(exc))
        return values

    def _addresses(self, name: str) -> list[Address]:
        try:
            raw = [
                decode_header_value(v)
                if not isinstance(v, str)
                else v
                if v.isascii()
                else v.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                for v in self.headers.get_all(name) or []
            ]
            pairs = _simple_addresses(raw)
            if pairs is None:
                pairs = email.utils.getaddresses(raw)
        except Exception:
            return []
        found = []
        for name_part, addr in pairs:
            address = Address(decode_header_value(name_part) if name_part else "", addr.strip())
            if address.name or address.addr:
                found.append(address)
        return found

    @_once
    def message_id(self) -> str:
        return self.first("Message-ID")

    @_once
    def subject(self) -> str:
        return self.first("Subject")

    @_once
    def from_(self) -> list[Address]:
        return self._addresses("From")

    @_once
    def to(self) -> list[Address]:
        return self._addresses("To")

    @_once
    def cc(self) -> list[Address]:
        return self._addresses("Cc")

    @_once
    def reply_to(self) -> list[Address]:
        return self._addresses("Reply-To")

    @_once
    def sender(self) -> list[Address]:
        return self._addresses("Sender")

    @_once
    def return_path(self) -> str:
        """The envelope sender as the MDA recorded it; "" for a bounce (``<>``) or when absent."""
        value = self.first("Return-Path").strip()
        return value[1:-1].strip() if value.startswith("<") and value.endswith(">") else value

    @_once
    def date(self) -> datetime | None:
        """The Date header (aware), else the server's internal date."""
        return _parse_date(self.first("Date")) or self.internal_date

    @_once
    def auto_generated(self) -> str | None:
        """Why this message looks machine-sent (never auto-reply to it), or None."""
        auto = self.first("Auto-Submitted").lower()
        if auto and auto != "no":
            return f"Auto-Submitted: {auto}"
        precedence = self.first("Precedence").lower()
        if precedence in ("bulk", "junk", "list"):
            return f"Precedence: {precedence}"
        if self.header("List-Id"):
            return "List-Id present"
        suppress = self.first("X-Auto-Response-Suppress").lower()
        if any(word in suppress for word in ("all", "oof", "autoreply")):
            return f"X-Auto-Response-Suppress: {suppress}"
        if self.header("Return-Path") and not self.return_path:
            return "null Return-Path (a bounce)"
        return None

    # -- body ----------------------------------------------------------------------------

    def _walk_raw(self) -> tuple[tuple[Attachment, ...], str]:
        if self._walked is None:
            attachments: list[Attachment] = []
            parts: list[Message] = []
            texts: list[Message] = []
            htmls: list[Message] = []
            # raw means from_bytes parsed it into a Message (a HeaderBlock holds headers only)
            if self.raw is not None and isinstance(self.headers, Message):
                try:
                    _walk(self.headers, parts, texts, htmls)
                    attachments = [_attachment(p) for p in parts]
                    if texts:
                        body = "\n".join(part_text(p) for p in texts)
                    else:
                        body = "\n".join(html_to_text(part_text(p)).rstrip("\n") for p in htmls)
                except Exception as exc:
                    log.warning("message body unreadable", key=self.key, error=repr(exc))
                    body = ""
            else:
                body = ""
            self._walked = (tuple(attachments), body.replace("\r\n", "\n"))
        return self._walked

    def body_text(self) -> str:
        """Text of the inline text/plain parts, else of the HTML parts with tags stripped; ""
        when only headers were fetched."""
        return self._walk_raw()[1]

    def attachments(self) -> list[Attachment]:
        """From the MIME tree when the raw message is here, else what the caller passed."""
        if self.raw is None and self.known_attachments is not None:
            return list(self.known_attachments)
        return list(self._walk_raw()[0])

    @property
    def has_attachment(self) -> bool:
        return bool(self.attachments())
