"""Checkpoints and inbound messages: what each watcher has taken in, and what became of it.

A checkpoint holds, per (account, folder), the UIDVALIDITY and the highest UID a watcher has
looked at; messages above it are new. Each inbound message gets a row keyed
"account/folder/uidvalidity/uid" (or "account/pop3/uidl") once its outcome is known: done,
failed (retried with backoff, a bounded number of times) or set_aside (gave up; listed for a
human). Watchers write rows a batch at a time (``statuses`` before, ``finish_many`` after);
``begin`` (a pending row) and ``finish`` are the one-message forms. The row, not the
checkpoint, is what keeps a message from being handled twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Row, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..retry import doubling_delay
from .bulk import insert_rows, update_rows
from .calls import StoreCalls
from .engine import as_utc, to_utc
from .ledger import FinishedAction, finish_actions
from .tables import checkpoints, inbound

PENDING, DONE, FAILED, SET_ASIDE = "pending", "done", "failed", "set_aside"
SKIPPED = "skipped"  # there before the first start with start_from=new: never handled
FINISHED = (DONE, SET_ASIDE, SKIPPED)
_IN_CHUNK = 500  # values per IN (...) list
_FINISH_COLUMNS = (
    "key",
    "account",
    "folder",
    "uidvalidity",
    "uid",
    "uidl",
    "message_id",
    "status",
    "attempts",
    "error",
)


@dataclass(frozen=True)
class Checkpoint:
    account: str
    folder: str
    uidvalidity: int
    last_uid: int
    start_from: str
    updated_at: datetime


@dataclass(frozen=True)
class InboundRow:
    key: str
    account: str
    folder: str
    uidvalidity: int | None
    uid: int | None
    uidl: str | None
    message_id: str | None
    status: str
    attempts: int
    error: str | None
    updated_at: datetime


@dataclass(frozen=True)
class CheckpointWrite:
    """A checkpoint to move in the same transaction as a batch's rows (``finish_many``)."""

    account: str
    folder: str
    uidvalidity: int
    last_uid: int
    start_from: str


