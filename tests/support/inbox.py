"""The test user's mailbox on the lab's Dovecot (IMAP and POP3 settings, messages to
deliver) and a recording handler that stands in for the action executor under a watcher."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from typing import Any

from postroom.action_kinds import MailboxOps
from postroom.config.model import AccountConfig, ImapConfig, Pop3Config
from postroom.config.rules import RuleConfig
from postroom.incoming.mailbox import InboundItem, ItemOutcome
from postroom.incoming.pop3 import Pop3Connection
from postroom.incoming.rules import RuleSet, compile_rules

from tests.lab import MailLab
from tests.support.logins import login

USER = "dave"


def imap_cfg(lab: MailLab, **overrides: Any) -> ImapConfig:
    values = {
        "host": "127.0.0.1",
        "port": lab.ports.imap,
        "security": "starttls",
        "username": lab.address(USER),
        "password": lab.password(USER),
        "ca_file": lab.ca_file,
        "timeout": 10,
    }
    values.update(overrides)
    return ImapConfig.model_validate(values)


def raw_message(i: int, subject: str | None = None, attachment: bool = False) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"sender{i}@vendor.test"
    msg["To"] = "dave@example.test"
    msg["Subject"] = subject or f"message {i}"
    msg["Message-ID"] = f"<m{i}@lab.test>"
    msg.set_content(f"body {i}\n")
    if attachment:
        msg.add_attachment(b"%PDF-1.4 fake", maintype="application", subtype="pdf", filename="report.pdf")
    return msg.as_bytes()


class Recorder:
    """Records what it is handed; raises for a batch holding a subject in ``poison``; reports
    not-done for subjects in ``refuse``."""

    def __init__(self, poison: Sequence[str] = (), refuse: Sequence[str] = (), hopeless: Sequence[str] = ()):
        self.poison, self.refuse, self.hopeless = set(poison), set(refuse), set(hopeless)
        self.subjects: list[str] = []
        self.mailboxes: list[MailboxOps | None] = []

    async def handle_batch(
        self, account: str, folder: str, mailbox: MailboxOps | None, items: Sequence[InboundItem]
    ) -> dict[str, ItemOutcome]:
        if any(item.message.subject in self.poison for item in items):
            raise RuntimeError("poisoned batch")
        self.mailboxes.append(mailbox)
        self.subjects.extend(item.message.subject for item in items)
        return {
            item.key: ItemOutcome(
                done=item.message.subject not in self.refuse | self.hopeless,
                error="refused",
                transient=item.message.subject not in self.hopeless,
            )
            for item in items
        }


def rules(match: dict[str, Any] | None = None, account: str = USER) -> RuleSet:
    return compile_rules(
        [
            RuleConfig.model_validate(
                {"name": "r", "account": account, "match": match or {}, "actions": [{"flag": "\\Flagged"}]}
            )
        ]
    )


def account(lab: MailLab, **imap: Any) -> AccountConfig:
    return AccountConfig.model_validate({"address": lab.address(USER), "imap": imap_cfg(lab, **imap).model_dump()})


async def eventually(check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait (generously) for a condition; a deadline for hangs, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.05)


def deliver(lab: MailLab, *subjects: str, start: int = 0) -> None:
    lab.deliver_many(USER, [raw_message(start + i, subject=s) for i, s in enumerate(subjects)])


def pop3_settings(lab: MailLab, **pop3: Any) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": lab.ports.pop3s,
        "security": "tls",
        "username": lab.address(USER),
        "password": lab.password(USER),
        "ca_file": str(lab.ca_file),
        "timeout": 10,
        **pop3,
    }


def pop3_account(lab: MailLab, **pop3: Any) -> AccountConfig:
    return AccountConfig.model_validate({"address": lab.address(USER), "pop3": pop3_settings(lab, **pop3)})


async def maildrop_size(lab: MailLab) -> int:
    server_cfg = Pop3Config.model_validate(pop3_settings(lab))
    conn = Pop3Connection(USER, server_cfg, login(server_cfg))
    await conn.connect()
    try:
        return len(await conn.uidl())
    finally:
        await conn.quit()
