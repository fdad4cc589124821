"""The IMAP wire format, pure: what goes into a command and what comes out of a reply, with no
socket and no IMAPClient connection (``imap.py`` is the connection that speaks it).

- UID sets: sorted UIDs as compact sequence sets ("1:500,502"), in chunks of ``CHUNK``;
- BODYSTRUCTURE: the attachments a structure names, counted as ``ParsedMessage`` counts them;
- untagged lines and literals: which untagged responses announce new mail, a literal's size;
- FETCH replies: the lean path for a folder's bulk header fetch (``parse_lean_fetch``), else
  imapclient's own parser, and the values a reply's items hold.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import structlog
from imapclient.response_parser import parse_fetch_response

from postroom.incoming.message import Attachment
from postroom.mail.parse import decode_header_value

log = structlog.get_logger(__name__)

# UIDs per FETCH/STORE/MOVE command: each command costs Dovecot an index sync, so few big
# ones; 2,000 UIDs of 6 digits stay far under its 64 KiB command-line limit
CHUNK = 2000
_NEW_MAIL = {b"EXISTS", b"RECENT", b"FETCH"}


# -- UID sets ------------------------------------------------------------------------------


def uid_set(uids: Iterable[int]) -> str:
    """Sorted UIDs as an IMAP sequence set with ranges: [1,2,3,7] -> "1:3,7"."""
    ordered = sorted(set(uids))
    if not ordered:
        raise ValueError("empty UID set")
    parts: list[str] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(f"{start}:{prev}" if prev != start else str(start))
        start = prev = uid
    parts.append(f"{start}:{prev}" if prev != start else str(start))
    return ",".join(parts)


def chunks(uids: Collection[int], size: int = CHUNK) -> Iterator[list[int]]:
    ordered = sorted(set(uids))
    for i in range(0, len(ordered), size):
        yield ordered[i : i + size]


# -- BODYSTRUCTURE -------------------------------------------------------------------------


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _params(value: Any) -> dict[str, str]:
    if not isinstance(value, tuple | list):
        return {}
    items = list(value)
    return {_text(k).lower(): _text(v) for k, v in zip(items[::2], items[1::2], strict=False)}


def attachments_from_bodystructure(structure: Any) -> list[Attachment]:
    """Attachments as ``ParsedMessage`` counts them: a part with disposition attachment, or a
    named non-text part. Parts inside an attached message are not ours."""
    found: list[Attachment] = []

    def walk(part: Any) -> None:
        if getattr(part, "is_multipart", False) or (part and isinstance(part[0], list)):
            for child in part[0]:
                walk(child)
            return
        maintype, subtype = _text(part[0]).lower(), _text(part[1]).lower()
        params = _params(part[2])
        size = part[6] if len(part) > 6 and isinstance(part[6], int) else 0
        # extension data (md5, disposition) follows the type-specific fields
        if maintype == "text":
            md5_at = 8
        elif (maintype, subtype) == ("message", "rfc822"):
            md5_at = 10
        else:
            md5_at = 7
        disposition = part[md5_at + 1] if len(part) > md5_at + 1 else None
        kind, disp_params = "", {}
        if isinstance(disposition, tuple) and disposition:
            kind, disp_params = _text(disposition[0]).lower(), _params(disposition[1] if len(disposition) > 1 else None)
        name = disp_params.get("filename") or params.get("name")
        filename = decode_header_value(name) if name else None
        if kind == "attachment" or (filename and maintype not in ("text", "multipart")):
            found.append(Attachment(filename, f"{maintype}/{subtype}", size))

    try:
        walk(structure)
    except (IndexError, TypeError, ValueError) as exc:
        log.warning("bodystructure unreadable", error=repr(exc))
    return found


# -- untagged lines and literals ----------------------------------------------------------


def _announces_news(line: bytes) -> bool:
    """An untagged ``* n EXISTS`` / ``* n RECENT`` (n > 0) / ``* n FETCH`` line."""
    match = _UNTAGGED_COUNT.match(line)
    return bool(match and match.group(2) in _NEW_MAIL and not (match.group(2) == b"RECENT" and match.group(1) == b"0"))


_UNTAGGED_COUNT = re.compile(rb"\* (\d+) ([A-Z]+)")


def _announces_mail(untagged: bytes) -> bool:
    """``n EXISTS``, or ``n RECENT`` with n > 0."""
    number, _, kind = untagged.partition(b" ")
    kind = kind.strip().upper()
    return number.isdigit() and (kind == b"EXISTS" or (kind == b"RECENT" and int(number) > 0))


_LITERAL_AT_END = re.compile(rb"\{(\d+)\}\Z")


def _literal_size(line: bytes) -> int | None:
    """n when ``line`` announces a literal ``{n}`` (what imaplib looks for), else None."""
    if not line.endswith(b"}"):
        return None
    found = _LITERAL_AT_END.search(line, max(0, len(line) - 24))
    return int(found[1]) if found else None


# -- FETCH replies -------------------------------------------------------------------------


# One message of a header-field fetch, as Dovecot (and most servers) answer it: sequence
# number, UID, optionally the size, then the header block as a literal whose length ends the
# line. imaplib has already taken off "* " and "FETCH".
_LEAN_FETCH = re.compile(
    rb'(\d+) \(UID (\d+)( RFC822\.SIZE (\d+))? (BODY\[HEADER\.FIELDS \([^()\[\]"\r\n]*\)\]) \{(\d+)\}\Z'
)


def parse_fetch_reply(data: list[Any]) -> dict[int, dict[bytes, Any]]:
    """A UID FETCH reply as ``imapclient.response_parser.parse_fetch_response`` reads it
    (uid -> {b"SEQ": seq, item: value}), with a lean path for the one shape a folder's first
    pass fetches in bulk: ``UID``, optional ``RFC822.SIZE`` and ``BODY[HEADER.FIELDS (...)]``.
    Anything else anywhere in the reply - other items, another order, an unsolicited FETCH, a
    repeated UID, a literal of the wrong length - and the whole reply goes to imapclient's
    parser, so the lean path never guesses."""
    lean = parse_lean_fetch(data)
    return lean if lean is not None else dict(parse_fetch_response(data, True, True))


def parse_lean_fetch(data: list[Any]) -> dict[int, dict[bytes, Any]] | None:
    """The lean path of ``parse_fetch_reply``: None unless every message is in its one shape."""
    if data == [None]:  # imaplib: no untagged FETCH at all (every UID expunged meanwhile)
        return {}
    if len(data) % 2:
        return None
    rows: dict[int, dict[bytes, Any]] = {}
    match = _LEAN_FETCH.match
    for i in range(0, len(data), 2):
        item, closing = data[i], data[i + 1]
        if type(item) is not tuple or len(item) != 2 or closing != b")":
            return None
        head, literal = item
        found = match(head) if type(head) is bytes and type(literal) is bytes else None
        if found is None or int(found[6]) != len(literal):
            return None
        seq, uid, has_size, size, body_key, _ = found.groups()
        if int(uid) in rows:
            return None
        row: dict[bytes, Any] = {b"SEQ": int(seq)}
        if has_size:
            row[b"RFC822.SIZE"] = int(size)
        row[body_key] = literal
        rows[int(uid)] = row
    return rows


def _body_item(row: dict[bytes, Any]) -> bytes:
    for key, value in row.items():
        if isinstance(key, bytes) and key.startswith(b"BODY[") and isinstance(value, bytes):
            return value
    return b""


def _aware(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    # imapclient normalises INTERNALDATE to naive local time; astimezone reads naive as local
    return value.astimezone(UTC)
