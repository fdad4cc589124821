"""What `postroom auth login ACCOUNT` and `postroom auth status` do, apart from click.

Signing in gets an account its first refresh token; which way depends on the provider (one
table, ``SIGN_INS``):

- microsoft: the device code flow (RFC 8628), delegated access: the person opens a URL on any
  device, enters a code and signs in as the mailbox's user while we poll;
- google: the installed-app flow with a loopback redirect (RFC 8252, PKCE): the person opens
  the printed URL, and Google sends the browser back to our one-shot listener on 127.0.0.1
  (Google's device flow does not allow the mail scope);
- generic: the person pastes a refresh token their OAuth2 server issued.

Each flow names the mailbox (``login_hint``), and before anything is stored the sign-in must
prove it signed in *that* mailbox (``prove_mailbox``): the id token's email where the provider
gives one, else one login with the new access token to the account's IMAP, POP3 or SMTP server
as its configured username. A token for another mailbox is refused and nothing is stored.

The token is sealed by the vault and stored where the daemon reads it (``StoredRefreshToken``),
then used at once for one refresh, exactly as the daemon will use it: a token that does not
work is reported now, not at the daemon's next login. A rotated token is stored before use.

The person-facing side (printing, opening a browser, reading a pasted secret) is a ``Person``
the CLI provides, and so is the proving login (``ProofLogin``): the IMAP, POP3 and SMTP edges
sit above auth/, which they log in with. No token is ever printed or logged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import httpx

from ..clock import utcnow
from ..config.model import AccountConfig, Config, OAuth2Config, ServerConfig
from ..config.providers import PROVIDERS, Endpoints, Grant, Provider, ProviderName, endpoints
from ..credentials import Credentials, Mechanism
from ..errors import AuthError, ConfigError, ErrorTable, OAuth2Error, PostroomError, map_errors
from ..store.calls import store_call
from ..store.tokens import OAuth2TokenStore, StoredGrant
from . import accounts
from .flows import SignInReply, finish_device_flow, loopback_login, signed_in_refresh_token, start_device_flow
from .keeper import StoredRefreshToken, current_sealed
from .tokens import OAuth2Client, TokenProvider
from .vault import TokenVault

RELOAD_HINT = "a running daemon uses it after a reload: `systemctl reload postroom` (or SIGHUP), or a restart"


class Person(Protocol):
    """The one signing in, at the terminal."""

    def tell(self, text: str) -> None: ...

    def open_in_browser(self, url: str) -> None:
        """Open ``url`` in a browser on this machine, if the person asked for that (else nothing)."""
        ...

    def paste_secret(self, prompt: str) -> str:
        """A secret the person pastes, not echoed (blocking: called in a thread)."""
        ...


class ProofLogin(Protocol):
    """The edge that logs in over ``protocol`` ("imap", "pop3" or "smtp") as ``credentials``:
    an unconnected connection with ``connect()`` and ``close()``."""

    def __call__(self, name: str, protocol: str, server: ServerConfig, credentials: Credentials) -> Any: ...


def oauth2_of(name: str, config: Config) -> OAuth2Config:
    """ACCOUNT's ``oauth2:`` block; an error naming the choices when there is none."""
    account = config.accounts.get(name)
    with_oauth2 = sorted(n for n, a in config.accounts.items() if a.oauth2 is not None)
    choices = f"OAuth2 accounts: {', '.join(with_oauth2) or 'none'}"
    if account is None:
        raise PostroomError(f"no account named {name!r}; {choices}")
    if account.oauth2 is None:
        raise PostroomError(f"account {name!r} has no `oauth2:` block, so nothing to sign in to; {choices}")
    return account.oauth2


def oauth2_client(name: str, account: AccountConfig, oauth2: OAuth2Config) -> tuple[OAuth2Client, Endpoints]:
    """What the token endpoint hears from ACCOUNT, and the provider's URLs for it. One token
    serves every server the account logs in to with a token (or, with none yet, all of them)."""
    urls = endpoints(
        PROVIDERS[oauth2.provider], tenant=oauth2.tenant, token_url=oauth2.token_url, authority=oauth2.authority
    )
    return accounts.oauth2_client(name, account, oauth2), urls


