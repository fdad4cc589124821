"""OAuth2 token state per account: the sealed refresh token and how the last refresh went.

Every replica reads the same row, so a refresh token one replica got by rotation is the one
the next refresh anywhere uses. The refresh token arrives sealed (auth/vault.py): this module
stores bytes and never sees a token.

Writes are an UPDATE, else an INSERT; an INSERT that loses a race on the primary key becomes
the UPDATE after all: the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from .calls import StoreCalls
from .engine import as_utc, to_utc
from .tables import oauth2_tokens


@dataclass(frozen=True)
class StoredGrant:
    account: str
    sealed_refresh_token: bytes | None = field(repr=False)
    origin: str
    expires_at: datetime | None
    refreshed_at: datetime | None
    last_error: str | None
    updated_at: datetime


class OAuth2TokenStore:
    def __init__(self, engine: Engine, *, calls: StoreCalls):
        self.engine = engine
        self.calls = calls  # the store's threads: store_call runs this part's methods there

    def get(self, account: str) -> StoredGrant | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(oauth2_tokens).where(oauth2_tokens.c.account == account)).first()
        return _grant(row._mapping) if row else None

    def all(self) -> list[StoredGrant]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(oauth2_tokens).order_by(oauth2_tokens.c.account)).all()
        return [_grant(row._mapping) for row in rows]

    def save_refresh_token(self, account: str, sealed: bytes, *, origin: str, now: datetime) -> None:
        """Keep a new (signed-in or rotated) refresh token; durable when this returns."""
        self._upsert(account, now, sealed_refresh_token=sealed, origin=origin)

    def record_refresh(self, account: str, *, expires_at: datetime, now: datetime) -> None:
        self._upsert(account, now, expires_at=to_utc(expires_at), refreshed_at=to_utc(now), last_error=None)

    def record_error(self, account: str, error: str, *, now: datetime) -> None:
        self._upsert(account, now, last_error=error)

    def forget(self, account: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(oauth2_tokens).where(oauth2_tokens.c.account == account))

    def _upsert(self, account: str, now: datetime, **values: Any) -> None:
        values["updated_at"] = to_utc(now)
        if self._update(account, values):
            return
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(oauth2_tokens).values(account=account, **{"origin": "", **values}))
        except IntegrityError:
            self._update(account, values)  # another replica inserted it a moment ago

    def _update(self, account: str, values: dict[str, Any]) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(update(oauth2_tokens).where(oauth2_tokens.c.account == account).values(**values))
        return bool(result.rowcount)


def _grant(row: Any) -> StoredGrant:
    return StoredGrant(
        account=row["account"],
        sealed_refresh_token=row["sealed_refresh_token"],
        origin=row["origin"],
        expires_at=as_utc(row["expires_at"]),
        refreshed_at=as_utc(row["refreshed_at"]),
        last_error=row["last_error"],
        updated_at=as_utc(row["updated_at"]),
    )
