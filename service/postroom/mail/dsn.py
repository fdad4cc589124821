"""Reading bounces: RFC 3464 delivery status notifications and the common older formats.

Pure: bytes in, a `Bounce` (or None: not a bounce) out; it never raises on hostile input.

- RFC 3464: a ``multipart/report`` with a ``message/delivery-status`` part (Postfix, Exim,
  Sendmail, Exchange, Gmail...). Per recipient: Final-Recipient (Original-Recipient), Action,
  Status (``5.1.1``), Diagnostic-Code. The returned message (``text/rfc822-headers`` or
  ``message/rfc822``) gives the original Message-ID.
- Not RFC 3464 (older Exim, qmail, hand-made notices from MAILER-DAEMON/postmaster): the
  recipients from ``X-Failed-Recipients`` or qmail's ``<addr>:`` paragraphs, the status from
  an enhanced code or a 5xx/4xx reply in the text, the original Message-ID from a returned
  message or a ``Message-ID:`` line in the text. Without a code the status is "" (not hard).

Why not flufl.bounce (6.0.0 runs on Python 3.11): it returns bare addresses, with no status,
diagnostic or original Message-ID — what the outbox row and the suppression list record — and
one of its detectors raises on three messages of tests/data/corpus.
"""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser

# A DSN carries the returned message too (Postfix: up to 50 kB of it). The report parts come
# first, so a bigger message is read truncated: its tail is the returned body, not needed.
MAX_BYTES = 256 * 1024
MAX_PARTS = 50  # MIME parts looked at per message
MAX_RECIPIENTS = 100  # per-recipient blocks read from one DSN
MAX_TEXT = 64 * 1024  # characters of a text part scanned by the non-standard readers

# Every pattern here runs in time linear in its input (docs/guarantees.md, "Regular
# expressions"; tests/test_dsn_linear.py): one email must not stall the daemon.
# Bounded repetitions only, between word boundaries: each start does a bounded amount of work.
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
# A run of local-part characters is tried only from its start (the lookbehind) and taken whole
# (possessive ``++``: its end is fixed, it must be an "@"), so a long run without an "@" is
# scanned once, not once per character; the domain after an "@" ends at the next non-domain
# character, so its backtracking stays within that one domain.
_LOCAL = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~.-"
_ADDR = re.compile(rf"(?<![{_LOCAL}])[{_LOCAL}]++@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+")
# A message id: it starts at a "<" and the class excludes "<", so each try ends at the next one.
_MSGID = re.compile(r"<[^<>\s]+>")
_DIGITS = "0123456789"
_BOUNCE_SENDERS = ("mailer-daemon", "postmaster")
_BOUNCE_SUBJECTS = re.compile(
    r"undeliver|delivery (status notification|failure|has failed)|mail delivery failed|returned mail|"
    r"failure notice|non[- ]?delivery|delivery notification",
    re.I,
)


@dataclass(frozen=True)
class BouncedRecipient:
    address: str  # Final-Recipient (lower-cased)
    action: str  # failed | delayed | delivered | relayed | expanded ("failed" when not said)
    status: str  # enhanced status code, "5.1.1"; "" when the bounce gives none
    diagnostic: str  # Diagnostic-Code without its type ("550 5.1.1 <x>: user unknown"), or ""
    original: str = ""  # Original-Recipient, when given

    @property
    def failed(self) -> bool:
        return self.action == "failed"

    @property
    def hard(self) -> bool:
        """A permanent failure (5.x.x): the address is suppressed."""
        return self.failed and self.status.startswith("5.")


@dataclass(frozen=True)
class Bounce:
    recipients: tuple[BouncedRecipient, ...]
    original_message_id: str | None  # of the message that bounced, from the returned headers
    standard: bool  # RFC 3464 (True) or read from a non-standard format


def parse_bounce(raw: bytes) -> Bounce | None:
    """The bounce in ``raw``, or None if it is none (or names no recipient)."""
    try:
        msg = email.message_from_bytes(raw[:MAX_BYTES], policy=email.policy.compat32)
        return _read(msg)
    except Exception:  # hostile input: whatever the parser trips on, this is no bounce we can use
        return None


def looks_like_bounce(content_type: str, sender: str, return_path: str, subject: str, failed_recipients: str) -> bool:
    """From headers alone: could this be a bounce (worth fetching whole)? Generous on purpose;
    `parse_bounce` decides."""
    ctype = content_type.lower()
    if "multipart/report" in ctype or failed_recipients.strip():
        return True
    local = sender.rpartition("@")[0].lower() if "@" in sender else sender.lower()
    if any(name in local for name in _BOUNCE_SENDERS):
        return True
    return return_path.strip() in ("", "<>") and bool(_BOUNCE_SUBJECTS.search(subject))


def _read(msg: Message) -> Bounce | None:
    parts = list(_walk(msg))
    reports = [p for p in parts if p.get_content_type() == "message/delivery-status"]
    original = _original_message_id(parts)
    if reports:
        recipients = _dsn_recipients(reports[0])
        if recipients:
            return Bounce(tuple(recipients), original, standard=True)
    return _non_standard(msg, parts, original)


def _walk(msg: Message) -> list[Message]:
    out: list[Message] = []
    for part in msg.walk():
        out.append(part)
        if len(out) >= MAX_PARTS:
            break
    return out


