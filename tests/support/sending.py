"""An OutboxSender for the lab's alice with a clock the test moves (it is never patched)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from postroom.config.model import AccountConfig, OutboxConfig, SmtpConfig
from postroom.outgoing.sender import OutboxSender
from postroom.store import Store

from tests.lab import MailLab
from tests.support.clock import Clock

ALICE, BOB, CAROL = "alice@example.test", "bob@example.test", "carol@example.test"
POLICY = OutboxConfig(
    retry_base=timedelta(seconds=30),
    retry_max=timedelta(hours=1),
    max_age=timedelta(days=2),
    max_attempts=5,
    batch_size=100,
)


# Where the sender tests' clock starts: Clock(SENDER_START).
SENDER_START = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)


def sender_for(store: Store, clock: Clock, smtp: SmtpConfig, **kw: Any) -> OutboxSender:
    accounts = {"alice": AccountConfig(address=ALICE, smtp=smtp)}
    return OutboxSender(store.outbox, accounts, kw.pop("policy", POLICY), clock=clock, **kw)


async def arrived(lab: MailLab, user: str, count: int) -> list[bytes]:
    return await asyncio.to_thread(lab.wait_for_messages, user, count)
