"""What ``postroom rules test`` prints: for each rule (YAML, then Sieve) whether it matches,
the actions it plans and what the guards will decide for each - the loop guard for forward
and redirect, RFC 3834 / RFC 5230 for reply and vacation, and the reply ledger (read, never
written) for "once per sender per N days" - and a Sieve script's trace. Pure: the command
(cli/rules.py) reads the files and the ledger."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from postroom.action_kinds import SENDING
from postroom.incoming.guards import LastReply, send_refusal
from postroom.incoming.message import ParsedMessage
from postroom.incoming.rules import Explanation, PlannedAction


def verdict(
    action: PlannedAction, msg: ParsedMessage, account_address: str, last_reply: LastReply, now: datetime
) -> str:
    """What the executor will do with this action, in words."""
    if action.kind not in SENDING:
        return "will run"
    reason = send_refusal(action, msg, account_address, last_reply, now)
    return f"would be declined: {reason}" if reason else "would send"


def describe(action: PlannedAction) -> str:
    params = ", ".join(f"{k}={v}" for k, v in action.params.items())
    return f"{action.index}: {action.kind}" + (f" ({params})" if params else "")


def report_lines(
    rows: Iterable[Explanation], msg: ParsedMessage, account_address: str, last_reply: LastReply, now: datetime
) -> tuple[list[str], bool]:
    """(the lines, whether any rule matched)."""
    lines: list[str] = []
    any_match = False
    for ex in rows:
        if ex.skipped:
            lines.append(f"  -    {ex.rule}: not evaluated (an earlier rule said stop)")
            continue
        if ex.trace:  # a Sieve script: it always runs; its trace says what matched
            any_match = any_match or bool(ex.actions)
            lines.append(f"  SIEVE {ex.rule}" + ("" if ex.actions else ": keeps the message where it is"))
            lines.extend(f"        | {step}" for step in ex.trace)
        elif ex.matched:
            any_match = True
            lines.append(f"  MATCH {ex.rule}")
        else:
            lines.append(f"  no    {ex.rule}")
        for action in ex.actions:
            lines.append(f"        {describe(action)} -> {verdict(action, msg, account_address, last_reply, now)}")
    return lines, any_match