def mailbox_of(account: AccountConfig) -> str:
    """The mailbox a sign-in must be for: the username the account logs in to its servers
    with (a token server's first, IMAP before POP3 before SMTP), else its address."""
    servers = account.token_servers() or account.servers()
    for protocol in PROOF_ORDER:
        server = servers.get(protocol)
        if server is not None and server.username:
            return server.username
    return str(account.address)


@dataclass(frozen=True)
class SignIn:
    """One sign-in under way: who, against what, through which person and HTTP client."""

    client: OAuth2Client
    urls: Endpoints
    provider: Provider
    person: Person
    http: httpx.AsyncClient
    mailbox: str  # who must sign in (login_hint), see mailbox_of
    port: int = 0  # the loopback listener's port; 0: any free one


@dataclass(frozen=True)
class Obtained:
    """What a sign-in flow gave: the refresh token, and, from a browser or device flow, the
    access token that came with it and whom the provider says signed in."""

    refresh_token: str = field(repr=False)
    access_token: str | None = field(default=None, repr=False)
    signed_in_as: str | None = None


def _obtained(client: OAuth2Client, reply: SignInReply) -> Obtained:
    return Obtained(signed_in_refresh_token(client, reply), reply.access.value, reply.signed_in_as)


async def _device_code(sign_in: SignIn) -> Obtained:
    client, person = sign_in.client, sign_in.person
    if sign_in.urls.device_code_url is None:
        raise ConfigError(f"{client.account}: provider {sign_in.provider.name} has no device code endpoint")
    code = await start_device_flow(
        sign_in.http, client, sign_in.urls.device_code_url, utcnow(), login_hint=sign_in.mailbox
    )
    person.tell(
        f"{client.account}: sign in as {sign_in.mailbox}, in a browser on any device:\n"
        f"  open   {code.verification_uri}\n"
        f"  enter  {code.user_code}\n"
        f"waiting for the sign-in (the code is good until {code.expires_at:%H:%M} UTC; Ctrl-C gives up)…"
    )
    return _obtained(client, await finish_device_flow(sign_in.http, client, code))


_LISTENER_ERRORS: ErrorTable = {OSError: PostroomError}  # the loopback port is taken


async def _loopback(sign_in: SignIn) -> Obtained:
    client, person = sign_in.client, sign_in.person
    if sign_in.urls.authorize_url is None:
        raise ConfigError(f"{client.account}: provider {sign_in.provider.name} has no authorize endpoint")

    def show(url: str) -> None:
        redirect = parse_qs(urlsplit(url).query).get("redirect_uri", ["http://127.0.0.1/"])[0]
        port = urlsplit(redirect).port
        person.tell(
            f"{client.account}: open this URL in a browser and sign in as {sign_in.mailbox}:\n"
            f"  {url}\n"
            f"It sends the browser back to {redirect}, on this machine. A browser on another machine\n"
            f"needs that port forwarded first: ssh -L {port}:127.0.0.1:{port} THIS-HOST (`--port N` fixes it).\n"
            "waiting for the sign-in (Ctrl-C gives up)…"
        )
        person.open_in_browser(url)

    with map_errors(_LISTENER_ERRORS, f"{client.account}: the sign-in listener on 127.0.0.1:{sign_in.port}: "):
        reply = await loopback_login(
            sign_in.http,
            client,
            sign_in.urls.authorize_url,
            open_browser=show,
            extra={**sign_in.provider.authorize_params, "login_hint": sign_in.mailbox},
            port=sign_in.port,
        )
    return _obtained(client, reply)


async def _pasted(sign_in: SignIn) -> Obtained:
    account = sign_in.client.account
    sign_in.person.tell(
        f"{account}: paste the refresh token your OAuth2 server issued for {sign_in.mailbox} (it is not shown), "
        "then Enter"
    )
    token = (await asyncio.to_thread(sign_in.person.paste_secret, "refresh token")).strip()
    if not token:
        raise PostroomError(f"{account}: no refresh token given; nothing stored")
    return Obtained(token)


