"""Replica heartbeats: which replicas are alive, so folders can be shared out evenly.

Each daemon on PostgreSQL renews its row every third of the lease (``beat``); a row whose
``expires_at`` has passed is a replica that died (kill -9, a lost host), and a clean stop
deletes its row at once. Expiry is the database's clock (``dbtime``), like every lease.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from .calls import StoreCalls
from .dbtime import db_later, db_now
from .engine import as_utc
from .tables import outbox, replicas, watch_leases, webhooks


@dataclass(frozen=True)
class ReplicaRow:
    instance: str
    started_at: datetime
    seen_at: datetime
    expires_at: datetime
    alive: bool
    clock_offset: timedelta | None = None  # the database's clock minus the replica's, last measured


class ReplicaRegistry:
    def __init__(self, engine: Engine, *, owner: str, calls: StoreCalls):
        self.engine = engine
        self.calls = calls  # the store's threads: store_call runs this part's methods there
        self.owner = owner

    def beat(self, *, now: datetime, ttl: timedelta, clock_offset: timedelta | None = None) -> int:
        """Say this replica is alive until now + ttl (and how far its clock is from the
        database's); returns how many replicas are alive (this one included)."""
        offset_ms = None if clock_offset is None else round(clock_offset.total_seconds() * 1000)
        with self.engine.begin() as conn:
            values = dict(seen_at=db_now(conn, now), expires_at=db_later(conn, now, ttl), clock_offset_ms=offset_ms)
            renewed = conn.execute(update(replicas).where(replicas.c.instance == self.owner).values(**values)).rowcount
        if not renewed:
            try:
                with self.engine.begin() as conn:
                    conn.execute(
                        insert(replicas).values(
                            instance=self.owner,
                            started_at=db_now(conn, now),
                            seen_at=db_now(conn, now),
                            expires_at=db_later(conn, now, ttl),
                            clock_offset_ms=offset_ms,
                        )
                    )
            except IntegrityError:
                pass  # inserted meanwhile by this instance's previous life: renewed next beat
        return self.alive(now=now)

    def alive(self, *, now: datetime) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.scalar(select(func.count()).select_from(replicas).where(replicas.c.expires_at > db_now(conn, now)))
                or 0
            )

    def members(self, *, now: datetime, fresh: timedelta) -> list[str]:
        """The replicas whose last heartbeat is younger than ``fresh`` (two thirds of a lease:
        two beats missed), in name order, for sharing folders out. Sooner than ``alive``: a
        killed replica stops counting before its row runs out, so the others' shares grow."""
        with self.engine.connect() as conn:
            return list(
                conn.scalars(
                    select(replicas.c.instance)
                    .where(replicas.c.seen_at > db_later(conn, now, -fresh), replicas.c.expires_at > db_now(conn, now))
                    .order_by(replicas.c.instance)
                )
            )

    def leave(self) -> None:
        """A clean stop: the others count one fewer at their next heartbeat."""
        with self.engine.begin() as conn:
            conn.execute(delete(replicas).where(replicas.c.instance == self.owner))

    def rows(self, *, now: datetime) -> list[ReplicaRow]:
        """Every replica row, dead ones too (until they are forgotten), for `postroom status`."""
        with self.engine.connect() as conn:
            current = db_now(conn, now)
            found = conn.execute(
                select(replicas, (replicas.c.expires_at > current).label("alive")).order_by(replicas.c.instance)
            )
            return [
                ReplicaRow(
                    r.instance,
                    as_utc(r.started_at),
                    as_utc(r.seen_at),
                    as_utc(r.expires_at),
                    bool(r.alive),
                    None if r.clock_offset_ms is None else timedelta(milliseconds=r.clock_offset_ms),
                )
                for r in found
            ]

    def forget_dead(self, *, now: datetime, after: timedelta) -> int:
        """Drop rows of replicas dead for longer than ``after`` (they hold nothing by then)."""
        with self.engine.begin() as conn:
            return conn.execute(delete(replicas).where(replicas.c.expires_at < db_later(conn, now, -after))).rowcount

    def watches(self) -> list[tuple[str, str, datetime]]:
        """(watch, holder, expires_at) of every watch lease, for `postroom status`."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(watch_leases.c.watch, watch_leases.c.owner, watch_leases.c.expires_at).order_by(
                    watch_leases.c.watch
                )
            )
            return [(w, o, as_utc(e)) for w, o, e in rows]

    def in_flight(self) -> dict[str, tuple[int, int]]:
        """Per holder: (outbox rows, webhook deliveries) leased to it now (``sending``)."""
        found: dict[str, tuple[int, int]] = {}
        with self.engine.connect() as conn:
            for position, table in enumerate((outbox, webhooks)):
                rows = conn.execute(
                    select(table.c.lease_owner, func.count())
                    .where(table.c.status == "sending")
                    .group_by(table.c.lease_owner)
                )
                for token, count in rows:
                    holder = (token or "?").rsplit("/", 1)[0]  # "instance/claim"
                    counts = list(found.get(holder, (0, 0)))
                    counts[position] += count
                    found[holder] = (counts[0], counts[1])
        return found
