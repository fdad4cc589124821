"""Watch leases: which replica watches a mailbox folder.

Replicas sharing one PostgreSQL run the same config, so each would start a watcher for every
folder. One row per watch ("account/folder", or "account/pop3") names the replica that holds
it until ``expires_at``; the holder renews it well before then, the others stand by and claim
it once it has run out (a replica that died) or was released (one that stopped). The daemon
uses them only on PostgreSQL: SQLite is one process, with nothing to share.

Expiry is measured by PostgreSQL's clock there (``dbtime``): a replica whose clock runs fast
cannot see a live holder's lease as run out. SQLite (one host) keeps the caller's ``now``.

A claim is one UPDATE that succeeds when the row is ours or expired, else one INSERT that
fails on the primary key when another replica holds the row: both databases decide it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from .calls import StoreCalls
from .dbtime import db_later, db_now
from .engine import as_utc, to_utc
from .tables import watch_leases


class WatchLeases:
    def __init__(self, engine: Engine, *, owner: str, calls: StoreCalls):
        self.engine = engine
        self.calls = calls  # the store's threads: store_call runs this part's methods there
        self.owner = owner

    def claim(self, watch: str, *, now: datetime, ttl: timedelta) -> bool:
        """Take or renew ``watch`` until now + ttl. False when another replica holds it."""
        now = to_utc(now)
        table = watch_leases
        with self.engine.begin() as conn:
            renewed = conn.execute(
                update(table)
                .where(
                    table.c.watch == watch,
                    or_(table.c.owner == self.owner, table.c.expires_at < db_now(conn, now)),
                )
                .values(owner=self.owner, expires_at=db_later(conn, now, ttl))
            ).rowcount
        if renewed:
            return True
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(table).values(watch=watch, owner=self.owner, expires_at=db_later(conn, now, ttl)))
        except IntegrityError:
            return False  # held by another replica (or claimed by one a moment ago)
        return True

    def holder(self, watch: str) -> tuple[str, datetime] | None:
        """(owner, expires_at) of the lease, or None when nobody holds one."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(watch_leases.c.owner, watch_leases.c.expires_at).where(watch_leases.c.watch == watch)
            ).first()
        return (row.owner, as_utc(row.expires_at)) if row else None

    def free(self, watch: str, *, now: datetime) -> bool:
        """Nobody holds ``watch``: no lease, or one run out (by the database's clock)."""
        with self.engine.connect() as conn:
            held = conn.scalar(
                select(watch_leases.c.owner).where(
                    watch_leases.c.watch == watch, watch_leases.c.expires_at >= db_now(conn, to_utc(now))
                )
            )
        return held is None

    def all(self, *, now: datetime) -> list[tuple[str, str]]:
        """(watch, owner) of every lease held now: which replica watches what."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(watch_leases.c.watch, watch_leases.c.owner)
                .where(watch_leases.c.expires_at >= to_utc(now))
                .order_by(watch_leases.c.watch)
            )
            return [(row.watch, row.owner) for row in rows]

    def release(self, watch: str) -> None:
        """Give ``watch`` up at once (a clean stop), if it is ours."""
        with self.engine.begin() as conn:
            conn.execute(delete(watch_leases).where(watch_leases.c.watch == watch, watch_leases.c.owner == self.owner))
