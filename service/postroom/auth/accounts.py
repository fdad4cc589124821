"""Every account's way in, built once per process: the password from the config, or the
access tokens of the account's one ``TokenProvider`` (``oauth2:`` block), shared by its SMTP,
IMAP and POP3 connections and, through the store, by every replica.

What happens around a refresh (``AccountTokens``):
- one that worked is recorded in the store (``postroom auth status`` reads it) and reported
  to ``on_refresh`` (the daemon's metrics) with the new expiry;
- a transient failure (the token endpoint down, slow, 5xx) is recorded and raised as is: the
  caller backs off and tries again; the account is not marked broken;
- a permanent one (``OAuth2Error``: the refresh token revoked or expired, ``invalid_grant``;
  or settings the endpoint refuses) stops the account: one error line says what happened and
  the command that fixes it, ``stopped`` holds it (``/readyz``), and every later login of the
  account raises it again at once, without asking the token endpoint, until a reload
  (SIGHUP) or a restart builds the account anew from the store and the config.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING

import structlog

from ..clock import utcnow
from ..config.model import TOKEN_AUTH, AccountConfig, Config, OAuth2Config, ServerConfig
from ..config.providers import PROVIDERS, Grant, MailProtocol
from ..credentials import Credentials, Mechanism, OAuth2Credentials, PasswordCredentials
from ..errors import UNDECRYPTABLE, OAuth2Error, PostroomError, TokenRevoked
from ..store.tokens import OAuth2TokenStore
from .keeper import ConfiguredRefreshToken, StoredRefreshToken
from .tokens import OAuth2Client, TokenProvider

if TYPE_CHECKING:  # the vault imports cryptography (~7 MiB): only where one is built
    from .vault import TokenVault

log = structlog.get_logger(__name__)

# How a refresh ended, as the metrics label it (postroom_oauth2_refreshes_total{result}).
REFRESH_OK = "ok"
REFRESH_TRANSIENT = "transient"  # endpoint down or slow: tried again later
REFRESH_REVOKED = "revoked"  # a person must sign in again
REFRESH_REFUSED = "refused"  # the oauth2 settings are wrong
REFRESH_RESULTS = (REFRESH_OK, REFRESH_TRANSIENT, REFRESH_REVOKED, REFRESH_REFUSED)

# account, result (one of REFRESH_RESULTS), the new token's expiry (None unless ok)
RefreshHook = Callable[[str, str, datetime | None], None]


def _no_hook(account: str, result: str, expires_at: datetime | None) -> None:
    pass


def _result_of(exc: PostroomError) -> str:
    if isinstance(exc, TokenRevoked):
        return REFRESH_REVOKED
    return REFRESH_REFUSED if isinstance(exc, OAuth2Error) else REFRESH_TRANSIENT


class AccountTokens:
    """One account's access tokens, and whether the account has stopped for want of one."""

    def __init__(
        self,
        provider: TokenProvider,
        oauth2: OAuth2Config,
        *,
        store: OAuth2TokenStore | None = None,
        on_refresh: RefreshHook = _no_hook,
        clock: Callable[[], datetime] = utcnow,
    ):
        self.provider = provider
        self.oauth2 = oauth2  # the settings it was built from: a reload keeps it while they hold
        self.stopped: OAuth2Error | None = None
        self.failing: str | None = None  # the last transient failure, until a refresh works
        self._store = store
        self._on_refresh = on_refresh
        self._clock = clock
        self._recorded: datetime | None = None  # the expiry last reported: one report per refresh
        # Callers queue here, not inside the provider: one that waited while another's refresh
        # was refused for good sees ``stopped`` and does not ask the endpoint again.
        self._turn = asyncio.Lock()

    def __repr__(self) -> str:
        return f"AccountTokens({self.account!r}, stopped={self.stopped is not None})"

    @property
    def account(self) -> str:
        return self.provider.account

    async def token(self, *, refused: str | None = None) -> str:
        """A fresh access token (``refused``: one a server just refused, see TokenProvider)."""
        async with self._turn:
            return await self._token(refused)

    async def _token(self, refused: str | None) -> str:
        if self.stopped is not None:
            raise type(self.stopped)(str(self.stopped), account=self.account, error=self.stopped.error)
        now = self._clock()
        try:
            value = await self.provider.token(now, refused=refused)
        except PostroomError as exc:
            await self._failed(exc, now)
            raise
        self.failing = None
        expires_at = self.provider.status.expires_at
        if expires_at is not None and expires_at != self._recorded:
            self._recorded = expires_at
            self._on_refresh(self.account, REFRESH_OK, expires_at)
            await self._write(lambda store: store.record_refresh(self.account, expires_at=expires_at, now=now))
        return value

    async def _failed(self, exc: PostroomError, now: datetime) -> None:
        result = _result_of(exc)
        if result == REFRESH_TRANSIENT:
            self.failing = str(exc)
        self._on_refresh(self.account, result, None)
        if isinstance(exc, OAuth2Error) and self.stopped is None:
            self.stopped = exc
            # The one line a person reads: what happened and (in the message) what to run.
            log.error(
                "oauth2 account stopped: a person must act", account=self.account, error=str(exc), reason=exc.error
            )
        if isinstance(exc, OAuth2Error) and exc.error == UNDECRYPTABLE:
            return  # this process's key, not the account's state: another with the right key is fine
        await self._write(lambda store: store.record_error(self.account, str(exc), now=now))

    async def _write(self, record: Callable[[OAuth2TokenStore], None]) -> None:
        """The store is the record for ``auth status``; failing to write it stops no login."""
        if self._store is None:
            return
        store = self._store
        try:
            await store.calls.run(record, store)
        except Exception as exc:
            log.warning("oauth2 token state not recorded", account=self.account, error=repr(exc))


