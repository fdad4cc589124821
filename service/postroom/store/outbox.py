"""The outbox: every outgoing message is a row before it is a connection.

Life of a row: `queued` → (claimed with a lease) `sending` → `sent` | back to `queued` with a
later `next_attempt_at` | `held` (not tried: its account waits for an OAuth2 sign-in; due again
like `queued`) | `dead`. A row whose every recipient the server refused for good is `dead`;
one with some refused is `sent`, the refused ones kept in `refused` with the server's replies.
Leases are short (POSTROOM_LEASE_SECONDS) and the holder
renews them while it works (``renew``): a sender that dies mid-send leaves `sending` with a
lease that runs out within seconds; the row is then claimed again, by any replica, and sent with
the same Message-ID, so the only possible duplicate is a message that was in flight at the
crash, and it is recognisable. Lease expiry is PostgreSQL's clock there (``dbtime``).

Enqueueing is idempotent on `dedup_key`: re-running a half-finished job fire enqueues nothing
that is already there.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Engine, Text, and_, bindparam, cast, func, insert, or_, select, update

from .calls import StoreCalls
from .dbtime import db_later, db_now
from .engine import as_utc
from .tables import outbox

# Rows waiting to go out, and those of them a sender may claim once due.
WAITING = ("queued", "held", "sending")
DUE = ("queued", "held")
# Rows that went out (to some recipients at least): where refused recipients are listed.
WENT_OUT = ("sent", "bounced")


@dataclass(frozen=True)
class NewMessage:
    dedup_key: str
    message_id: str
    account: str
    envelope_from: str
    recipients: Sequence[str]
    raw: bytes
    origin: str = ""


@dataclass(frozen=True)
class OutboxItem:
    id: int
    dedup_key: str
    message_id: str
    account: str
    envelope_from: str
    recipients: list[str]
    raw: bytes
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    delivered: list[str]
    refused: dict[str, str]
    origin: str
    created_at: datetime
    sent_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Any) -> OutboxItem:
        m = row._mapping
        return cls(
            id=m["id"],
            dedup_key=m["dedup_key"],
            message_id=m["message_id"],
            account=m["account"],
            envelope_from=m["envelope_from"],
            recipients=list(m["recipients"] or []),
            raw=m["raw"],
            status=m["status"],
            attempts=m["attempts"],
            next_attempt_at=as_utc(m["next_attempt_at"]),
            last_error=m["last_error"],
            delivered=list(m["delivered"] or []),
            refused=dict(m["refused"] or {}),
            origin=m["origin"],
            created_at=as_utc(m["created_at"]),
            sent_at=as_utc(m["sent_at"]),
        )


#: A send's result: "sent"; "deferred" (needs retry_at); "held" (not tried: the account waits
#: for a sign-in; needs retry_at); "dead". The outbox's ``status`` column holds these strings.
SettlementKind = Literal["sent", "deferred", "held", "dead"]


@dataclass(frozen=True)
class Settlement:
    """One send's result to record (``SettlementKind`` says what each kind means)."""

    kind: SettlementKind
    item: OutboxItem
    now: datetime
    delivered: Sequence[str] = ()
    refused: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    retry_at: datetime | None = None
    remaining: Sequence[str] | None = None  # deferred: who is still owed (default: the rest)


