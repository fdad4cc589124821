"""The seam between watchers (which find new mail) and the action executor (which acts on it).

A watcher owns a server connection and turns new mail into `InboundItem`s; the executor gets
a batch of them plus `MailboxOps` (action_kinds.py, beside the table of what each kind calls)
for the folder they came from, and does the planned actions through the ledger. Keeping the
seam in protocols lets each side be tested against the real server without the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from postroom.action_kinds import MailboxOps
from postroom.store.ledger import FinishedAction

from .message import ParsedMessage
from .rules import PlannedAction


@dataclass
class InboundItem:
    """One new message and what the rules planned for it."""

    key: str  # "account/folder/uidvalidity/uid" or "account/pop3/uidl"
    message: ParsedMessage
    planned: list[PlannedAction]
    uid: int | None = None  # IMAP only
    uidl: str | None = None  # POP3 only
    raw: bytes | None = None  # full bytes when already fetched (POP3 always)


@dataclass
class ItemOutcome:
    """What the executor did with one item. `done`: every planned action is recorded done."""

    done: bool
    error: str | None = None
    transient: bool = True  # if not done: worth retrying later?
    details: dict[str, str] = field(default_factory=dict)


@dataclass
class Settlement:
    """What a handler leaves for the watcher to commit in the batch's last transaction, with
    the inbound rows and the checkpoint: the ledger outcomes of its last phase (their side
    effects done, their ``planned`` rows already committed). Only for a handler that says
    ``settles_with_batch``."""

    actions: list[FinishedAction] = field(default_factory=list)


class BatchHandler(Protocol):
    """Implemented by the action executor; called by watchers."""

    async def handle_batch(
        self, account: str, folder: str, mailbox: MailboxOps | None, items: Sequence[InboundItem]
    ) -> dict[str, ItemOutcome]: ...
