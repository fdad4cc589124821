"""Envelope senders per SMTP transaction: one per recipient for signed VERP return paths.

A row queued with a VERP marker (``postroom.mail.verp.marker``) goes out as one transaction
per recipient, each with its own signed return path, over the same connection. When a later
transaction fails after an earlier one was accepted, the result says so per recipient (the
rest refused with that error), so a retry goes only to those still owed: nobody gets the
message twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..config.settings import Settings
from ..errors import PostroomError, is_transient
from ..mail.verp import envelopes
from ..store.outbox import OutboxItem
from .smtp import SendResult, SmtpConnection

Envelope = tuple[str, list[str]]  # (envelope sender, its recipients)
ReturnPaths = Callable[[OutboxItem], list[Envelope]]


def given_verp_key(settings: Settings) -> bytes | None:
    """POSTROOM_VERP_KEY as bytes (None: the store's own is used)."""
    return settings.verp_key.get_secret_value().encode() if settings.verp_key else None


def signed_return_paths(key: bytes) -> ReturnPaths:
    """The transactions for a row: signed per recipient when it was queued with a VERP marker."""
    return lambda item: envelopes(key, item.envelope_from, item.id, item.recipients)


def unchanged(item: OutboxItem) -> list[Envelope]:
    return [(item.envelope_from, list(item.recipients))]


async def send_each(conn: SmtpConnection, transactions: Sequence[Envelope], raw: bytes) -> SendResult:
    """Send ``raw`` once per transaction; one result for all. Raises only when the first
    transaction raises (nothing went out yet)."""
    if len(transactions) == 1:
        sender, recipients = transactions[0]
        return await conn.send(sender, recipients, raw)
    total = SendResult()
    for i, (sender, recipients) in enumerate(transactions):
        try:
            result = await conn.send(sender, recipients, raw)
        except PostroomError as exc:
            if i == 0:
                raise
            owed = [r for _, rs in transactions[i:] for r in rs]
            refused = total.refused_temporary if is_transient(exc) else total.refused_permanent
            refused.update(dict.fromkeys(owed, str(exc)[:500] or type(exc).__name__))
            return total
        total.accepted.extend(result.accepted)
        total.refused_temporary.update(result.refused_temporary)
        total.refused_permanent.update(result.refused_permanent)
    return total
