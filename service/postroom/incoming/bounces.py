"""Bounce intake: bounce reports for our own mail, taken out of a watched folder before the rules.

An account with ``bounces:`` has its bounce folder (or POP3 maildrop) watched even without
rules. Each new message there whose headers look like a bounce (``looks_like_bounce``, or
delivered to one of the account's VERP return paths) is read whole and parsed
(``postroom.mail.dsn``) in a worker thread of its own, read up to ``max_size`` and given up
after ``PARSE_BUDGET`` seconds: a hostile message costs a thread a bounded while, never the
event loop.

A report is *verified*, and only then acted on, when the address it was delivered to — the
envelope (``Delivered-To``, ``X-Original-To``), never the ``To:`` header anyone can write — is
a VERP return path whose HMAC token (``postroom.mail.verp``) verifies for a recipient of an
outbox row of this account, and the report names that very recipient (``Final-Recipient`` or
``Original-Recipient``). Then `BounceStore.record` ledgers it, marks the row `bounced` and
suppresses a hard bounce, with the report as evidence, and the inbound row is done without
the rules. Every other bounce — no token, a token that does not verify, one made for another
recipient, any format without a token (``X-Failed-Recipients`` and a quoted Message-ID prove
nothing) — is counted `unverified`, logged, and goes to the rules as any other message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from email.utils import parseaddr
from enum import StrEnum

import structlog

from postroom.clock import utcnow
from postroom.config.model import AccountConfig, BouncesConfig, Config
from postroom.incoming.message import ParsedMessage
from postroom.incoming.rules import RuleSet
from postroom.mail.dsn import Bounce, BouncedRecipient, looks_like_bounce, parse_bounce
from postroom.mail.verp import Token, bare, token_from, verify
from postroom.store.bounces import BounceLine, BounceStore
from postroom.store.outbox import OutboxItem, OutboxStore

log = structlog.get_logger(__name__)

# Header fields the watcher fetches in a bounce folder, besides the rules' own.
HEADER_FIELDS = (
    "Content-Type",
    "Date",
    "From",
    "Return-Path",
    "Subject",
    "X-Failed-Recipients",
    "To",
    "Delivered-To",
    "X-Original-To",
    "Message-ID",
)
# Where the envelope shows the address a message was delivered to, as the receiving side wrote
# it. `To:` is not one: the sender writes it.
ENVELOPE_FIELDS = ("Delivered-To", "X-Original-To")
PARSE_BUDGET = 10.0  # seconds one report may take to parse (linear parsing takes milliseconds)
PARSE_THREADS = 2  # a report over budget holds one until it ends; the others go on


class Kind(StrEnum):
    """What a bounce report came to (the ``kind`` label of ``postroom_bounces_total``)."""

    HARD = "hard"
    SOFT = "soft"
    OTHER = "other"
    UNVERIFIED = "unverified"  # not proven ours: left to the rules
    OVER_BUDGET = "over_budget"  # not parsed within PARSE_BUDGET: left to the rules


BounceHook = Callable[[str, str], None]  # (account, Kind) — metrics

# Parsing is CPU work on hostile bytes: its own small pool, so a slow one can hold neither the
# event loop nor the store's threads.
_PARSERS = ThreadPoolExecutor(max_workers=PARSE_THREADS, thread_name_prefix="postroom-bounce-parse")


class BounceIntake:
    """One account's bounce folder: which messages are bounce reports for our mail."""

    def __init__(
        self,
        account: str,
        cfg: AccountConfig,
        outbox: OutboxStore,
        bounces: BounceStore,
        *,
        key: bytes,
        clock: Callable[[], datetime] = utcnow,
        on_bounce: BounceHook | None = None,
        budget: float = PARSE_BUDGET,
    ):
        if cfg.bounces is None:
            raise ValueError(f"account {account!r} has no bounces: section")
        self.account = account
        self.address = cfg.address
        self.settings: BouncesConfig = cfg.bounces
        self.outbox = outbox
        self.store = bounces
        self.key = key
        self.clock = clock
        self.budget = budget
        self.on_bounce = on_bounce or (lambda account, result: None)
        self.log = log.bind(account=account, folder=self.settings.folder)

    def candidate(self, msg: ParsedMessage) -> bool:
        """From the headers: worth reading whole as a possible bounce."""
        if self._envelope_token(msg) is not None:
            return True
        sender = msg.from_[0].addr if msg.from_ else msg.first("From")
        return looks_like_bounce(
            msg.first("Content-Type"), sender, msg.return_path, msg.subject, msg.first("X-Failed-Recipients")
        )

    async def read(self, key: str, raw: bytes) -> Bounce | None:
        """The bounce in ``raw`` (None: none), parsed in a worker thread within the budget."""
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(_PARSERS, parse_bounce, raw[: self.settings.max_size])
        try:
            return await asyncio.wait_for(work, self.budget)
        except TimeoutError:
            self.on_bounce(self.account, Kind.OVER_BUDGET)
            self.log.error(
                "bounce report not parsed within its time budget: left to the rules",
                key=key,
                budget=self.budget,
                size=len(raw),
            )
            return None

    def consume(self, key: str, msg: ParsedMessage, bounce: Bounce) -> str | None:
        """Record ``bounce`` if it is verified for our mail; the reason it was consumed, or
        None (the rules get it). Blocking (store): call it off the event loop."""
        token = self._envelope_token(msg)
        if token is None:
            self._unverified(key, "not delivered to a VERP return path of this account (Delivered-To)")
            return None
        item = self.outbox.get(token.outbox_id)
        if item is None or item.account != self.account:
            self._unverified(key, "its VERP token names no outbox row of this account")
            return None
        made_for = _made_for(self.key, token, item)
        if made_for is None:
            self._unverified(key, "its VERP token does not verify")
            return None
        line = _line_for(made_for, bounce.recipients)
        if line is None:
            named = sorted({r.address for r in bounce.recipients})[:5]
            self._unverified(key, "it names a recipient its VERP token was not made for", named=named)
            return None
        report_key = f"{self.account}/{msg.message_id or key}"
        evidence = _evidence(msg, bounce, line)
        recorded = self.store.record(
            report_key, account=self.account, outbox_id=item.id, lines=[line], now=self.clock(), evidence=evidence
        )
        if not recorded.new:
            return f"bounce report for outbox {item.id} (recorded before)"
        kind = Kind.HARD if line.hard else Kind.SOFT if line.action == "failed" else Kind.OTHER
        self.on_bounce(self.account, kind)
        self.log.warning(
            "message bounced",
            outbox_id=item.id,
            job=item.origin,
            recipient=line.recipient,
            action=line.action,
            status=line.status,
            diagnostic=line.diagnostic,
            suppressed=line.recipient in recorded.suppressed,
            format="dsn" if bounce.standard else "non-standard",
            report_key=report_key,
        )
        return f"bounce report for outbox {item.id}"

    def _unverified(self, key: str, why: str, **fields: object) -> None:
        self.on_bounce(self.account, Kind.UNVERIFIED)
        self.log.warning(
            "bounce report not verified: left to the rules, nobody suppressed", key=key, reason=why, **fields
        )

    def _envelope_token(self, msg: ParsedMessage) -> Token | None:
        """The token of the address this message reached: the topmost ``Delivered-To`` (the
        receiving server prepends its own; any below it came with the message), else the topmost
        ``X-Original-To``. Never ``To:``."""
        if not self.settings.verp:
            return None
        for name in ENVELOPE_FIELDS:
            values = msg.header(name)
            if values:
                return token_from(parseaddr(values[0])[1], self.address, self.settings.delimiter)
        return None


