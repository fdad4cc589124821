"""What the guards decide for an action that sends mail, before anything is composed: the
loop and bounce guard (forward, redirect), the RFC 3834 / RFC 5230 guards (reply, vacation)
and "once per sender per N days" (the reply ledger, read through ``last_reply``). Pure: the
executor asks it before it sends, and ``postroom rules test`` / ``rules try`` ask it to say
what would happen."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from postroom.config.rules import ForwardAction, RedirectAction, ReplyAction, VacationAction
from postroom.incoming.envelope import envelope_of

from .forward import refusal
from .message import ParsedMessage
from .replies import reply_refusal, reply_to_address, vacation_refusal
from .rules import PlannedAction

#: (ledger rule, sender lower-cased) -> when that sender was last answered, or None
LastReply = Callable[[tuple[str, str]], datetime | None]


def ledger_rule(action: PlannedAction) -> str:
    """The reply ledger's "rule" column: a vacation counts per handle (RFC 5230 4.2)."""
    if isinstance(action.action, VacationAction):
        return f"{action.rule}#{action.action.vacation.handle}"
    return action.rule


def answered(action: PlannedAction, msg: ParsedMessage, account_address: str) -> tuple[str, str] | None:
    """The reply ledger's (rule, sender) an auto-reply would answer; None for other kinds."""
    match action.action:
        case ReplyAction():
            target = reply_to_address(msg)
        case VacationAction():
            target = envelope_of(msg, account_address).sender or None
        case _:
            return None
    return (ledger_rule(action), target.lower()) if target else None


def send_refusal(
    action: PlannedAction, msg: ParsedMessage, account_address: str, last_reply: LastReply, now: datetime
) -> str | None:
    """Why this sending action will not send (it is then recorded done, skipped), or None."""
    match action.action:
        case ForwardAction() | RedirectAction():
            return refusal(msg, account_address)
        case ReplyAction(reply=spec):
            reason = reply_refusal(msg, [account_address])
            target = reply_to_address(msg)
            if reason or target is None:
                return reason or "no usable address to reply to"
            last = last_reply((action.rule, target.lower()))
            if last is not None and now - last < timedelta(days=spec.days):
                return f"already replied to {target} within {spec.days} days (the reply ledger)"
        case VacationAction(vacation=spec):
            envelope = envelope_of(msg, account_address)
            reason = vacation_refusal(msg, envelope.sender, [account_address, envelope.recipient, *spec.addresses])
            if reason:
                return reason
            last = last_reply((ledger_rule(action), envelope.sender.lower()))
            if last is not None and now - last < timedelta(seconds=spec.seconds):
                return f"already answered {envelope.sender} within {spec.seconds} s (vacation :days; the reply ledger)"
    return None
