"""A Sieve script as an entry of the rule set: the YAML rules run first, then the script.

Why that order: a YAML rule's ``stop`` can then keep a message from the script (the YAML file
is the newer, postroom-specific layer a user adds on top of a script carried over from
another server), and a script's ``keep`` cannot cancel a YAML rule's actions — YAML rules
have no implicit keep to cancel.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from postroom.config.model import Config
from postroom.incoming.envelope import envelope_of
from postroom.incoming.message import ParsedMessage
from postroom.incoming.rules import PlannedAction, RuleSet, compile_rules

from .interpret import INBOX, run
from .plan import planned_actions
from .syntax import Script, read_script


def rule_name(path: Path) -> str:
    """The script's name in the ledger and in ``rules test``: ``sieve:<file name>``."""
    return f"sieve:{path.name}"


@dataclass(frozen=True)
class SieveRule:
    name: str
    account: str
    account_address: str
    script: Script
    folders: tuple[str, ...]
    folder: str = INBOX  # the folder the messages are in (``bound``)

    def watched_folders(self) -> tuple[str, ...]:
        return self.folders

    def bound(self, folder: str) -> SieveRule:
        return replace(self, folder=folder)

    def plan(self, msg: ParsedMessage, *, now: datetime) -> tuple[list[PlannedAction], tuple[str, ...]]:
        outcome = run(self.script, msg, envelope_of(msg, self.account_address), now=now)
        return planned_actions(outcome, rule=self.name, folder=self.folder), tuple(outcome.trace)


def compile_config(config: Config) -> RuleSet:
    """The YAML rules and every account's Sieve script (read again here: the loader checked
    it, and a reload reads the file as it is now)."""
    scripts = [
        SieveRule(
            rule_name(account.sieve.file),
            name,
            str(account.address),
            read_script(account.sieve.file),
            tuple(account.sieve.folders),
        )
        for name, account in config.accounts.items()
        if account.sieve is not None
    ]
    return compile_rules(config.rules).with_scripts(scripts)