class OutboxStore:
    def __init__(self, engine: Engine, *, owner: str, calls: StoreCalls):
        self.engine = engine
        self.calls = calls  # the store's threads: store_call runs this part's methods there
        self.owner = owner

    # -- writing ---------------------------------------------------------------------------
    def enqueue(self, messages: Iterable[NewMessage], *, now: datetime, run_id: int | None = None) -> int:
        """Store messages for sending, in one transaction. Returns how many were new.
        ``run_id``: the job run that made them (its outcome counts them)."""
        new, _ids = self._insert(list(messages), now=now, lease=None, run_id=run_id)
        return len(new)

    def enqueue_leased(
        self,
        messages: Iterable[NewMessage],
        *,
        now: datetime,
        lease: timedelta,
        keep: int | None = None,
        run_id: int | None = None,
    ) -> list[OutboxItem]:
        """Store messages, the first ``keep`` new ones (default: all) already claimed by this
        process (`sending`, leased until now + lease), in one transaction, and return those
        as items to send. The others are stored `queued`, due now: any replica's sender claims
        them a chunk at a time, so a large merge is shared out and never waits on one holder.

        For a sender in this process that takes them straight from memory: no claim
        transaction reading every row (and its raw body) back. They are stored before they are
        handed over, so a crash leaves them `sending`, due again once recovered or the lease
        runs out, like claimed rows. Rows already there (a fire re-run) are not returned: they
        are claimed the usual way."""
        new, ids = self._insert(list(messages), now=now, lease=lease, keep=keep, run_id=run_id)
        return [_pending_item(i, m, now) for i, m in zip(ids, new, strict=True)]

    def _insert(
        self,
        batch: list[NewMessage],
        *,
        now: datetime,
        lease: timedelta | None,
        keep: int | None = None,
        run_id: int | None = None,
    ) -> tuple[list[NewMessage], list[int]]:
        """Insert the messages not there yet: (those, the ids of the first ``keep`` if leased,
        else [])."""
        leased = lease is not None
        token = f"{self.owner}/{uuid.uuid4().hex[:12]}" if leased else None
        with self.engine.begin() as conn:
            lease_until = db_later(conn, now, lease) if lease is not None else None
            existing: set[str] = set()
            for chunk in _chunks([m.dedup_key for m in batch], 500):
                existing |= set(conn.scalars(select(outbox.c.dedup_key).where(outbox.c.dedup_key.in_(chunk))))
            new = [m for m in batch if m.dedup_key not in existing]
            if not new:
                return [], []
            kept = len(new) if keep is None or not leased else min(keep, len(new))
            rows: list[dict[str, Any]] = [
                dict(
                    dedup_key=m.dedup_key,
                    message_id=m.message_id,
                    account=m.account,
                    envelope_from=m.envelope_from,
                    recipients=list(m.recipients),
                    raw=m.raw,
                    status="queued",
                    attempts=0,
                    next_attempt_at=now,
                    delivered=[],
                    refused={},
                    origin=m.origin,
                    created_at=now,
                    updated_at=now,
                    lease_owner=None,
                    lease_until=None,
                    run_id=run_id,
                )
                for m in new
            ]
            if not leased:
                conn.execute(insert(outbox), rows)
                return new, []
            # the kept rows as `sending` with the lease (an SQL expression: one statement each way)
            sending = [dict(r, status="sending", lease_owner=token) for r in rows[:kept]]
            ids: list[int] = []
            if sending:
                stmt = insert(outbox).values(lease_until=lease_until)
                ids = list(
                    conn.scalars(
                        stmt.returning(outbox.c.id, sort_by_parameter_order=True),
                        [{k: v for k, v in r.items() if k != "lease_until"} for r in sending],
                    )
                )
            if rows[kept:]:
                conn.execute(insert(outbox), rows[kept:])
        return new[:kept], ids

    def claim_due(self, *, now: datetime, limit: int, lease: timedelta, account: str | None = None) -> list[OutboxItem]:
        """Take up to `limit` due rows for this process, leased until now + lease."""
        token = f"{self.owner}/{uuid.uuid4().hex[:12]}"
        with self.engine.begin() as conn:
            due = or_(
                and_(outbox.c.status.in_(DUE), outbox.c.next_attempt_at <= now),
                and_(outbox.c.status == "sending", outbox.c.lease_until < db_now(conn, now)),
            )
            pick = select(outbox.c.id).where(due).order_by(outbox.c.next_attempt_at, outbox.c.id).limit(limit)
            if account is not None:
                pick = pick.where(outbox.c.account == account)
            if conn.dialect.name == "postgresql":
                pick = pick.with_for_update(skip_locked=True)
            ids = list(conn.scalars(pick))
            if not ids:
                return []
            conn.execute(
                update(outbox)
                .where(outbox.c.id.in_(ids), due)
                .values(status="sending", lease_owner=token, lease_until=db_later(conn, now, lease), updated_at=now)
            )
            rows = conn.execute(select(outbox).where(outbox.c.lease_owner == token).order_by(outbox.c.id))
            return [OutboxItem.from_row(r) for r in rows]

    def renew(self, item_ids: Sequence[int], *, now: datetime, lease: timedelta) -> set[int]:
        """Heartbeat: extend this process's leases on these rows (still `sending`, still ours)
        to now + lease. Returns the ids renewed; a row missing was settled meanwhile, or taken by
        another replica after its lease ran out (the sender then leaves it to that one)."""
        renewed: set[int] = set()
        with self.engine.begin() as conn:
            for chunk in _chunks(sorted(item_ids), 500):
                renewed.update(
                    conn.scalars(
                        update(outbox)
                        .where(
                            outbox.c.id.in_(chunk),
                            outbox.c.status == "sending",
                            outbox.c.lease_owner.startswith(f"{self.owner}/", autoescape=True),
                        )
                        .values(lease_until=db_later(conn, now, lease))
                        .returning(outbox.c.id)
                    )
                )
        return renewed

    def mark_sent(self, item: OutboxItem, *, now: datetime, delivered: Sequence[str], refused: dict[str, str]) -> None:
        """Done: every recipient was accepted or permanently refused (recorded with the reply)."""
        self.settle_many([Settlement("sent", item, now, delivered=delivered, refused=refused)])

    def defer(
        self,
        item: OutboxItem,
        *,
        now: datetime,
        retry_at: datetime,
        error: str,
        delivered: Sequence[str] = (),
        refused: dict[str, str] | None = None,
        remaining: Sequence[str] | None = None,
    ) -> None:
        """Try again later; recipients already accepted are not sent to again."""
        self.settle_many(
            [
                Settlement(
                    "deferred",
                    item,
                    now,
                    delivered=delivered,
                    refused=refused or {},
                    error=error,
                    retry_at=retry_at,
                    remaining=remaining,
                )
            ]
        )

    def kill(
        self,
        item: OutboxItem,
        *,
        now: datetime,
        error: str,
        delivered: Sequence[str] = (),
        refused: dict[str, str] | None = None,
    ) -> None:
        """A dead letter: kept with the reason, sent again only by `outbox retry`.

        `recipients` keeps only those not yet accepted, so a retry never mails someone twice.
        """
        self.settle_many([Settlement("dead", item, now, delivered=delivered, refused=refused or {}, error=error)])

    def settle_many(self, settlements: Sequence[Settlement]) -> None:
        """Record several send results in one transaction (one commit, one fsync).

        The sender batches the results of its parallel connections this way: a message is
        marked sent only after the server took it, so a crash before this commit leaves those
        rows `sending`, and they go out again with the same Message-ID.
        """
        if not settlements:
            return
        by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for s in settlements:
            values = _settled_values(s)
            by_columns.setdefault(tuple(sorted(values)), []).append(
                {"b_id": s.item.id, **{f"b_{k}": v for k, v in values.items()}}
            )
        with self.engine.begin() as conn:
            for columns, rows in by_columns.items():  # one executemany per kind of result
                stmt = (
                    update(outbox)
                    .where(outbox.c.id == bindparam("b_id"))
                    .values({c: bindparam(f"b_{c}", type_=outbox.c[c].type) for c in columns})
                )
                conn.execute(stmt, rows)

    def release(self, items: Iterable[OutboxItem], *, now: datetime) -> None:
        """Hand claimed rows back untouched (shutdown): they are due again at once."""
        ids = [i.id for i in items]
        if not ids:
            return
        with self.engine.begin() as conn:
            conn.execute(  # only rows still ours: one another replica took meanwhile stays its
                update(outbox)
                .where(
                    outbox.c.id.in_(ids),
                    outbox.c.status == "sending",
                    outbox.c.lease_owner.startswith(f"{self.owner}/", autoescape=True),
                )
                .values(status="queued", lease_owner=None, lease_until=None, updated_at=now)
            )

    def bring_forward(self, accounts: Sequence[str], *, now: datetime, within: timedelta) -> int:
        """Rows of ``accounts`` waiting to be due within ``within`` are due now (an account
        that signed in again: its held rows need not wait out the hold)."""
        if not accounts:
            return 0
        with self.engine.begin() as conn:
            result = conn.execute(
                update(outbox)
                .where(
                    outbox.c.account.in_(list(accounts)),
                    outbox.c.status.in_(DUE),
                    outbox.c.next_attempt_at <= now + within,
                )
                .values(next_attempt_at=now, updated_at=now)
            )
            return result.rowcount

    def release_all_leases(self, *, now: datetime) -> int:
        """Single-node recovery at start: every row left `sending` is due again now."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(outbox)
                .where(outbox.c.status == "sending")
                .values(status="queued", lease_owner=None, lease_until=None, next_attempt_at=now, updated_at=now)
            )
            return result.rowcount

    def retry(self, item_id: int, *, now: datetime) -> bool:
        """Put a dead letter back in the queue (its remaining recipients, same Message-ID)."""
        with self.engine.begin() as conn:
            row = conn.execute(select(outbox).where(outbox.c.id == item_id)).first()
            if row is None or row._mapping["status"] != "dead":
                return False
            item = OutboxItem.from_row(row)
            remaining = item.recipients or [r for r in item.refused if r not in item.delivered]
            conn.execute(
                update(outbox)
                .where(outbox.c.id == item_id)
                .values(
                    status="queued",
                    next_attempt_at=now,
                    attempts=0,
                    updated_at=now,
                    recipients=remaining,
                    refused={k: v for k, v in item.refused.items() if k not in remaining},
                )
            )
            return True

    def discard(self, item_id: int, *, now: datetime) -> bool:
        """Give up on a dead letter for good (the console's "discard"): kept as `discarded`,
        so what was given up on stays on record, and never sent."""
        with self.engine.begin() as conn:
            return (
                conn.execute(
                    update(outbox)
                    .where(outbox.c.id == item_id, outbox.c.status == "dead")
                    .values(status="discarded", updated_at=now)
                ).rowcount
                == 1
            )

    # -- reading ---------------------------------------------------------------------------
    def get(self, item_id: int) -> OutboxItem | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(outbox).where(outbox.c.id == item_id)).first()
        return OutboxItem.from_row(row) if row else None

    def by_message_ids(self, message_ids: Iterable[str]) -> list[OutboxItem]:
        ids = list(message_ids)
        out: list[OutboxItem] = []
        with self.engine.connect() as conn:
            for chunk in _chunks(ids, 500):
                rows = conn.execute(select(outbox).where(outbox.c.message_id.in_(chunk)))
                out.extend(OutboxItem.from_row(r) for r in rows)
        return out

    def with_refused(self, *, limit: int = 100) -> list[OutboxItem]:
        """Rows that went out with some recipients refused for good, newest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(outbox)
                .where(outbox.c.status.in_(WENT_OUT), cast(outbox.c.refused, Text).not_in(["{}", "null"]))
                .order_by(outbox.c.id.desc())
                .limit(limit)
            )
            return [OutboxItem.from_row(r) for r in rows]

    def refused_count(self) -> int:
        """How many rows went out with some recipients refused (the console's overview)."""
        with self.engine.connect() as conn:
            return int(
                conn.scalar(
                    select(func.count()).where(
                        outbox.c.status.in_(WENT_OUT), cast(outbox.c.refused, Text).not_in(["{}", "null"])
                    )
                )
                or 0
            )

    def list(self, *, statuses: Sequence[str], limit: int = 100) -> list[OutboxItem]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(outbox).where(outbox.c.status.in_(statuses)).order_by(outbox.c.id).limit(limit))
            return [OutboxItem.from_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(outbox.c.status, func.count()).group_by(outbox.c.status))
            return {status: n for status, n in rows}

    def oldest_waiting(self) -> datetime | None:
        """When the oldest row still to send (queued or being sent) was queued: its age is
        how far the outbox is behind (postroom_outbox_oldest_age_seconds). Held rows wait for a
        person, not the sender, and have their own gauge and alert."""
        with self.engine.connect() as conn:
            value = conn.scalar(select(func.min(outbox.c.created_at)).where(outbox.c.status.in_(("queued", "sending"))))
        return as_utc(value) if value is not None else None

    def next_due(self) -> datetime | None:
        with self.engine.connect() as conn:
            value = conn.scalar(select(func.min(outbox.c.next_attempt_at)).where(outbox.c.status.in_(DUE)))
            lease = conn.scalar(select(func.min(outbox.c.lease_until)).where(outbox.c.status == "sending"))
        candidates = [as_utc(v) for v in (value, lease) if v is not None]
        return min(candidates) if candidates else None