def oauth2_client(name: str, account: AccountConfig, oauth2: OAuth2Config) -> OAuth2Client:
    """What the token endpoint hears from ACCOUNT, as the provider table says. One token serves
    every server the account logs in to with a token (or, with none yet, all of them: what
    `postroom auth login` asks consent for)."""
    servers = account.token_servers() or account.servers()
    return OAuth2Client.for_provider(
        name,
        PROVIDERS[oauth2.provider],
        client_id=oauth2.client_id,
        client_secret=oauth2.client_secret.get_secret_value() if oauth2.client_secret else None,
        grant=oauth2.grant,
        scopes=tuple(oauth2.scopes or ()),
        protocols=tuple(MailProtocol(p) for p in servers),
        tenant=oauth2.tenant,
        token_url=oauth2.token_url,
        authority=oauth2.authority,
    )


def provider_for(
    name: str, account: AccountConfig, oauth2: OAuth2Config, *, store: OAuth2TokenStore | None, vault: TokenVault | None
) -> TokenProvider:
    """The account's TokenProvider: its client as the provider table says, its refresh token
    kept in the store (sealed by the vault)."""
    client = oauth2_client(name, account, oauth2)
    if oauth2.grant is Grant.CLIENT_CREDENTIALS:
        return TokenProvider(client)
    configured = oauth2.refresh_token.get_secret_value() if oauth2.refresh_token else None
    if store is not None and vault is not None:
        return TokenProvider(client, StoredRefreshToken(store, vault, name, configured))
    if configured is not None:  # no store here (`check` makes none): the config's token, as it is
        return TokenProvider(client, ConfiguredRefreshToken(name, configured))
    raise PostroomError(f"{name}: an oauth2 account needs the store and its key to keep its refresh token")


def needs_vault(config: Config) -> bool:
    """Whether some account keeps a refresh token (so POSTROOM_TOKEN_KEY must be set)."""
    return any(a.oauth2 is not None and a.oauth2.grant is Grant.REFRESH_TOKEN for a in config.accounts.values())


class AccountLogins:
    """Every account's credentials for each of its servers, the one place they are built: a
    password from the server's config, or the account's OAuth2 token (the account's
    ``AccountTokens``, shared by its servers). Built at start, and again on reload
    (``build(keep=…)``); the edges (SMTP, IMAP, POP3 connections) are handed what
    ``credentials`` gives and never read a password from the config themselves. Without
    ``oauth2:`` accounts (``AccountLogins()``) it gives the config's passwords."""

    def __init__(self, tokens: Mapping[str, AccountTokens] | None = None):
        self.tokens: dict[str, AccountTokens] = dict(tokens or {})

    @classmethod
    def build(
        cls,
        config: Config,
        *,
        store: OAuth2TokenStore | None = None,
        vault: TokenVault | None = None,
        on_refresh: RefreshHook | None = None,
        keep: AccountLogins | None = None,
    ) -> AccountLogins:
        """One AccountTokens per account with an ``oauth2:`` block. From ``keep`` (the previous
        generation, on reload) an account's tokens are kept when its settings are the same and
        it has not stopped: its cached access token stays good, and a stopped account reads
        the refresh token stored (or configured) since."""
        tokens: dict[str, AccountTokens] = {}
        for name, account in config.accounts.items():
            if account.oauth2 is None:
                continue
            old = keep.tokens.get(name) if keep is not None else None
            if old is not None and old.stopped is None and old.oauth2 == account.oauth2:
                tokens[name] = old
                continue
            provider = provider_for(name, account, account.oauth2, store=store, vault=vault)
            tokens[name] = AccountTokens(provider, account.oauth2, store=store, on_refresh=on_refresh or _no_hook)
        return cls(tokens)

    def credentials(self, account: str, server: ServerConfig) -> Credentials | None:
        """How to log in to ``server`` of ``account``; None: the server takes us without a login."""
        kind = server.auth_kind()
        if kind not in TOKEN_AUTH:
            if server.username is None or server.password is None:
                return None  # the config's validation allows only both or neither
            return PasswordCredentials(server.username, server.password)
        tokens = self.tokens.get(account)
        if tokens is None or server.username is None:  # the config's validation makes this a bug
            raise PostroomError(f"{account}: auth: {kind} but no token provider was built for the account")
        mechanism: Mechanism = "xoauth2" if kind == "xoauth2" else "oauthbearer"
        return OAuth2Credentials(server.username, mechanism, tokens)

    def failing(self) -> dict[str, str]:
        """The accounts whose last refresh failed for now (retried with backoff), each with why."""
        return {name: t.failing for name, t in self.tokens.items() if t.failing is not None and t.stopped is None}

    def stopped(self) -> dict[str, str]:
        """The accounts stopped for want of a token, each with why (for /readyz)."""
        return {name: str(t.stopped) for name, t in self.tokens.items() if t.stopped is not None}
