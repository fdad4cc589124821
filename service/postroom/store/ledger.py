"""Queries for the action ledger, the auto-reply memory and the webhook delivery queue.

- ``actions``: one row per (message key, rule, action index). ``planned`` is written before an
  action runs and ``done`` after, so after a crash a ``planned`` row means "in doubt" and
  ``done`` means "never again". ``failed`` is a known transient failure; ``dead`` gave up.
- ``replies``: when an auto-reply last went to a sender, for "once per sender per N days".
- ``webhooks``: a delivery queue keyed by ``webhook_id`` (stable across retries), leased like
  the outbox: ``queued`` → ``sending`` (lease) → ``done`` | back to ``queued`` later | ``dead``.
  Leases are short and renewed by the holder while a request runs (``renew_webhooks``), and
  expire by PostgreSQL's clock there (``dbtime``). A webhook action's ledger row is ``done``
  with ``{"webhook": "queued"}`` once its delivery is stored, and says ``"delivered"`` (or turns
  ``dead``) when the delivery ends, in the same transaction: "queued" is never read as "sent".

All writes for a batch happen in one transaction each, so a batch of thousands of messages
costs a handful of statements, not thousands of round trips.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, bindparam, func, insert, or_, select, true, update

from .bulk import insert_rows, update_rows
from .calls import StoreCalls
from .dbtime import db_later, db_now
from .engine import as_utc
from .tables import actions, replies, webhooks

#: (message key, rule, action index): the primary key of an ``actions`` row.
ActionId = tuple[str, str, int]

_CHUNK = 500  # keeps IN (...) lists under every backend's parameter limit


@dataclass(frozen=True)
class LedgerEntry:
    status: str  # planned | done | failed | dead
    attempts: int
    detail: dict[str, Any] | None
    error: str | None


@dataclass(frozen=True)
class WebhookDelivery:
    webhook_id: str
    action_key: str
    rule: str
    url: str
    payload: bytes
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> WebhookDelivery:
        m = row._mapping
        return cls(
            webhook_id=m["webhook_id"],
            action_key=m["action_key"],
            rule=m["rule"],
            url=m["url"],
            payload=m["payload"],
            status=m["status"],
            attempts=m["attempts"],
            next_attempt_at=as_utc(m["next_attempt_at"]),
            last_error=m["last_error"],
            created_at=as_utc(m["created_at"]),
        )


#: (action id, status done|failed|dead, detail, error): one action's recorded outcome
FinishedAction = tuple[ActionId, str, dict[str, Any] | None, str | None]


def finish_actions(conn: Any, results: Sequence[FinishedAction], now: datetime) -> None:
    """``LedgerStore.finish`` inside the caller's transaction (also ``InboundStore.finish_many``'s,
    so a batch's action outcomes, inbound rows and checkpoint commit together)."""
    if not results:
        return
    rows = [(status, detail, (error or None) and error[:2000], *a) for a, status, detail, error in results]
    # only rows still planned/failed: a webhook delivered meanwhile (by any replica)
    # already wrote its row as done + delivered, which "queued" must not overwrite
    update_rows(
        conn,
        actions,
        ("status", "detail", "error"),
        ("message_key", "rule", "action_index"),
        rows,
        {"updated_at": now},
        where="status IN ('planned', 'failed')",
    )