def _pending_item(item_id: int, m: NewMessage, now: datetime) -> OutboxItem:
    """The item a freshly inserted, leased row reads back as, built without reading it."""
    return OutboxItem(
        id=item_id,
        dedup_key=m.dedup_key,
        message_id=m.message_id,
        account=m.account,
        envelope_from=m.envelope_from,
        recipients=list(m.recipients),
        raw=m.raw,
        status="sending",
        attempts=0,
        next_attempt_at=now,
        last_error=None,
        delivered=[],
        refused={},
        origin=m.origin,
        created_at=now,
    )


def _settled_values(s: Settlement) -> dict[str, Any]:
    """The columns a result changes: the row leaves `sending`, its lease is dropped."""
    item, now = s.item, s.now
    common = dict(
        updated_at=now,
        attempts=item.attempts + 1,
        lease_owner=None,
        lease_until=None,
        delivered=sorted(set(item.delivered) | set(s.delivered)),
        refused={**item.refused, **s.refused},
    )
    if s.kind == "sent":
        return dict(common, status="sent", sent_at=now, recipients=[], last_error=_refused_summary(s.refused))
    if s.kind == "deferred":
        if s.retry_at is None:
            raise ValueError("a deferred result needs retry_at")
        left = (
            list(s.remaining)
            if s.remaining is not None
            else [r for r in item.recipients if r not in s.delivered and r not in s.refused]
        )
        return dict(
            common, status="queued", next_attempt_at=s.retry_at, last_error=(s.error or "")[:2000], recipients=left
        )
    if s.kind == "held":  # not a try: the attempts stay what they were
        if s.retry_at is None:
            raise ValueError("a held result needs retry_at")
        return dict(
            common,
            attempts=item.attempts,
            status="held",
            next_attempt_at=s.retry_at,
            last_error=(s.error or "")[:2000],
        )
    if s.kind == "dead":
        return dict(
            common,
            status="dead",
            last_error=(s.error or "unknown error")[:2000],
            recipients=[r for r in item.recipients if r not in s.delivered],
        )
    raise ValueError(f"unknown result kind {s.kind!r}")


def _refused_summary(refused: dict[str, str]) -> str | None:
    if not refused:
        return None
    return "; ".join(f"{rcpt}: {reply}" for rcpt, reply in sorted(refused.items()))[:2000]


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
