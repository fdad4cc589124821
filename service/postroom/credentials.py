"""How postroom logs in to a mail server: one seam for every protocol.

Each edge (SMTP, IMAP, POP3) is handed a ``Credentials``, built in one place,
``auth.accounts.AccountLogins.credentials`` (a password from the server's config, or an OAuth2
access token from the account's token provider); it asks it for the user name, the mechanism
and the secret, and logs in by one table of mechanism -> login call (``handed_login`` checks
that a server which needs a login was handed one).

The secret is asked for on the event loop, just before each login (a token may have expired
since the last one), never kept on the connection. ``log_in`` is the one retry rule every edge
shares: when the server refuses a token, ask for a renewed one once and try again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar

from pydantic import SecretStr

from .errors import AuthError

# The SASL mechanisms postroom can log in with, by the name each edge's login table uses:
# a password (LOGIN, USER/PASS, AUTH PLAIN or LOGIN), or an OAuth2 bearer token sent as
# XOAUTH2 or OAUTHBEARER (RFC 7628).
Mechanism = Literal["password", "xoauth2", "oauthbearer"]

T = TypeVar("T")


class Credentials(Protocol):
    """Who to log in as, how, and (asked for at each login) with what secret."""

    @property
    def username(self) -> str: ...

    @property
    def mechanism(self) -> Mechanism: ...

    async def secret(self) -> str:
        """The secret for one login: a password, or a fresh (or still fresh cached) access token."""
        ...

    async def renewed(self, refused: str) -> str | None:
        """After the server refused ``refused``: a different secret worth one more try, or
        None (a password stays what it is)."""
        ...


@dataclass(frozen=True)
class PasswordCredentials:
    """A user name and a password from the config (LOGIN / USER+PASS / AUTH PLAIN or LOGIN)."""

    username: str
    password: SecretStr
    mechanism: Mechanism = "password"

    async def secret(self) -> str:
        return self.password.get_secret_value()

    async def renewed(self, refused: str) -> str | None:
        return None


class TokenSource(Protocol):
    """An account's access tokens (``auth.accounts.AccountTokens``)."""

    async def token(self, *, refused: str | None = None) -> str: ...


@dataclass(frozen=True)
class OAuth2Credentials:
    """A mailbox logged in to with the account's OAuth2 access token (XOAUTH2 / OAUTHBEARER)."""

    username: str
    mechanism: Mechanism
    tokens: TokenSource = field(repr=False)

    async def secret(self) -> str:
        return await self.tokens.token()

    async def renewed(self, refused: str) -> str | None:
        # The server may know better than our clock (revoked, or expired early): refresh once.
        return await self.tokens.token(refused=refused)


def handed_login(account: str, auth: str | None, given: Credentials | None) -> Credentials | None:
    """What a connection to a server logged in to by ``auth`` (its config's ``auth_kind()``;
    None: no login) logs in with: ``given``. A server that needs a login and was handed none
    is a bug of the caller, refused when the connection is made, not at its first login."""
    if given is None and auth is not None:
        how = "password" if auth == "password" else "OAuth2"
        raise ValueError(f"{account}: auth: {auth} needs the account's {how} credentials (AccountLogins.credentials)")
    return given


async def log_in(credentials: Credentials, attempt: Callable[[str], Awaitable[T]], *, account: str) -> T:
    """``attempt(secret)`` logs in; when the server refuses (``AuthError``), try once more
    with a renewed secret if the credentials have one, and a refusal that stands says what to
    do next (``login_next_step``). An error getting the secret (a token endpoint down, a revoked
    refresh token) is raised as is."""
    secret = await credentials.secret()
    try:
        return await attempt(secret)
    except AuthError as exc:
        fresh = await credentials.renewed(secret)
        if fresh is None:
            _refused(exc, credentials, account)
            raise
    try:
        return await attempt(fresh)
    except AuthError as exc:
        _refused(exc, credentials, account)
        raise


def login_next_step(credentials: Credentials, account: str) -> str:
    """What a person does about a refused login, by how it logged in."""
    if credentials.mechanism == "password":
        return (
            f"check the password's secret and the username {credentials.username!r} in account {account}'s "
            "server settings (`postroom check` tries again)"
        )
    return (
        f"the server refused the OAuth2 token for {credentials.username}: sign in again as "
        f"{credentials.username}: postroom auth login {account}"
    )


def _refused(exc: AuthError, credentials: Credentials, account: str) -> None:
    """Raise the server's refusal again with the next step (an OAuth2Error from the token
    endpoint says its own, and is raised by the caller as it is)."""
    if type(exc) is AuthError:
        raise AuthError(f"{exc}; {login_next_step(credentials, account)}") from exc