SIGN_INS: Mapping[ProviderName, Callable[[SignIn], Awaitable[Obtained]]] = {
    ProviderName.MICROSOFT: _device_code,
    ProviderName.GOOGLE: _loopback,
    ProviderName.GENERIC: _pasted,
}


# -- the proof: the token opens the account's own mailbox --------------------------------------
PROOF_ORDER = ("imap", "pop3", "smtp")  # the first of these the account logs in to with a token
PROOF_DEADLINE = 30.0  # seconds for the one proving login, connect to logged in


@dataclass(frozen=True)
class _NewToken:
    """Credentials (credentials.Credentials) with the access token a sign-in just gave: no
    second try with another one, the proof is about this one."""

    username: str
    mechanism: Mechanism
    token: str = field(repr=False)

    async def secret(self) -> str:
        return self.token

    async def renewed(self, refused: str) -> str | None:
        return None


def wrong_mailbox(name: str, mailbox: str, signed_in_as: str | None, said: str = "") -> OAuth2Error:
    """The refusal of a token for another mailbox, with what to do."""
    if signed_in_as is not None:
        what = f"signed in as {signed_in_as}, but account {name} is {mailbox}"
    else:
        what = f"the sign-in's token does not open {mailbox} ({said}): someone else signed in"
    return OAuth2Error(
        f"{name}: {what}; sign in again as {mailbox}: postroom auth login {name} (nothing was stored)",
        account=name,
        error="wrong_mailbox",
    )


def _same_mailbox(signed_in_as: str, mailbox: str) -> bool:
    if "@" not in mailbox:  # a bare user name: compare the local part
        signed_in_as = signed_in_as.partition("@")[0]
    return signed_in_as.casefold() == mailbox.casefold()


async def prove_mailbox(
    name: str,
    account: AccountConfig,
    obtained: Obtained,
    access_token: str,
    person: Person,
    login: ProofLogin | None = None,
) -> None:
    """Refuse (``OAuth2Error`` "wrong_mailbox") a token another user signed in for: the
    provider's word (the id token) when it gave one, else one login with ``access_token`` as the
    account's configured username. A server that cannot be reached proves nothing either way:
    the person is told, and `postroom check` logs in later. ``login`` is needed only for that
    login (the id token's word needs none)."""
    mailbox = mailbox_of(account)
    if obtained.signed_in_as is not None:
        if not _same_mailbox(obtained.signed_in_as, mailbox):
            raise wrong_mailbox(name, mailbox, obtained.signed_in_as)
        return
    servers = account.token_servers()
    protocol = next((p for p in PROOF_ORDER if p in servers), None)
    if protocol is None:
        return  # no server takes the token: nothing to prove it against
    server = servers[protocol]
    credentials = _NewToken(server.username or mailbox, _mechanism(server), access_token)
    if login is None:
        raise ValueError(f"{name}: proving the token needs a login over {protocol}: pass login=")
    connection = login(name, protocol, server, credentials)
    try:
        await asyncio.wait_for(connection.connect(), PROOF_DEADLINE)
    except AuthError as exc:
        raise wrong_mailbox(name, credentials.username, None, f"{protocol} refused it: {exc}") from None
    except (TimeoutError, PostroomError, OSError) as exc:
        person.tell(
            f"{name}: could not check that the token opens {credentials.username} ({exc or type(exc).__name__}); "
            "`postroom check` logs in with it"
        )
        return
    finally:
        with contextlib.suppress(PostroomError, OSError, TimeoutError):
            await connection.close()


def _mechanism(server: ServerConfig) -> Mechanism:
    return "oauthbearer" if server.auth_kind() == "oauthbearer" else "xoauth2"


@dataclass(frozen=True)
class SignedIn:
    account: str
    expires_at: datetime | None  # of the access token the proving refresh got


