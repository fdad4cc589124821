"""An account's refresh token, kept in the store, sealed by the vault: the ``RefreshTokenKeeper``
that ``TokenProvider`` loads from before each refresh and saves a rotated token to at once.

Which token counts, when the config may give one too (``oauth2.refresh_token``):
- none in the config: the stored one (from ``postroom auth login``, or a rotation of it);
- one in the config: the stored one only if it descends from that very token (a rotation,
  recorded with the config token's digest as its origin); else the config's — an operator
  who pastes a new token into the config means it.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import TYPE_CHECKING

from ..store.calls import store_call
from ..store.tokens import OAuth2TokenStore, StoredGrant

if TYPE_CHECKING:  # the vault imports cryptography (~7 MiB): only where one is built
    from .vault import TokenVault

LOGIN_ORIGIN = "login"


def origin_of(configured: str | None) -> str:
    """The origin recorded with tokens descending from ``configured`` (a digest, not the token)."""
    if configured is None:
        return LOGIN_ORIGIN
    return "config:" + hashlib.sha256(configured.encode()).hexdigest()[:32]


def current_sealed(configured: str | None, stored: StoredGrant | None) -> bytes | None:
    """The stored sealed token when it is the one to use (see the module doc), else None."""
    if stored is None or stored.sealed_refresh_token is None:
        return None
    if configured is not None and stored.origin != origin_of(configured):
        return None
    return stored.sealed_refresh_token


class StoredRefreshToken:
    """One account's refresh token, read from the store at each refresh (another replica may
    have rotated it since) and written there before the new one is used."""

    def __init__(self, store: OAuth2TokenStore, vault: TokenVault, account: str, configured: str | None = None):
        self._store = store
        self._vault = vault
        self._account = account
        self._configured = configured

    def __repr__(self) -> str:
        return f"StoredRefreshToken({self._account!r})"

    async def load(self) -> str | None:
        stored = await store_call(self._store.get, self._account)
        sealed = current_sealed(self._configured, stored)
        return self._configured if sealed is None else self._vault.open(sealed, account=self._account)

    async def save(self, refresh_token: str, now: datetime) -> None:
        sealed = self._vault.seal(refresh_token)
        await store_call(
            self._store.save_refresh_token, self._account, sealed, origin=origin_of(self._configured), now=now
        )


class ConfiguredRefreshToken:
    """The config's refresh token where there is no store (`postroom check` creates none): a
    token the endpoint rotates is used for this process and said to be lost with it."""

    def __init__(self, account: str, configured: str):
        self._account = account
        self._token = configured

    def __repr__(self) -> str:
        return f"ConfiguredRefreshToken({self._account!r})"

    async def load(self) -> str | None:
        return self._token

    async def save(self, refresh_token: str, now: datetime) -> None:
        self._token = refresh_token
        import structlog  # only where a rotation happens without a store

        structlog.get_logger(__name__).warning(
            "the token endpoint rotated the configured refresh token and there is no store here to keep the new "
            "one: if the old one stops working, put the new one in the config or sign in with `postroom auth login`",
            account=self._account,
        )
