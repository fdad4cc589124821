"""The store: every side effect is written here before it happens.

`Store` bundles the engine and the per-table query objects; modules that need only one
kind of work take that object, not the whole store.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from .bounces import BounceStore
from .calls import StoreCalls
from .engine import migrate, open_engine, schema_is_current
from .inbound import InboundStore
from .leases import WatchLeases
from .ledger import LedgerStore
from .outbox import NewMessage, OutboxItem, OutboxStore
from .owner import StoreOwner
from .replicas import ReplicaRegistry
from .runs import RunRecord, RunStore
from .tokens import OAuth2TokenStore, StoredGrant


@dataclass
class Store:
    engine: Engine
    calls: StoreCalls  # its threads and gate (store.calls), shared by the parts below
    outbox: OutboxStore
    runs: RunStore
    ledger: LedgerStore
    inbound: InboundStore
    leases: WatchLeases
    tokens: OAuth2TokenStore
    replicas: ReplicaRegistry
    bounces: BounceStore
    lock: StoreOwner | None = None  # the daemon's hold on a SQLite store (store.owner)

    @classmethod
    def open(cls, url: str, *, owner: str, migrate_schema: bool = True) -> Store:
        engine = open_engine(url)
        if migrate_schema:
            migrate(engine)
        calls = StoreCalls()
        return cls(
            engine=engine,
            calls=calls,
            outbox=OutboxStore(engine, owner=owner, calls=calls),
            runs=RunStore(engine, owner=owner, calls=calls),
            ledger=LedgerStore(engine, owner=owner, calls=calls),
            inbound=InboundStore(engine, calls=calls),
            leases=WatchLeases(engine, owner=owner, calls=calls),
            tokens=OAuth2TokenStore(engine, calls=calls),
            replicas=ReplicaRegistry(engine, owner=owner, calls=calls),
            bounces=BounceStore(engine, calls=calls),
        )

    def close(self) -> None:
        """Lets go of the connections, the SQLite lock and the store's threads (each ends
        once what is queued on it has run; new calls are refused)."""
        self.engine.dispose()
        if self.lock is not None:
            self.lock.release()
        self.calls.shutdown()


__all__ = [
    "BounceStore",
    "InboundStore",
    "LedgerStore",
    "NewMessage",
    "OAuth2TokenStore",
    "OutboxItem",
    "OutboxStore",
    "ReplicaRegistry",
    "RunRecord",
    "RunStore",
    "Store",
    "StoreCalls",
    "StoredGrant",
    "WatchLeases",
    "migrate",
    "open_engine",
    "schema_is_current",
]