async def sign_in(
    name: str,
    account: AccountConfig,
    store: OAuth2TokenStore,
    vault: TokenVault,
    person: Person,
    *,
    login: ProofLogin,
    port: int = 0,
    http: httpx.AsyncClient | None = None,
) -> SignedIn:
    """Sign ACCOUNT in (its provider's way), store the refresh token sealed, prove it with one
    refresh and record that in the store. The account must have a refresh_token grant and no
    refresh token in the config (the CLI says so before anything starts)."""
    oauth2 = account.oauth2
    if oauth2 is None or oauth2.grant is not Grant.REFRESH_TOKEN or oauth2.refresh_token is not None:
        raise ValueError(f"{name}: not an account `postroom auth login` signs in")
    client, urls = oauth2_client(name, account, oauth2)
    async with contextlib.AsyncExitStack() as closing:
        if http is None:
            http = await closing.enter_async_context(httpx.AsyncClient(follow_redirects=False))
        attempt = SignIn(client, urls, PROVIDERS[oauth2.provider], person, http, mailbox_of(account), port)
        obtained = await SIGN_INS[oauth2.provider](attempt)
        if obtained.access_token is not None:  # before anything is stored
            await prove_mailbox(name, account, obtained, obtained.access_token, person, login)
        keeper = StoredRefreshToken(store, vault, name)
        await keeper.save(obtained.refresh_token, utcnow())
        now = utcnow()
        tokens = TokenProvider(client, keeper, http=http)
        try:
            access_token = await tokens.token(now)
        except PostroomError as exc:
            await store_call(store.record_error, name, str(exc), now=now)
            raise
        if obtained.access_token is None:  # a pasted token: its first access token proves it
            try:
                await prove_mailbox(name, account, obtained, access_token, person, login)
            except OAuth2Error:
                await store_call(store.forget, name)
                raise
    expires_at = tokens.status.expires_at
    if expires_at is not None:
        await store_call(store.record_refresh, name, expires_at=expires_at, now=now)
    return SignedIn(name, expires_at)


# -- status --------------------------------------------------------------------------------
NOT_OPENED = "stored, but this key does not open it"
KEY_UNCHECKED = "stored (no key here to check it)"


@dataclass(frozen=True)
class TokenState:
    """One OAuth2 account as `postroom auth status` shows it: never a token, only where it is."""

    account: str
    provider: str
    grant: str
    refresh_token: str  # where the one in use comes from, or what to do
    expires_at: datetime | None
    refreshed_at: datetime | None
    last_error: str | None
    needs_login: bool
    key_problem: str | None = None  # the stored token does not open with the key found here


def token_states(
    config: Config, stored: Mapping[str, StoredGrant], vault: TokenVault | None = None
) -> list[TokenState]:
    """Each OAuth2 account of ``config`` with what the store knows of it (``stored``: by
    account). A stored token is opened with ``vault`` (the key this process found), so a
    wrong but well-formed key shows as such; None: no key here, nothing checked."""
    states: list[TokenState] = []
    for name, account in sorted(config.accounts.items()):
        oauth2 = account.oauth2
        if oauth2 is None:
            continue
        grant = stored.get(name)
        source, needs_login = _refresh_token_source(oauth2, grant)
        key_problem = None
        sealed = current_sealed(oauth2.refresh_token.get_secret_value() if oauth2.refresh_token else None, grant)
        if sealed is not None and oauth2.grant is Grant.REFRESH_TOKEN:
            if vault is None:
                source = KEY_UNCHECKED
            else:
                try:
                    vault.open(sealed, account=name)
                except OAuth2Error as exc:
                    source, key_problem = NOT_OPENED, str(exc)
        states.append(
            TokenState(
                account=name,
                provider=oauth2.provider.value,
                grant=oauth2.grant.value,
                refresh_token=source,
                expires_at=grant.expires_at if grant else None,
                refreshed_at=grant.refreshed_at if grant else None,
                last_error=grant.last_error if grant else None,
                needs_login=needs_login,
                key_problem=key_problem,
            )
        )
    return states


def _refresh_token_source(oauth2: OAuth2Config, grant: StoredGrant | None) -> tuple[str, bool]:
    """Which refresh token the daemon uses (the rule of auth/keeper.py), and whether there is none."""
    if oauth2.grant is Grant.CLIENT_CREDENTIALS:
        return "not used (app-only)", False
    configured = oauth2.refresh_token.get_secret_value() if oauth2.refresh_token else None
    if current_sealed(configured, grant) is not None:
        return ("stored (signed in)" if configured is None else "stored (rotated from config)"), False
    if configured is not None:
        return "from config", False
    return "none", True
