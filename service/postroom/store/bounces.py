"""Bounces and suppressions: what came back, and whom an account's jobs no longer mail.

`record` is the one write a consumed bounce report makes, in one transaction: its ledger rows
(once per report: a report seen again records nothing), the outbox row turned `bounced` with
the status and diagnostic, and each hard-bounced (5.x.x) address added to the account's
suppression list. A crash before the commit leaves nothing; after it, the report is known.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, delete, exists, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..errors import StoreUnavailable
from .calls import StoreCalls
from .engine import as_utc
from .tables import bounces, outbox, suppressions, verp_keys

VERP_KEY = "verp"
KEY_BYTES = 32

# Outbox rows a bounce may turn `bounced`: one still queued or dead has not (all) gone out.
BOUNCEABLE = ("sent", "bounced")


@dataclass(frozen=True)
class BounceLine:
    """One recipient of a bounce report, as recorded."""

    recipient: str
    action: str
    status: str
    diagnostic: str
    hard: bool


@dataclass(frozen=True)
class Suppression:
    account: str
    address: str
    status: str
    diagnostic: str
    outbox_id: int | None
    created_at: datetime
    report_key: str = ""  # the bounce report that caused it ("" when none: see evidence)
    evidence: str = ""  # what that report (or refusal) was: date, sender, status


@dataclass(frozen=True)
class BouncedRow:
    """An outbox row that bounced, with what came back for it."""

    outbox_id: int
    account: str
    origin: str
    message_id: str
    sent_at: datetime | None
    lines: list[BounceLine]


@dataclass(frozen=True)
class Recorded:
    new: bool  # False: this report was recorded before; nothing changed
    suppressed: list[str]  # addresses added to the suppression list now
    bounced: bool  # the outbox row is `bounced` now


class BounceStore:
    def __init__(self, engine: Engine, *, calls: StoreCalls):
        self.engine = engine
        self.calls = calls  # the store's threads: store_call runs this part's methods there

    def verp_key(self, given: bytes | None, *, now: datetime) -> bytes:
        """The key VERP return paths are signed with: ``given`` (the POSTROOM_VERP_KEY setting)
        when set, else the store's, made on first use (the same for every replica)."""
        if given:
            return given
        query = select(verp_keys.c.secret).where(verp_keys.c.name == VERP_KEY)
        for _ in range(2):  # read; else make it and read what won
            with self.engine.connect() as conn:
                found = conn.scalar(query)
            if found:
                return bytes(found)
            try:
                with self.engine.begin() as conn:
                    conn.execute(
                        insert(verp_keys).values(name=VERP_KEY, secret=secrets.token_bytes(KEY_BYTES), created_at=now)
                    )
            except IntegrityError:  # another process made it first: theirs is the key
                continue
        raise StoreUnavailable("the VERP key was made but cannot be read back")

    def known(self, report_key: str) -> bool:
        with self.engine.connect() as conn:
            return bool(conn.scalar(select(exists().where(bounces.c.report_key == report_key))))

    def record(
        self,
        report_key: str,
        *,
        account: str,
        outbox_id: int | None,
        lines: Sequence[BounceLine],
        now: datetime,
        evidence: str | None = None,
    ) -> Recorded:
        """Ledger the report, mark the row bounced, suppress its hard bounces (one transaction).
        ``evidence``: a line saying what the report was (date, sender), kept with each
        suppression it makes, beside ``report_key``."""
        try:
            with self.engine.begin() as conn:
                if conn.scalar(select(exists().where(bounces.c.report_key == report_key))):
                    return Recorded(new=False, suppressed=[], bounced=False)
                conn.execute(
                    insert(bounces),
                    [
                        dict(
                            report_key=report_key,
                            recipient=line.recipient,
                            account=account,
                            outbox_id=outbox_id,
                            action=line.action,
                            status=line.status,
                            diagnostic=line.diagnostic,
                            hard=line.hard,
                            created_at=now,
                        )
                        for line in lines
                    ],
                )
                failed = [line for line in lines if line.action == "failed"]
                marked = False
                if outbox_id is not None and failed:
                    summary = "; ".join(_describe(line) for line in failed)
                    result = conn.execute(
                        update(outbox)
                        .where(outbox.c.id == outbox_id, outbox.c.status.in_(BOUNCEABLE))
                        .values(status="bounced", last_error=f"bounced: {summary}"[:2000], updated_at=now)
                    )
                    marked = result.rowcount > 0
                added: list[str] = []
                for line in lines:
                    if line.hard and line.recipient not in added:
                        entry = dict(status=line.status, diagnostic=line.diagnostic, outbox_id=outbox_id)
                        if _suppress(conn, account, line.recipient, entry, report_key, evidence, now):
                            added.append(line.recipient)
                return Recorded(new=True, suppressed=added, bounced=marked)
        except IntegrityError:  # recorded meanwhile by another process: the same report
            return Recorded(new=False, suppressed=[], bounced=False)

    # -- suppressions ------------------------------------------------------------------------
    def suppress(
        self,
        account: str,
        address: str,
        *,
        status: str,
        diagnostic: str,
        now: datetime,
        outbox_id: int | None = None,
        evidence: str | None = None,
        report_key: str | None = None,
    ) -> bool:
        """Put ``address`` on ``account``'s suppression list with what caused it (e.g. an SMTP
        server refusing it at RCPT with 5.1.1: ``evidence="RCPT TO refused: 550 5.1.1 …"``).
        False when it was there already (its first evidence is kept)."""
        entry = dict(status=status, diagnostic=diagnostic, outbox_id=outbox_id)
        try:
            with self.engine.begin() as conn:
                return _suppress(conn, account, address.strip().lower(), entry, report_key, evidence, now)
        except IntegrityError:  # suppressed meanwhile by another process
            return False

    def suppressed(self, account: str) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.scalars(select(suppressions.c.address).where(suppressions.c.account == account)))

    def suppressions(self, account: str | None = None) -> list[Suppression]:
        query = select(suppressions).order_by(suppressions.c.account, suppressions.c.address)
        if account is not None:
            query = query.where(suppressions.c.account == account)
        with self.engine.connect() as conn:
            return [_suppression(row._mapping) for row in conn.execute(query)]

    def remove(self, address: str, *, account: str | None = None) -> int:
        """Take ``address`` off the suppression list (of ``account``, or of every account)."""
        query = delete(suppressions).where(suppressions.c.address == address.strip().lower())
        if account is not None:
            query = query.where(suppressions.c.account == account)
        with self.engine.begin() as conn:
            return conn.execute(query).rowcount

    # -- reading -----------------------------------------------------------------------------
    def bounced(self, *, limit: int = 100) -> list[BouncedRow]:
        with self.engine.connect() as conn:
            rows = list(
                conn.execute(
                    select(outbox.c.id, outbox.c.account, outbox.c.origin, outbox.c.message_id, outbox.c.sent_at)
                    .where(outbox.c.status == "bounced")
                    .order_by(outbox.c.id)
                    .limit(limit)
                )
            )
            ids = [row.id for row in rows]
            lines: dict[int, list[BounceLine]] = {}
            if ids:
                for b in conn.execute(
                    select(bounces)
                    .where(bounces.c.outbox_id.in_(ids))
                    .order_by(bounces.c.created_at, bounces.c.recipient)
                ):
                    m = b._mapping
                    lines.setdefault(m["outbox_id"], []).append(
                        BounceLine(
                            recipient=m["recipient"],
                            action=m["action"],
                            status=m["status"],
                            diagnostic=m["diagnostic"] or "",
                            hard=bool(m["hard"]),
                        )
                    )
        return [
            BouncedRow(
                outbox_id=row.id,
                account=row.account,
                origin=row.origin,
                message_id=row.message_id,
                sent_at=as_utc(row.sent_at),
                lines=lines.get(row.id, []),
            )
            for row in rows
        ]


def _describe(line: BounceLine) -> str:
    return " ".join(part for part in (f"{line.recipient}:", line.status, line.diagnostic) if part)


def _suppress(
    conn: Connection,
    account: str,
    address: str,
    entry: dict[str, Any],
    report_key: str | None,
    evidence: str | None,
    now: datetime,
) -> bool:
    there = conn.scalar(select(exists().where(suppressions.c.account == account, suppressions.c.address == address)))
    if there:
        return False
    conn.execute(
        insert(suppressions).values(
            account=account,
            address=address,
            **entry,
            report_key=report_key,
            evidence=(evidence or "")[:2000] or None,
            created_at=now,
        )
    )
    return True


def _suppression(m: Any) -> Suppression:
    return Suppression(
        account=m["account"],
        address=m["address"],
        status=m["status"],
        diagnostic=m["diagnostic"] or "",
        outbox_id=m["outbox_id"],
        created_at=as_utc(m["created_at"]),
        report_key=m["report_key"] or "",
        evidence=m["evidence"] or "",
    )
