"""Bounce intake: bounce reports for our own mail, taken out of a watched folder before the rules.

An account with ``bounces:`` has its bounce folder (or POP3 maildrop) watched even without
rules. Each new message there whose headers look like a bounce (``looks_like_bounce``, or
addressed to one of the account's VERP return paths) is read whole and parsed
(``postroom.mail.dsn``). It is *consumed* when it names a message in our outbox — by its VERP
return path first, else by the Message-ID of the returned headers, and only an outbox row of
this account — and at least one of that message's recipients: then `BounceStore.record`
ledgers it, marks the row `bounced` and suppresses hard bounces, and the inbound row is done
without the rules (no forward, reply or webhook for it). Anything else — not a bounce, one for
mail postroom did not send, one naming nobody we sent to — goes to the rules as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from email.utils import parseaddr

import structlog

from postroom.clock import utcnow
from postroom.config.model import AccountConfig, BouncesConfig, Config
from postroom.incoming.message import ParsedMessage
from postroom.incoming.rules import RuleSet
from postroom.mail.dsn import Bounce, BouncedRecipient, looks_like_bounce, parse_bounce
from postroom.mail.verp import message_id_from
from postroom.store.bounces import BounceLine, BounceStore
from postroom.store.outbox import OutboxItem, OutboxStore

log = structlog.get_logger(__name__)

# Header fields the watcher fetches in a bounce folder, besides the rules' own.
HEADER_FIELDS = (
    "Content-Type",
    "From",
    "Return-Path",
    "Subject",
    "X-Failed-Recipients",
    "To",
    "Delivered-To",
    "X-Original-To",
    "Message-ID",
)
# Where a bounce shows the address it was delivered to (the VERP return path).
_RECIPIENT_FIELDS = ("Delivered-To", "X-Original-To", "To")

BounceHook = Callable[[str, str], None]  # (account, result) — metrics


class BounceIntake:
    """One account's bounce folder: which messages are bounce reports for our mail."""

    def __init__(
        self,
        account: str,
        cfg: AccountConfig,
        outbox: OutboxStore,
        bounces: BounceStore,
        *,
        clock: Callable[[], datetime] = utcnow,
        on_bounce: BounceHook | None = None,
    ):
        if cfg.bounces is None:
            raise ValueError(f"account {account!r} has no bounces: section")
        self.account = account
        self.address = cfg.address
        self.settings: BouncesConfig = cfg.bounces
        self.outbox = outbox
        self.store = bounces
        self.clock = clock
        self.on_bounce = on_bounce or (lambda account, result: None)
        self.log = log.bind(account=account, folder=self.settings.folder)

    def candidate(self, msg: ParsedMessage) -> bool:
        """From the headers: worth reading whole as a possible bounce."""
        if self._verp_message_id(msg) is not None:
            return True
        sender = msg.from_[0].addr if msg.from_ else msg.first("From")
        return looks_like_bounce(
            msg.first("Content-Type"), sender, msg.return_path, msg.subject, msg.first("X-Failed-Recipients")
        )

    def consume(self, key: str, msg: ParsedMessage, raw: bytes) -> str | None:
        """Record ``raw`` if it is a bounce for our mail; the reason it was consumed, or None
        (the rules get it). Blocking (store): call it off the event loop."""
        bounce = parse_bounce(raw)
        if bounce is None:
            return None
        wanted = self._verp_message_id(msg) or bounce.original_message_id
        item = self._outbox_row(wanted) if wanted else None
        if item is None:
            self.log.info(
                "bounce report for mail postroom did not send: left to the rules", key=key, original_message_id=wanted
            )
            return None
        lines = _lines_for(item, bounce.recipients)
        if not lines:
            self.log.info(
                "bounce report names no recipient of that message: left to the rules", key=key, outbox_id=item.id
            )
            return None
        report_key = f"{self.account}/{msg.message_id or key}"
        recorded = self.store.record(report_key, account=self.account, outbox_id=item.id, lines=lines, now=self.clock())
        if not recorded.new:
            return f"bounce report for outbox {item.id} (recorded before)"
        hard = [line for line in lines if line.hard]
        self.on_bounce(
            self.account, "hard" if hard else "soft" if any(line.action == "failed" for line in lines) else "other"
        )
        for line in lines:
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
            )
        return f"bounce report for outbox {item.id}"

    def _verp_message_id(self, msg: ParsedMessage) -> str | None:
        if not self.settings.verp:
            return None
        for name in _RECIPIENT_FIELDS:
            for value in msg.header(name):
                found = message_id_from(parseaddr(value)[1], self.address, self.settings.delimiter)
                if found is not None:
                    return found
        return None

    def _outbox_row(self, message_id: str) -> OutboxItem | None:
        for item in self.outbox.by_message_ids([message_id]):
            if item.account == self.account:
                return item
        return None


def watch_targets(config: Config, ruleset: RuleSet) -> list[tuple[str, str]]:
    """(account, folder) pairs to watch: the rules' folders, then each bounce folder no rule
    names (a POP3 account's maildrop is INBOX)."""
    targets = dict.fromkeys(ruleset.watch_targets())
    for name, account in config.accounts.items():
        if account.bounces is not None:
            targets.setdefault((name, account.bounces.folder), None)
    return list(targets)


def _lines_for(item: OutboxItem, recipients: Sequence[BouncedRecipient]) -> list[BounceLine]:
    """The report's recipients that the message was sent to. A report naming one address for a
    message delivered to one (an alias rewrote it on the way) is about that one."""
    sent_to = {parseaddr(r)[1].lower() for r in (item.delivered or item.recipients)}
    lines: dict[str, BounceLine] = {}
    for r in recipients:
        address = r.address if r.address in sent_to else r.original if r.original in sent_to else None
        if address is None and len(recipients) == 1 and len(sent_to) == 1:
            address = next(iter(sent_to))
        if address is not None and address not in lines:  # one line per recipient and report
            lines[address] = BounceLine(
                recipient=address, action=r.action, status=r.status, diagnostic=r.diagnostic, hard=r.hard
            )
    return list(lines.values())


__all__ = ["HEADER_FIELDS", "Bounce", "BounceIntake", "watch_targets"]
