"""Auto-replies (RFC 3834, and the vacation rules of RFC 5230 4.5). Pure.

``reply_refusal`` says why a message must not be answered automatically; when it says
nothing, ``reply_to_address`` is whom to answer, and ``compose_reply`` builds the reply from a
rendered template: envelope sender ``<>`` (the caller stores ``envelope_from=""``),
``Auto-Submitted: auto-replied``, ``Subject: Auto: <original>`` (never "Auto: Auto:"),
``In-Reply-To`` / ``References`` threading it under the original. "Once per sender per N days"
needs the store and lives in the executor.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from email import message_from_string
from email.policy import compat32
from functools import cached_property
from typing import Any

from postroom.config.rules import VacationSpec
from postroom.errors import MessageRefused
from postroom.mail.compose import compose_bytes, validate_address
from postroom.mail.templates import RenderedEmail

from .forward import LOOP_HEADER, bounce_reason, one_line
from .message import ParsedMessage

_AUTO_PREFIX = re.compile(r"^\s*(auto\s*:\s*)+", re.IGNORECASE)
_MSGID = re.compile(r"<[^<>\s]+>")


def _local_part(address: str) -> str:
    return address.rsplit("@", 1)[0].lower() if "@" in address else address.lower()


def _robot_address(address: str) -> str | None:
    local = _local_part(address)
    if local == "mailer-daemon":
        return "MAILER-DAEMON"
    if local in ("listserv", "majordomo"):
        return f"{local} (a list robot)"
    if local.startswith("owner-"):
        return "owner-* (a list owner)"
    if local.endswith("-request"):
        return "*-request (a list robot)"
    return None


def reply_refusal(msg: ParsedMessage, account_addresses: Iterable[str]) -> str | None:
    """Why ``msg`` gets no automatic reply from an account with these addresses, or None."""
    auto = msg.first("Auto-Submitted").strip().lower()
    if auto and auto.split(";", 1)[0].strip() != "no":
        return f"Auto-Submitted: {auto} (RFC 3834 §2)"
    bounce = bounce_reason(msg)
    if bounce:
        return bounce
    for candidate in [msg.return_path, *(a.addr for a in msg.from_), *(a.addr for a in msg.sender)]:
        robot = _robot_address(candidate) if candidate else None
        if robot:
            return f"sender is {robot}"
    listed = sorted({name for name in msg.headers.keys() if name.lower().startswith("list-")})
    if any(name.lower() == "list-id" for name in listed):
        return "List-Id present (RFC 3834 §2): mailing list mail"
    if listed:
        return f"mailing list mail ({', '.join(listed)}; RFC 3834 §2)"
    precedence = msg.first("Precedence").strip().lower()
    if precedence in ("bulk", "junk", "list"):
        return f"Precedence: {precedence} (RFC 3834 §2)"
    if msg.header("X-Auto-Response-Suppress"):
        return "X-Auto-Response-Suppress present"
    if msg.header(LOOP_HEADER):
        return f"{LOOP_HEADER} present (sent on by an automaton)"
    ours = {a.lower() for a in account_addresses}
    if not any(a.addr.lower() in ours for a in (*msg.to, *msg.cc)):
        return "not addressed to this account in To or Cc (RFC 5230 §4.5)"
    target = reply_to_address(msg)
    if target is None:
        return "no usable address to reply to"
    if target.lower() in ours:
        return "from this account itself"
    return None


def vacation_text(spec: VacationSpec) -> str:
    """A vacation's reply text: its reason, or with ``:mime`` the text of the MIME entity the
    reason holds (its first text/plain part)."""
    if not spec.mime:
        return spec.reason
    entity = message_from_string(spec.reason, policy=compat32)
    for part in entity.walk():
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                try:
                    return payload.decode(part.get_content_charset() or "utf-8", "replace")
                except LookupError:  # a charset Python does not know
                    return payload.decode("utf-8", "replace")
    return spec.reason


def vacation_refusal(msg: ParsedMessage, sender: str, account_addresses: Iterable[str]) -> str | None:
    """Why a vacation (RFC 5230) must not answer ``msg``, whose envelope sender is ``sender``
    ("" for the null sender), or None: ``reply_refusal``'s guards (RFC 3834 and RFC 5230 4.5),
    applied to the envelope sender, whom a vacation answers (RFC 5230 4.1)."""
    if not sender:
        return "the envelope sender is empty (a bounce): never answered"
    robot = _robot_address(sender)
    if robot:
        return f"sender is {robot}"
    ours = [a.lower() for a in account_addresses]
    if sender.lower() in ours:
        return "from this account itself"
    reason = reply_refusal(msg, ours)
    # reply_refusal's last checks are about Reply-To/From, whom a reply answers; a vacation
    # answers the envelope sender, checked above
    return None if reason in ("no usable address to reply to", "from this account itself") else reason


def reply_to_address(msg: ParsedMessage) -> str | None:
    """The bare address to answer: the first usable Reply-To, else From."""
    for address in (*msg.reply_to, *msg.from_):
        if address.addr and "@" in address.addr:
            try:
                validate_address(address.addr, what="reply to")
            except MessageRefused:
                continue
            return address.addr
    return None


def auto_subject(subject: str) -> str:
    return "Auto: " + _AUTO_PREFIX.sub("", one_line(subject)).strip()


class MessageView:
    """What a reply template sees as ``message``: plain values, body text computed lazily."""

    def __init__(self, msg: ParsedMessage):
        self._msg = msg
        self.subject = msg.subject
        self.from_ = ", ".join(a.display for a in msg.from_)
        self.from_address = msg.from_[0].addr if msg.from_ else ""
        self.to = ", ".join(a.display for a in msg.to)
        self.cc = ", ".join(a.display for a in msg.cc)
        self.date = msg.date
        self.message_id = msg.message_id

    @cached_property
    def body(self) -> str:
        return self._msg.body_text()

    @property
    def text(self) -> str:
        return self.body

    def __repr__(self) -> str:
        return f"<message {self.message_id or '(no id)'}: {self.subject!r}>"


def reply_context(msg: ParsedMessage, **extra: Any) -> dict[str, Any]:
    return {"message": MessageView(msg), **extra}


def compose_reply(
    rendered: RenderedEmail,
    msg: ParsedMessage,
    *,
    sender: str,
    to: str,
    message_id: str,
    now: datetime,
    exact_subject: bool = False,
) -> bytes:
    """``exact_subject``: a vacation's ``:subject`` is used as written (RFC 5230 4.6)."""
    given = one_line(rendered.subject) if exact_subject else ""
    subject = given or auto_subject(rendered.subject or msg.subject)
    extra: dict[str, str] = {}
    original_id = _MSGID.search(msg.message_id or "")
    if original_id:
        references = _MSGID.findall(" ".join(msg.header("References")))[-20:]
        extra["In-Reply-To"] = original_id.group(0)
        extra["References"] = " ".join([*references, original_id.group(0)])
    return compose_bytes(
        sender=sender,
        to=[to],
        subject=subject,
        text=rendered.text,
        html=rendered.html,
        message_id=message_id,
        date=now,
        extra_headers=extra,
        auto_submitted="auto-replied",
    )
