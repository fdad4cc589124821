"""Whose clock a lease is measured by: PostgreSQL's, when replicas share one.

Replicas run on different hosts whose clocks may drift apart. If each wrote and compared
lease expiries by its own clock, a replica running a minute fast would see every other
replica's lease as run out and take its folder or its rows while the holder still works them.
On PostgreSQL every expiry is therefore written and compared as ``now() + interval`` in the
SQL itself: one clock, the server's. SQLite is one process on one host: its caller's ``now``
is the same clock, and is kept so tests can pass a fake one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Interval, func, literal, select

from .engine import to_utc


def shared_clock(conn: Any) -> bool:
    """Whether this connection's database keeps the time for leases (PostgreSQL)."""
    return bool(conn.dialect.name == "postgresql")


def db_now(conn: Any, now: datetime) -> Any:
    """'Now' for a lease comparison: PostgreSQL's ``now()``, else ``now`` as given."""
    return func.now() if shared_clock(conn) else now


def db_later(conn: Any, now: datetime, ttl: timedelta) -> Any:
    """An expiry ``ttl`` from now, by the same clock as ``db_now``."""
    return func.now() + literal(ttl, Interval()) if shared_clock(conn) else now + ttl


def db_earlier(conn: Any, now: datetime, ttl: timedelta) -> Any:
    """The instant ``ttl`` before now, by the same clock as ``db_now`` (lapsed-lease tests)."""
    return func.now() - literal(ttl, Interval()) if shared_clock(conn) else now - ttl


def clock_offset(engine: Engine, local: Callable[[], datetime]) -> timedelta | None:
    """The database's clock minus ours (``local``), measured across one round trip and taken
    at its middle; None where the database keeps no shared clock (SQLite)."""
    with engine.connect() as conn:
        if not shared_clock(conn):
            return None
        before = local()
        theirs = to_utc(conn.execute(select(func.clock_timestamp())).scalar_one())  # the same clock as now()
        after = local()
    return theirs - (before + (after - before) / 2)