def _made_for(key: bytes, token: Token, item: OutboxItem) -> str | None:
    """The recipient of ``item`` the token was made for, or None (it does not verify)."""
    candidates = dict.fromkeys(bare(r) for r in [*item.recipients, *item.delivered, *item.refused])
    return next((r for r in candidates if r and verify(key, token, r)), None)


def _line_for(recipient: str, reported: tuple[BouncedRecipient, ...]) -> BounceLine | None:
    """The report's line about ``recipient`` (its Final- or Original-Recipient), or None."""
    for r in reported:
        if recipient in (r.address, r.original):
            return BounceLine(
                recipient=recipient, action=r.action, status=r.status, diagnostic=r.diagnostic, hard=r.hard
            )
    return None


def _evidence(msg: ParsedMessage, bounce: Bounce, line: BounceLine) -> str:
    sender = msg.from_[0].addr if msg.from_ else msg.first("From")
    date = msg.first("Date") or "no Date"
    kind = "DSN" if bounce.standard else "non-standard report"
    return f"{kind} of {date} from {sender or '<>'}: {line.action} {line.status} {line.diagnostic}".strip()[:1000]


def watch_targets(config: Config, ruleset: RuleSet) -> list[tuple[str, str]]:
    """(account, folder) pairs to watch: the rules' folders, then each bounce folder no rule
    names (a POP3 account's maildrop is INBOX)."""
    targets = dict.fromkeys(ruleset.watch_targets())
    for name, account in config.accounts.items():
        if account.bounces is not None:
            targets.setdefault((name, account.bounces.folder), None)
    return list(targets)


__all__ = ["HEADER_FIELDS", "Bounce", "BounceIntake", "Kind", "watch_targets"]