class InboundStore:
    def __init__(
        self,
        engine: Engine,
        *,
        calls: StoreCalls,
        max_attempts: int = 5,
        retry_base: timedelta = timedelta(minutes=1),
        retry_cap: timedelta = timedelta(hours=1),
    ):
        self.engine = engine
        self.calls = calls  # the store's threads: store_call runs this part's methods there
        self.max_attempts = max_attempts
        self.retry_base = retry_base
        self.retry_cap = retry_cap

    # -- checkpoints -----------------------------------------------------------------------

    def checkpoint(self, account: str, folder: str) -> Checkpoint | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(checkpoints).where(checkpoints.c.account == account, checkpoints.c.folder == folder)
            ).first()
        if row is None:
            return None
        return Checkpoint(
            row.account, row.folder, int(row.uidvalidity), int(row.last_uid), row.start_from, as_utc(row.updated_at)
        )

    def set_checkpoint(
        self, account: str, folder: str, *, uidvalidity: int, last_uid: int, start_from: str, now: datetime
    ) -> None:
        values = {"uidvalidity": uidvalidity, "last_uid": last_uid, "start_from": start_from, "updated_at": to_utc(now)}
        for _ in range(2):  # a concurrent insert between our update and insert: update again
            with self.engine.begin() as conn:
                changed = conn.execute(
                    update(checkpoints)
                    .where(checkpoints.c.account == account, checkpoints.c.folder == folder)
                    .values(**values)
                )
                if changed.rowcount:
                    return
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(checkpoints).values(account=account, folder=folder, **values))
                return
            except IntegrityError:
                continue

    # -- inbound rows ------------------------------------------------------------------------

    def begin(
        self,
        key: str,
        *,
        account: str,
        folder: str,
        now: datetime,
        uidvalidity: int | None = None,
        uid: int | None = None,
        uidl: str | None = None,
        message_id: str | None = None,
    ) -> str | None:
        """Insert a pending row for a new message; None if it was new, else the status it has."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(inbound).values(
                        _new_row(
                            dict(
                                key=key,
                                account=account,
                                folder=folder,
                                uidvalidity=uidvalidity,
                                uid=uid,
                                uidl=uidl,
                                message_id=message_id,
                            ),
                            now,
                        )
                    )
                )
            return None
        except IntegrityError:
            with self.engine.connect() as conn:
                status: str = conn.execute(select(inbound.c.status).where(inbound.c.key == key)).scalar_one()
                return status

    def statuses(self, keys: Sequence[str]) -> dict[str, str]:
        """key -> status of the rows that exist, in one query per 500 keys."""
        with self.engine.connect() as conn:
            return self._statuses(conn, keys)

    def finish_many(
        self,
        results: Sequence[tuple[str, str, str | None]],
        *,
        now: datetime,
        rows: Mapping[str, dict[str, Any]] | None = None,
        actions: Sequence[FinishedAction] = (),
        checkpoint: CheckpointWrite | None = None,
    ) -> dict[str, str]:
        """``finish`` for a whole batch, one transaction: (key, status, error) each. A key with
        no row yet gets one, from ``rows[key]`` (account, folder and optionally uidvalidity, uid,
        uidl, message_id). Returns key -> the status stored.

        ``actions`` (the ledger's outcomes of the batch's last phase) and ``checkpoint`` commit
        in the same transaction: one fsync per batch instead of three. Either all of it is
        recorded or none: after a crash the actions are still ``planned`` (in doubt, checked on
        the server) and the checkpoint has not passed the batch, so it is looked at again."""
        if not results and not actions and checkpoint is None:
            return {}
        stored: dict[str, str] = {}
        updates, inserts = [], []
        with self.engine.begin() as conn:
            finish_actions(conn, actions, now)
            if checkpoint is not None:
                _move_checkpoint(conn, checkpoint, now)
            attempts_of: dict[str, int] = {}
            keys = sorted({key for key, _, _ in results})
            for i in range(0, len(keys), _IN_CHUNK):
                attempts_of.update(
                    conn.execute(
                        select(inbound.c.key, inbound.c.attempts).where(inbound.c.key.in_(keys[i : i + _IN_CHUNK]))
                    ).all()
                )
            for key, status, error in results:
                is_new = key not in attempts_of
                status, attempts = self._next(status, attempts_of.get(key, 0))
                attempts_of[key] = attempts
                stored[key] = status
                if is_new:
                    if rows is None or key not in rows:
                        raise KeyError(f"inbound row {key!r} does not exist and no identity was given")
                    row = rows[key]
                    message_id = row.get("message_id") or None
                    inserts.append(
                        (
                            key,
                            row["account"],
                            row["folder"],
                            row.get("uidvalidity"),
                            row.get("uid"),
                            row.get("uidl"),
                            message_id and message_id[:998],
                            status,
                            attempts,
                            error,
                        )
                    )
                else:
                    updates.append((status, attempts, error, key))
            # thousands of rows: plain executemany (postroom.store.bulk), one transaction
            stamp = to_utc(now)
            insert_rows(conn, inbound, _FINISH_COLUMNS, inserts, {"created_at": stamp, "updated_at": stamp})
            update_rows(conn, inbound, ["status", "attempts", "error"], ["key"], updates, {"updated_at": stamp})
        return stored

    def _next(self, status: str, attempts: int) -> tuple[str, int]:
        """Status and attempts after an outcome: failures count; too many sets it aside."""
        if status in (FAILED, SET_ASIDE):
            attempts += 1
        if status == FAILED and attempts >= self.max_attempts:
            status = SET_ASIDE
        return status, attempts

    @staticmethod
    def _statuses(conn: Any, keys: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        ordered = sorted(set(keys))
        for i in range(0, len(ordered), _IN_CHUNK):
            found.update(
                conn.execute(
                    select(inbound.c.key, inbound.c.status).where(inbound.c.key.in_(ordered[i : i + _IN_CHUNK]))
                ).all()
            )
        return found

    def finish(self, key: str, status: str, *, now: datetime, error: str | None = None) -> str:
        """Record the outcome; a failure past ``max_attempts`` becomes set_aside. Returns the
        status stored."""
        with self.engine.begin() as conn:
            attempts = conn.execute(select(inbound.c.attempts).where(inbound.c.key == key)).scalar_one()
            status, attempts = self._next(status, int(attempts))
            conn.execute(
                update(inbound)
                .where(inbound.c.key == key)
                .values(status=status, attempts=attempts, error=error, updated_at=to_utc(now))
            )
        return status

    def status(self, key: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(inbound.c.status).where(inbound.c.key == key)).scalar_one_or_none()

    def retry_candidates(self, account: str, folder: str, *, now: datetime, limit: int = 500) -> list[InboundRow]:
        """Failed rows of this account/folder whose backoff has passed, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(inbound)
                .where(
                    inbound.c.account == account,
                    inbound.c.folder == folder,
                    inbound.c.status == FAILED,
                )
                .order_by(inbound.c.updated_at)
            ).all()
        due = [
            r
            for r in map(_row, rows)
            if r.updated_at + doubling_delay(r.attempts, base=self.retry_base, cap=self.retry_cap) <= now
        ]
        return due[:limit]

    def seen_message_ids(self, account: str, folder: str, message_ids: Iterable[str]) -> set[str]:
        """Which of these Message-IDs were already handled (done or set aside) here."""
        wanted = sorted({m for m in message_ids if m})
        found: set[str] = set()
        with self.engine.connect() as conn:
            for i in range(0, len(wanted), _IN_CHUNK):
                found.update(
                    conn.execute(
                        select(inbound.c.message_id).where(
                            inbound.c.account == account,
                            inbound.c.folder == folder,
                            inbound.c.status.in_(FINISHED),
                            inbound.c.message_id.in_(wanted[i : i + _IN_CHUNK]),
                        )
                    ).scalars()
                )
        return found

    def known_uidls(self, account: str) -> set[str]:
        """UIDLs of this POP3 account that are not new: every row but a pending one (a crash
        mid-handling: taken in again). Failed ones come back through ``retry_candidates``."""
        with self.engine.connect() as conn:
            return set(
                conn.execute(
                    select(inbound.c.uidl).where(
                        inbound.c.account == account, inbound.c.uidl.is_not(None), inbound.c.status != PENDING
                    )
                ).scalars()
            )

    def uidls_with_status(self, account: str, status: str) -> set[str]:
        with self.engine.connect() as conn:
            return set(
                conn.execute(
                    select(inbound.c.uidl).where(
                        inbound.c.account == account, inbound.c.uidl.is_not(None), inbound.c.status == status
                    )
                ).scalars()
            )

    def retry_set_aside(self, key: str, *, now: datetime) -> bool:
        """Take a set-aside message in again: `failed` with no attempts counted and its backoff
        already over, so its watcher's next pass retries it (``retry_candidates``)."""
        due = to_utc(now) - self.retry_cap - timedelta(seconds=1)
        with self.engine.begin() as conn:
            return (
                conn.execute(
                    update(inbound)
                    .where(inbound.c.key == key, inbound.c.status == SET_ASIDE)
                    .values(status=FAILED, attempts=0, updated_at=due)
                ).rowcount
                == 1
            )

    def set_aside(self, account: str | None = None) -> list[InboundRow]:
        """Messages given up on after ``max_attempts``, for `postroom` to list."""
        query = select(inbound).where(inbound.c.status == SET_ASIDE)
        if account is not None:
            query = query.where(inbound.c.account == account)
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query.order_by(inbound.c.updated_at))]


