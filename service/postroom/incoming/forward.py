"""Forward and redirect composition, and the guards that keep them out of loops. Pure.

forward (``as: attachment``, the default): a new message from our account to the targets,
``Reply-To`` the original sender, ``Subject: Fwd: …``, a short text saying what is forwarded,
and the original attached byte for byte as message/rfc822. ``as: inline``: the original's text
quoted in the body (its attachments are not carried).

redirect (RFC 5322 3.6.6 "resent" fields): the original bytes unchanged, with ``Resent-From``,
``Resent-To``, ``Resent-Date``, ``Resent-Message-ID`` prepended and line endings normalised to
CRLF; the envelope is ours (from our account, to the targets).

Both refuse bounces (they would bounce back and forth) and stop loops. A message's loop trail
is every postroom account it has been sent on from: the ``X-Postroom-Loop`` values on it and on
every message attached inside it (a forward wraps the one before, so its marker is in there).
What we forward or redirect carries the whole trail plus our own address, so the trail survives
any number of forwards (``Received`` does not: a forward is a new message). A message whose
trail already holds this account, or that has travelled more than ``MAX_HOPS`` hops (Received
fields plus trail), is not sent on again: no ring of postroom accounts, of any length or mix of
forward and redirect, can go round twice.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Sequence
from datetime import datetime

from postroom.errors import MessageRefused
from postroom.mail.compose import check_header_value, compose_bytes, crlf, validate_address

from .message import ParsedMessage

LOOP_HEADER = "X-Postroom-Loop"
MAX_HOPS = 20  # Received + our loop headers; RFC 5321 6.3 suggests at least 100 for MTAs,
# but a rule-driven forwarder that sees 20 hops is almost certainly looping
_FWD_PREFIX = re.compile(r"^\s*((fwd?|wg|tr)\s*:\s*)+", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_MAX_ADDRESS = 254  # RFC 5321 4.5.3.1.3: the longest path


def bounce_reason(msg: ParsedMessage) -> str | None:
    """Why ``msg`` looks like a delivery report (never forward, redirect or answer it)."""
    if msg.header("Return-Path") and not msg.return_path:
        return "empty return path (a bounce)"
    for address in msg.from_:
        if address.addr.split("@", 1)[0].lower() == "mailer-daemon":
            return "from MAILER-DAEMON"
    if msg.return_path.split("@", 1)[0].lower() == "mailer-daemon":
        return "return path MAILER-DAEMON"
    content_type = msg.first("Content-Type").lower()
    if content_type.startswith("multipart/report"):
        return "multipart/report (a delivery or disposition report)"
    return None


def loop_trail(msg: ParsedMessage) -> list[str]:
    """The postroom accounts ``msg`` was sent on from, oldest first, lower-case, each once:
    from its own loop headers and those of the messages attached inside it."""
    found = (address.strip().lower() for value in msg.nested_header(LOOP_HEADER) for address in value.split(","))
    return list(dict.fromkeys(address for address in found if address))


def loop_reason(msg: ParsedMessage, account_address: str) -> str | None:
    """Why sending ``msg`` on from ``account_address`` could loop, or None."""
    trail = loop_trail(msg)
    if account_address.lower() in trail:
        return f"already carries {LOOP_HEADER}: {account_address} (it went round)"
    hops = len(msg.header("Received")) + len(trail)
    if hops > MAX_HOPS:
        return f"{hops} hops (limit {MAX_HOPS})"
    return None


def _loop_value(msg: ParsedMessage, sender: str) -> str:
    """Our loop header: the trail so far, then our address (``sender`` may have a name)."""
    ours = check_header_value(email.utils.parseaddr(sender)[1], what="loop header")
    # entries came from mail anyone can send: made one-line and address-sized, never refused
    trail = [one_line(a) for a in loop_trail(msg) if a != ours.lower() and len(a) <= _MAX_ADDRESS]
    return ", ".join([*filter(None, trail), ours])


def refusal(msg: ParsedMessage, account_address: str) -> str | None:
    return bounce_reason(msg) or loop_reason(msg, account_address)


def one_line(text: str) -> str:
    """A decoded header value made safe to reuse in a header: encoded CR/LF and other control
    characters (``=?utf-8?q?a=0D=0Ab?=``) become spaces instead of refusing the whole message."""
    return _CONTROL.sub(" ", text).strip()


def fwd_subject(subject: str) -> str:
    return "Fwd: " + _FWD_PREFIX.sub("", one_line(subject))


def _original_sender(msg: ParsedMessage) -> str | None:
    for address in (*msg.reply_to, *msg.from_):
        if address.addr and "@" in address.addr:
            try:
                return validate_address(address.addr, what="reply-to")
            except MessageRefused:
                continue
    return None


def _summary(msg: ParsedMessage) -> list[str]:
    lines = [f"From: {', '.join(a.display for a in msg.from_) or '(unknown)'}"]
    if msg.date is not None:
        lines.append(f"Date: {email.utils.format_datetime(msg.date)}")
    lines.append(f"Subject: {msg.subject}")
    if msg.to:
        lines.append(f"To: {', '.join(a.display for a in msg.to)}")
    return lines


def forward_message(
    raw: bytes,
    msg: ParsedMessage,
    *,
    sender: str,
    to: Sequence[str],
    as_: str,
    rule: str,
    message_id: str,
    now: datetime,
) -> bytes:
    """The bytes of a forward of ``raw`` from ``sender`` (our account) to ``to``."""

    def composed(text: str, attached: bytes | None = None) -> bytes:
        return compose_bytes(
            sender=sender,
            to=list(to),
            subject=fwd_subject(msg.subject),
            text=text,
            reply_to=_original_sender(msg),
            message_id=message_id,
            date=now,
            attached_message=attached,
            extra_headers={LOOP_HEADER: _loop_value(msg, sender)},
            auto_submitted="auto-generated",
        )

    if as_ == "inline":
        quoted = "\n".join("> " + line if line else ">" for line in msg.body_text().splitlines())
        text = (
            "---------- Forwarded message ----------\n"
            + "\n".join(_summary(msg))
            + f"\n\n{quoted}\n\n-- \nForwarded by postroom (rule {rule}).\n"
        )
        return composed(text)
    text = (
        "The message below is attached as it arrived.\n\n"
        + "\n".join(_summary(msg))
        + f"\n\n-- \nForwarded by postroom (rule {rule}). Replies go to the original sender.\n"
    )
    return composed(text, attached=raw)


def redirect_message(raw: bytes, *, sender: str, to: Sequence[str], message_id: str, now: datetime) -> bytes:
    """``raw`` with Resent-* fields and our loop header prepended, CRLF line endings."""
    resent_from = validate_address(sender, what="resent-from")
    targets = [validate_address(a, what="resent-to") for a in to]
    if not targets:
        raise MessageRefused("redirect has no recipients")
    check_header_value(message_id, what="resent-message-id")
    fields = [
        ("Resent-From", resent_from),
        ("Resent-To", ", ".join(targets)),
        ("Resent-Date", email.utils.format_datetime(now)),
        ("Resent-Message-ID", message_id),
        (LOOP_HEADER, email.utils.parseaddr(resent_from)[1]),
    ]
    added = "".join(f"{name}: {value}\r\n" for name, value in fields)
    # Header values above are validated ASCII-safe addresses; non-ASCII display names would
    # need RFC 2047 encoding, so encode as UTF-8 only as a last resort (SMTPUTF8 servers).
    return added.encode("utf-8") + crlf(raw)
