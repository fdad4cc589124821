"""The bodies of ``postroom rules test`` (and its reads): kept out of cli.py, which only
declares the commands."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from postroom.bootstrap import open_store, store_exists
from postroom.clock import utcnow
from postroom.config.model import Config
from postroom.config.settings import Settings
from postroom.errors import PostroomError
from postroom.incoming.guards import answered
from postroom.incoming.message import ParsedMessage
from postroom.rules_report import report_lines
from postroom.sieve.rule import compile_config


class _LedgerReader:
    """The reply ledger, read once per account for the pairs the message's actions would
    answer; without a store (nothing ever sent) every sender is new."""

    def __init__(self, settings: Settings):
        self.store = open_store(settings) if store_exists(settings) else None
        self.known: dict[tuple[str, str], datetime] = {}

    def load(self, account: str, pairs: list[tuple[str, str]]) -> None:
        if self.store is not None and pairs:
            self.known.update(self.store.ledger.last_replies(account, pairs))

    def get(self, pair: tuple[str, str]) -> datetime | None:
        return self.known.get(pair)


def rules_test_command(cfg: Config, settings: Settings, file: Path, account: str | None) -> None:
    if account is not None and account not in cfg.accounts:
        raise click.ClickException(f"no account named {account!r}; accounts: {', '.join(sorted(cfg.accounts))}")
    msg = ParsedMessage.from_bytes(file.read_bytes(), key=str(file))
    click.echo(f"message: {msg.subject!r} from {', '.join(a.display for a in msg.from_) or '-'}")
    ruleset = compile_config(cfg)
    ledger = _LedgerReader(settings)
    now = utcnow()
    any_match = False
    for name in [account] if account is not None else list(cfg.accounts):
        rows = ruleset.for_account(name).explain(msg, now=now)
        address = str(cfg.accounts[name].address)
        pairs = [pair for row in rows for a in row.actions if (pair := answered(a, msg, address)) is not None]
        try:
            ledger.load(name, pairs)
        except PostroomError as exc:
            click.secho(f"the reply ledger can't be read ({exc}); 'already answered' is not checked", fg="yellow")
        lines, matched = report_lines(rows, msg, address, ledger.get, now)
        any_match = any_match or matched
        for line in lines:
            click.secho(line, fg="green" if line.startswith(("  MATCH", "  SIEVE")) else None)
    if not any_match:
        click.echo("no rule matches")
