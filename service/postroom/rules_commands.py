"""The bodies of ``postroom rules test`` and ``rules try`` (and their reads): kept out of
cli/rules.py, which only declares the commands. Both only read: the message file or the live folder
(opened read-only, fetched with BODY.PEEK) and the reply ledger."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

import click

from postroom.bootstrap import open_store, store_exists
from postroom.clock import utcnow
from postroom.config.model import Config, ImapConfig
from postroom.config.settings import Settings
from postroom.errors import PostroomError
from postroom.incoming.guards import answered
from postroom.incoming.imap import ImapConnection
from postroom.incoming.message import ParsedMessage
from postroom.incoming.rules import RuleSet
from postroom.rules_report import describe, report_lines, verdict
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


MAX_TRY = 500  # messages one ``rules try`` reads: the newest N of a folder, fetched whole


def rules_try_command(cfg: Config, settings: Settings, account: str, folder: str, last: int) -> list[list[str]]:
    """The rows of the table: message, rule, action, what the guards decide; nothing acted on."""
    if account not in cfg.accounts:
        raise click.ClickException(f"no account named {account!r}; accounts: {', '.join(sorted(cfg.accounts))}")
    imap = cfg.accounts[account].imap
    if imap is None:
        raise click.ClickException(f"account {account!r} has no imap: section; rules try reads an IMAP folder")
    if not 1 <= last <= MAX_TRY:
        raise click.ClickException(f"--last takes 1 to {MAX_TRY} messages")
    ruleset = compile_config(cfg).for_folder(account, folder)
    messages = asyncio.run(_newest(account, imap, folder, last))
    ledger = _LedgerReader(settings)
    address = str(cfg.accounts[account].address)
    rows: list[list[str]] = []
    now = utcnow()
    for uid, msg in messages:
        label = f"{uid} {msg.subject[:40]!r}"
        rows.extend(_rows(ruleset, msg, label, account, address, ledger, now))
    return rows


async def _newest(account: str, imap: ImapConfig, folder: str, last: int) -> list[tuple[int, ParsedMessage]]:
    from postroom.auth.accounts import AccountLogins  # the token client (httpx) only for this command

    conn = ImapConnection(account, imap, AccountLogins().credentials(account, imap))
    await conn.connect()
    try:
        await conn.examine(folder)
        uids = (await conn.uids_from(1))[-last:]
        raws = await conn.fetch_raw(uids) if uids else {}
        flags = await conn.flags(uids) if uids else {}
    finally:
        await conn.close()
    return [
        (uid, ParsedMessage.from_bytes(raws[uid], key=f"{account}/{folder}/{uid}", flags=sorted(flags.get(uid, ()))))
        for uid in uids
        if uid in raws
    ]


def _rows(
    ruleset: RuleSet, msg: ParsedMessage, label: str, account: str, address: str, ledger: _LedgerReader, now: datetime
) -> list[list[str]]:
    explained = ruleset.explain(msg, now=now)
    ledger.load(
        account, [pair for row in explained for a in row.actions if (pair := answered(a, msg, address)) is not None]
    )
    rows: list[list[str]] = []
    for row in explained:
        if row.skipped or not row.actions:
            continue
        for action in row.actions:
            rows.append([label, row.rule, describe(action), verdict(action, msg, address, ledger.get, now)])
    return rows or [[label, "-", "no rule matches", "-"]]
