"""Recipients refused at RCPT: which refusals mean "no such mailbox", and suppressing those.

A recipient the server refuses for good with an address status (RFC 3463 ``5.1.x``: bad
mailbox, bad domain, bad syntax, moved) will be refused again next time, exactly as if it had
bounced: it goes on the account's suppression list through the same write a hard bounce takes
(``BounceStore.record``), so jobs leave it out and `postroom suppressions` lists it. Other
permanent refusals (policy, spam: ``5.7.x``, a bare ``550``) are kept on the outbox row only:
they may say more about the message than about the address.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from email.utils import parseaddr

from postroom.store.bounces import BounceLine, BounceStore
from postroom.store.outbox import OutboxItem

__all__ = ["MAX_REPLY", "mailbox_refusal", "suppress_refused", "suppressing"]

# "550 5.1.1 <x@y>: Recipient address rejected ..." -> "5.1.1" (also "550-5.1.1" lines)
_ENHANCED = re.compile(r"^5\d\d[ -]+(5\.1\.\d{1,3})(?=\s|$)")
# 5.1.7 and 5.1.8 are about the sender's address, not this recipient's.
_NOT_THE_RECIPIENT = frozenset({"5.1.7", "5.1.8"})
MAX_REPLY = 1000  # characters of a server's reply kept as the suppression's diagnostic


def mailbox_refusal(reply: str) -> str | None:
    """The enhanced status of a permanent refusal that says the recipient's mailbox or
    address is wrong ("5.1.1"), else None. Only the reply's first 40 characters are read."""
    found = _ENHANCED.match(reply[:40].lstrip())
    if found is None or found.group(1) in _NOT_THE_RECIPIENT:
        return None
    return found.group(1)


def suppress_refused(bounces: BounceStore, item: OutboxItem, refused: Mapping[str, str], *, now: datetime) -> list[str]:
    """Suppress the recipients of ``item`` refused with a mailbox status (one store write, as
    a hard bounce; recorded once per try, so a row sent again records again). Returns the
    addresses added to the list now."""
    lines = [
        BounceLine(
            recipient=(parseaddr(rcpt)[1] or rcpt).strip().lower(),
            action="refused",
            status=status,
            diagnostic=reply[:MAX_REPLY],
            hard=True,
        )
        for rcpt, reply in sorted(refused.items())
        if (status := mailbox_refusal(reply)) is not None
    ]
    if not lines:
        return []
    report_key = f"rcpt:{item.account}/{item.message_id}/{item.attempts}"
    return bounces.record(report_key, account=item.account, outbox_id=item.id, lines=lines, now=now).suppressed


def suppressing(bounces: BounceStore) -> Callable[[OutboxItem, Mapping[str, str], datetime], list[str]]:
    """The sender's ``suppress`` hook over ``bounces``."""

    def suppress(item: OutboxItem, refused: Mapping[str, str], now: datetime) -> list[str]:
        return suppress_refused(bounces, item, refused, now=now)

    return suppress