def _move_checkpoint(conn: Any, cp: CheckpointWrite, now: datetime) -> None:
    """``set_checkpoint`` in the caller's transaction. The watcher folds a checkpoint in only
    once the folder has one, so this is an update; the insert covers a row deleted meanwhile
    (a clash with a concurrent insert fails the batch, which is then looked at again)."""
    values = {
        "uidvalidity": cp.uidvalidity,
        "last_uid": cp.last_uid,
        "start_from": cp.start_from,
        "updated_at": to_utc(now),
    }
    where = (checkpoints.c.account == cp.account, checkpoints.c.folder == cp.folder)
    if not conn.execute(update(checkpoints).where(*where).values(**values)).rowcount:
        conn.execute(insert(checkpoints).values(account=cp.account, folder=cp.folder, **values))


def _new_row(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    message_id = row.get("message_id") or None
    return dict(
        key=row["key"],
        account=row["account"],
        folder=row["folder"],
        uidvalidity=row.get("uidvalidity"),
        uid=row.get("uid"),
        uidl=row.get("uidl"),
        message_id=message_id and message_id[:998],
        status=PENDING,
        attempts=0,
        created_at=to_utc(now),
        updated_at=to_utc(now),
    )


def _row(r: Row[Any]) -> InboundRow:
    return InboundRow(
        r.key,
        r.account,
        r.folder,
        r.uidvalidity,
        r.uid,
        r.uidl,
        r.message_id,
        r.status,
        int(r.attempts),
        r.error,
        as_utc(r.updated_at),
    )