def _dsn_recipients(report: Message) -> list[BouncedRecipient]:
    payload = report.get_payload()
    if isinstance(payload, list):  # the stdlib parses message/delivery-status into header blocks
        blocks = [b for b in payload if isinstance(b, Message)]
    else:  # a lone block (or a part the parser left as text): read it as header blocks
        text = payload if isinstance(payload, str) else ""
        blocks = [HeaderParser().parsestr(chunk) for chunk in _paragraphs(text)]
    out: list[BouncedRecipient] = []
    for block in blocks[: MAX_RECIPIENTS + 1]:
        final = _address(block.get("Final-Recipient", "") or block.get("Original-Recipient", ""))
        if not final:
            continue  # the per-message block, or a broken one
        status_match = _STATUS.search(str(block.get("Status", "")))
        diagnostic = _unfold(block.get("Diagnostic-Code", ""))
        if ";" in diagnostic:
            diagnostic = diagnostic.split(";", 1)[1].strip()
        out.append(
            BouncedRecipient(
                address=final,
                action=str(block.get("Action", "failed")).strip().lower() or "failed",
                status=status_match.group(0) if status_match else "",
                diagnostic=diagnostic[:1000],
                original=_address(block.get("Original-Recipient", "")),
            )
        )
    return out


def _address(field: object) -> str:
    """``rfc822; x@y`` (or a bare address) -> ``x@y``, lower-cased; "" if none."""
    text = _unfold(field)
    if ";" in text:
        text = text.split(";", 1)[1]
    found = _ADDR.search(text)
    return found.group(0).lower().strip(".") if found else ""


def _unfold(value: object) -> str:
    return " ".join(str(value or "").split())


def _original_message_id(parts: list[Message]) -> str | None:
    for part in parts:
        ctype = part.get_content_type()
        if ctype == "text/rfc822-headers":
            text = _text(part)
            headers = HeaderParser().parsestr(text, headersonly=True)
            found = _message_id(headers.get("Message-ID", ""))
            if found:
                return found
        elif ctype == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                found = _message_id(inner[0].get("Message-ID", ""))
                if found:
                    return found
    for part in parts:  # a notice quoting the headers in its text
        if part.get_content_maintype() == "text":
            quoted = _quoted_message_id(_text(part))
            if quoted:
                return quoted
    return None


def _message_id(value: object) -> str | None:
    found = _MSGID.search(_unfold(value))
    return found.group(0) if found else None


def _quoted_message_id(text: str) -> str | None:
    """The id of the first ``Message-ID:`` line in ``text`` (the id may be on the next line, a
    folded header): one pass over the lines."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        stripped = line.lstrip()
        if stripped[:11].lower() != "message-id:":
            continue
        rest = stripped[11:].strip()
        if not rest and i + 1 < len(lines):
            rest = lines[i + 1].strip()
        found = _MSGID.match(rest)
        if found:
            return found.group(0)
    return None


def _paragraphs(text: str) -> list[str]:
    """``text`` cut at blank lines (one pass, no pattern)."""
    out: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.strip():
            current.append(line)
        elif current:
            out.append("\n".join(current))
            current = []
    if current:
        out.append("\n".join(current))
    return out


def _reply_class(line: str) -> str | None:
    """ "5" or "4" when ``line`` starts (after blanks) with an SMTP reply code, 5xx or 4xx,
    followed by a blank, "-" or the line's end; else None."""
    s = line.lstrip()
    if len(s) < 3 or s[0] not in "45" or not (s[1] in _DIGITS and s[2] in _DIGITS):
        return None
    if len(s) > 3 and not (s[3] == "-" or s[3].isspace()):
        return None
    return s[0]


def _qmail_recipient(line: str) -> str | None:
    """The address of a qmail ``<addr>:`` paragraph head (the line is that alone)."""
    s = line.rstrip()
    if not (s.startswith("<") and s.endswith(">:")):
        return None
    inner = s[1:-2]
    if not inner or any(c in "<>" or c.isspace() for c in inner) or "@" not in inner[1:-1]:
        return None
    return inner


def _text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        charset = part.get_content_charset() or "utf-8"
        try:
            return payload[:MAX_TEXT].decode(charset, "replace")
        except LookupError:
            return payload[:MAX_TEXT].decode("utf-8", "replace")
    raw = part.get_payload()
    return raw[:MAX_TEXT] if isinstance(raw, str) else ""


def _non_standard(msg: Message, parts: list[Message], original: str | None) -> Bounce | None:
    sender = _unfold(msg.get("From", ""))
    subject = _unfold(msg.get("Subject", ""))
    failed_header = _unfold(msg.get("X-Failed-Recipients", ""))
    if not looks_like_bounce(
        msg.get_content_type(), sender, _unfold(msg.get("Return-Path", "x")), subject, failed_header
    ):
        return None
    text = "\n".join(_text(p) for p in parts if p.get_content_type() == "text/plain")[:MAX_TEXT]
    addresses = [a.lower() for a in _ADDR.findall(failed_header)]
    if not addresses:
        addresses = [a.lower() for a in map(_qmail_recipient, text.splitlines()) if a]
    if not addresses:
        return None
    status_match = _STATUS.search(text)
    if status_match:
        status = status_match.group(0)
    else:  # an SMTP reply quoted in the text: 5xx is permanent, 4xx not
        reply = next(filter(None, map(_reply_class, text.splitlines())), None)
        status = f"{reply}.0.0" if reply else ""
    diagnostic = _diagnostic_line(text, status)
    recipients = tuple(
        BouncedRecipient(address=a, action="failed", status=status, diagnostic=diagnostic)
        for a in dict.fromkeys(addresses)
    )
    return Bounce(recipients[:MAX_RECIPIENTS], original, standard=False)


def _diagnostic_line(text: str, status: str) -> str:
    """The text's line that holds the status or an SMTP reply, for the record."""
    for line in text.splitlines():
        stripped = line.strip()
        if (status and status in stripped) or _reply_class(line):
            return stripped[:1000]
    return ""