class LedgerStore:
    def __init__(self, engine: Engine, *, owner: str, calls: StoreCalls):
        self.engine = engine
        self.calls = calls  # the store's threads: store_call runs this part's methods there
        self.owner = owner

    # -- actions ---------------------------------------------------------------------------
    def entries(self, message_keys: Iterable[str]) -> dict[ActionId, LedgerEntry]:
        """Every ledger row of these messages."""
        found: dict[ActionId, LedgerEntry] = {}
        keys = sorted(set(message_keys))
        with self.engine.connect() as conn:
            for chunk in _chunks(keys):
                rows = conn.execute(select(actions).where(actions.c.message_key.in_(chunk)))
                for row in rows:
                    m = row._mapping
                    found[(m["message_key"], m["rule"], m["action_index"])] = LedgerEntry(
                        m["status"], m["attempts"], m["detail"], m["error"]
                    )
        return found

    def plan(self, planned: Sequence[tuple[ActionId, str]], *, now: datetime) -> None:
        """Mark actions ``planned`` (about to run), counting an attempt. Rows already ``done``
        or ``dead`` are left alone; the caller never plans those."""
        self.record(planned=planned, now=now)

    def record(
        self,
        *,
        planned: Sequence[tuple[ActionId, str]] = (),
        finished: Sequence[FinishedAction] = (),
        now: datetime,
    ) -> None:
        """``plan`` then ``finish`` in one transaction (one fsync): the executor records one
        phase's outcomes together with the next phase's plan, and actions skipped without
        running are planned and finished at once."""
        if not planned and not finished:
            return
        with self.engine.begin() as conn:
            self._plan(conn, planned, now)
            finish_actions(conn, finished, now)

    def _plan(self, conn: Any, planned: Sequence[tuple[ActionId, str]], now: datetime) -> None:
        if planned:
            ids = [aid for aid, _ in planned]
            existing = self._existing(conn, ids)
            # thousands of rows: plain executemany (postroom.store.bulk), one transaction
            insert_rows(
                conn,
                actions,
                ("message_key", "rule", "action_index", "kind"),
                [(*a, kind) for a, kind in planned if a not in existing],
                {"status": "planned", "attempts": 1, "updated_at": now},
            )
            again = [dict(k=a[0], r=a[1], i=a[2]) for a, _ in planned if a in existing]
            if again:
                conn.execute(
                    update(actions)
                    # no IN (...) here: expanding parameters can't be used with executemany
                    .where(_id_match(), or_(actions.c.status == "planned", actions.c.status == "failed"))
                    .values(status="planned", attempts=actions.c.attempts + 1, updated_at=now),
                    again,
                )

    def finish(self, results: Sequence[FinishedAction], *, now: datetime) -> None:
        """Record outcomes: (action id, status done|failed|dead, detail, error)."""
        if not results:
            return
        with self.engine.begin() as conn:
            finish_actions(conn, results, now)

    @staticmethod
    def _existing(conn: Any, ids: Sequence[ActionId]) -> set[ActionId]:
        wanted = set(ids)
        found: set[ActionId] = set()
        for chunk in _chunks(sorted({a[0] for a in ids})):
            rows = conn.execute(
                select(actions.c.message_key, actions.c.rule, actions.c.action_index).where(
                    actions.c.message_key.in_(chunk)
                )
            )
            found |= {(r[0], r[1], r[2]) for r in rows} & wanted
        return found

    # -- replies ---------------------------------------------------------------------------
    def last_replies(self, account: str, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], datetime]:
        """When each (rule, sender) last got an auto-reply from ``account``; absent: never."""
        wanted = set(pairs)
        found: dict[tuple[str, str], datetime] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(sorted({sender for _, sender in wanted})):
                rows = conn.execute(
                    select(replies.c.rule, replies.c.sender, replies.c.last_sent_at).where(
                        replies.c.account == account, replies.c.sender.in_(chunk)
                    )
                )
                found.update({(r[0], r[1]): as_utc(r[2]) for r in rows if (r[0], r[1]) in wanted})
        return found

    def last_reply(self, account: str, rule: str, sender: str) -> datetime | None:
        return self.last_replies(account, [(rule, sender)]).get((rule, sender))

    def record_replies(self, account: str, pairs: Iterable[tuple[str, str]], *, now: datetime) -> None:
        """Remember that each (rule, sender) got an auto-reply now, in one transaction."""
        wanted = set(pairs)
        if not wanted:
            return
        with self.engine.begin() as conn:
            existing: set[tuple[str, str]] = set()
            for chunk in _chunks(sorted({sender for _, sender in wanted})):
                rows = conn.execute(
                    select(replies.c.rule, replies.c.sender).where(
                        replies.c.account == account, replies.c.sender.in_(chunk)
                    )
                )
                existing |= {(r[0], r[1]) for r in rows} & wanted
            if existing:
                conn.execute(
                    update(replies)
                    .where(
                        replies.c.account == account,
                        replies.c.rule == bindparam("r"),
                        replies.c.sender == bindparam("s"),
                    )
                    .values(last_sent_at=now),
                    [dict(r=rule, s=sender) for rule, sender in existing],
                )
            new = wanted - existing
            if new:
                conn.execute(
                    insert(replies),
                    [dict(account=account, rule=rule, sender=sender, last_sent_at=now) for rule, sender in new],
                )

    def record_reply(self, account: str, rule: str, sender: str, *, now: datetime) -> None:
        self.record_replies(account, [(rule, sender)], now=now)

    # -- webhooks --------------------------------------------------------------------------
    def enqueue_webhooks(self, rows: Sequence[dict[str, Any]], *, now: datetime) -> int:
        """Insert deliveries (webhook_id, action_key, rule, url, payload) not already queued.
        Returns how many were new."""
        if not rows:
            return 0
        with self.engine.begin() as conn:
            existing: set[str] = set()
            for chunk in _chunks([r["webhook_id"] for r in rows]):
                existing |= set(conn.scalars(select(webhooks.c.webhook_id).where(webhooks.c.webhook_id.in_(chunk))))
            new = [
                dict(r, status="queued", attempts=0, next_attempt_at=now, created_at=now, updated_at=now)
                for r in {r["webhook_id"]: r for r in rows}.values()
                if r["webhook_id"] not in existing
            ]
            if new:
                conn.execute(insert(webhooks), new)
        return len(new)

    def claim_webhooks(
        self, *, now: datetime, limit: int, lease: timedelta, skip_urls: Collection[str] = ()
    ) -> list[WebhookDelivery]:
        """Lease up to ``limit`` due deliveries, none to a URL in ``skip_urls`` (receivers the
        caller is still busy with)."""
        token = f"{self.owner}/{uuid.uuid4().hex[:12]}"
        with self.engine.begin() as conn:
            due = or_(
                and_(webhooks.c.status == "queued", webhooks.c.next_attempt_at <= now),
                and_(webhooks.c.status == "sending", webhooks.c.lease_until < db_now(conn, now)),
            )
            if skip_urls:
                due = and_(due, webhooks.c.url.not_in(list(skip_urls)))
            pick = (
                select(webhooks.c.webhook_id)
                .where(due)
                .order_by(webhooks.c.next_attempt_at, webhooks.c.webhook_id)
                .limit(limit)
            )
            if conn.dialect.name == "postgresql":
                pick = pick.with_for_update(skip_locked=True)
            ids = list(conn.scalars(pick))
            if not ids:
                return []
            conn.execute(
                update(webhooks)
                .where(webhooks.c.webhook_id.in_(ids), due)
                .values(status="sending", lease_owner=token, lease_until=db_later(conn, now, lease), updated_at=now)
            )
            rows = conn.execute(
                select(webhooks).where(webhooks.c.lease_owner == token).order_by(webhooks.c.next_attempt_at)
            )
            return [WebhookDelivery.from_row(r) for r in rows]

    def renew_webhooks(self, webhook_ids: Collection[str], *, now: datetime, lease: timedelta) -> int:
        """Heartbeat: extend this process's leases on these deliveries (still `sending`, still
        ours) to now + lease. Returns how many were renewed."""
        ids = sorted(webhook_ids)
        renewed = 0
        with self.engine.begin() as conn:
            for chunk in _chunks(ids):
                renewed += conn.execute(
                    update(webhooks)
                    .where(
                        webhooks.c.webhook_id.in_(chunk),
                        webhooks.c.status == "sending",
                        webhooks.c.lease_owner.startswith(f"{self.owner}/", autoescape=True),
                    )
                    .values(lease_until=db_later(conn, now, lease))
                ).rowcount
        return renewed

    def webhook_done(self, delivery: WebhookDelivery, *, now: datetime) -> None:
        self._webhook_update(delivery, now, status="done", attempts=delivery.attempts + 1, last_error=None)

    def webhook_retry(self, delivery: WebhookDelivery, *, now: datetime, retry_at: datetime, error: str) -> None:
        self._webhook_update(
            delivery,
            now,
            status="queued",
            attempts=delivery.attempts + 1,
            next_attempt_at=retry_at,
            last_error=error[:2000],
        )

    def webhook_dead(self, delivery: WebhookDelivery, *, now: datetime, error: str) -> None:
        self._webhook_update(delivery, now, status="dead", attempts=delivery.attempts + 1, last_error=error[:2000])

    def release_webhooks(self, deliveries: Iterable[WebhookDelivery], *, now: datetime) -> None:
        """Hand leased rows back untouched (shutdown): due again at once."""
        ids = [d.webhook_id for d in deliveries]
        if ids:
            with self.engine.begin() as conn:
                conn.execute(
                    update(webhooks)
                    .where(webhooks.c.webhook_id.in_(ids), webhooks.c.status == "sending")
                    .values(status="queued", lease_owner=None, lease_until=None, updated_at=now)
                )

    def release_all_webhook_leases(self, *, now: datetime) -> int:
        """Single-node recovery at start: every delivery left `sending` is due again now."""
        with self.engine.begin() as conn:
            return conn.execute(
                update(webhooks)
                .where(webhooks.c.status == "sending")
                .values(status="queued", lease_owner=None, lease_until=None, next_attempt_at=now, updated_at=now)
            ).rowcount

    def _webhook_update(self, delivery: WebhookDelivery, now: datetime, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(webhooks)
                .where(webhooks.c.webhook_id == delivery.webhook_id)
                .values(lease_owner=None, lease_until=None, updated_at=now, **values)
            )
            if values["status"] in ("done", "dead"):  # the action's ledger row says how it ended
                self._webhook_action_ended(conn, delivery, now, values)

    @staticmethod
    def _webhook_action_ended(conn: Any, delivery: WebhookDelivery, now: datetime, values: dict[str, Any]) -> None:
        """The action stays ``done`` (its part, storing the delivery, is done; a dead delivery
        is listed by `rules failed` from the webhooks table); its detail says how it ended.
        Written ``done`` here too: if this comes before the executor's own ``finish`` (another
        replica delivered it first), that finish leaves the row alone (it only moves rows out
        of planned/failed)."""
        head, _, index = delivery.action_key.rpartition("|")
        suffix = f"|{delivery.rule}"
        if not index.isdigit() or not head.endswith(suffix):
            return  # not an action key (a hand-made delivery): no ledger row to update
        ended = "delivered" if values["status"] == "done" else "dead"
        conn.execute(
            update(actions)
            .where(
                actions.c.message_key == head[: -len(suffix)],
                actions.c.rule == delivery.rule,
                actions.c.action_index == int(index),
            )
            .values(
                status="done",
                detail={"webhook": ended, "webhook_id": delivery.webhook_id},
                error=values.get("last_error"),
                updated_at=now,
            )
        )

    def webhook(self, webhook_id: str) -> WebhookDelivery | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(webhooks).where(webhooks.c.webhook_id == webhook_id)).first()
        return WebhookDelivery.from_row(row) if row else None

    def dead_webhooks(self, *, limit: int = 100) -> list[WebhookDelivery]:
        """Webhook dead letters, oldest first, for `postroom rules failed`."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(webhooks).where(webhooks.c.status == "dead").order_by(webhooks.c.updated_at).limit(limit)
            )
            return [WebhookDelivery.from_row(r) for r in rows]

    def webhooks(self, *, statuses: Sequence[str], limit: int = 100) -> list[WebhookDelivery]:
        """Deliveries in these states, oldest first (the console's webhooks page)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(webhooks)
                .where(webhooks.c.status.in_(list(statuses)))
                .order_by(webhooks.c.created_at)
                .limit(limit)
            )
            return [WebhookDelivery.from_row(r) for r in rows]

    def retry_webhook(self, webhook_id: str, *, now: datetime) -> bool:
        """Put a dead delivery back in the queue, due now, with a fresh count of attempts."""
        with self.engine.begin() as conn:
            return (
                conn.execute(
                    update(webhooks)
                    .where(webhooks.c.webhook_id == webhook_id, webhooks.c.status == "dead")
                    .values(status="queued", attempts=0, next_attempt_at=now, updated_at=now)
                ).rowcount
                == 1
            )

    def dead_actions(self, *, limit: int = 100) -> list[tuple[ActionId, str, str | None]]:
        """(action id, kind, reason) of actions given up on, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(actions.c.message_key, actions.c.rule, actions.c.action_index, actions.c.kind, actions.c.error)
                .where(actions.c.status == "dead")
                .order_by(actions.c.updated_at)
                .limit(limit)
            )
            return [((key, rule, index), kind, error) for key, rule, index, kind, error in rows]

    def webhook_counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(webhooks.c.status, func.count()).group_by(webhooks.c.status))
            return {status: n for status, n in rows}

    def next_webhook_due(self, *, skip_urls: Collection[str] = ()) -> datetime | None:
        """When the next delivery falls due, none to a URL in ``skip_urls`` counted."""
        others = webhooks.c.url.not_in(list(skip_urls)) if skip_urls else true()
        with self.engine.connect() as conn:
            queued = conn.scalar(
                select(func.min(webhooks.c.next_attempt_at)).where(webhooks.c.status == "queued", others)
            )
            lease = conn.scalar(select(func.min(webhooks.c.lease_until)).where(webhooks.c.status == "sending", others))
        candidates = [as_utc(v) for v in (queued, lease) if v is not None]
        return min(candidates) if candidates else None


def _id_match() -> Any:
    return and_(
        actions.c.message_key == bindparam("k"),
        actions.c.rule == bindparam("r"),
        actions.c.action_index == bindparam("i"),
    )


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]
