"""The action executor wired to a store, a clock the test moves (from clock.START) and a
webhook recorder, with the lab's alice and carol as accounts: what a watcher would run rules
and actions with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from postroom.config.model import Config
from postroom.incoming.actions import ActionExecutor
from postroom.incoming.rules import RuleSet, compile_rules
from postroom.mail.templates import TemplateRenderer
from postroom.store import Store
from postroom.store.ledger import LedgerStore
from postroom.store.outbox import OutboxItem, OutboxStore
from postroom.webhooks.delivery import WebhookRequest

from tests.lab import MailLab
from tests.support.clock import Clock

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


@dataclass
class Stores:
    outbox: OutboxStore
    ledger: LedgerStore


class RecordingWebhooks:
    def __init__(self) -> None:
        self.requests: list[WebhookRequest] = []

    def enqueue(self, requests: Sequence[WebhookRequest]) -> int:
        self.requests.extend(requests)
        return len(requests)

    async def submit(self, requests: Sequence[WebhookRequest]) -> int:
        return self.enqueue(requests)


def make_config(lab: MailLab, rules: list[dict[str, Any]]) -> Config:
    def account(user: str) -> dict[str, Any]:
        server = {
            "host": "127.0.0.1",
            "security": "starttls",
            "username": f"{user}@example.test",
            "password": lab.password(user),
            "ca_file": str(lab.ca_file),
        }
        return {
            "address": f"{user}@example.test",
            "name": user.title(),
            "smtp": {**server, "port": lab.ports.smtp},
            "imap": {**server, "port": lab.ports.imap},
        }

    return Config.model_validate({"accounts": {"alice": account("alice"), "carol": account("carol")}, "rules": rules})


@dataclass
class Rig:
    config: Config
    rules: RuleSet
    stores: Stores
    executor: ActionExecutor
    clock: Clock
    webhooks: RecordingWebhooks


def make_rig(store: Store, config: Config, **kw: Any) -> Rig:
    rules = compile_rules(config.rules)
    stores = Stores(store.outbox, LedgerStore(store.engine, owner="test", calls=store.calls))
    clock, hooks = Clock(), RecordingWebhooks()
    executor = ActionExecutor(config, rules, stores, TemplateRenderer(TEMPLATES), hooks, clock=clock, **kw)
    return Rig(config, rules, stores, executor, clock, hooks)


def queued(rig: Rig) -> list[OutboxItem]:
    items: list[OutboxItem] = rig.stores.outbox.list(statuses=["queued"], limit=1000)
    return items
