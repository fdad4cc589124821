"""One token provider per account: access tokens cached until shortly before they expire,
refreshed over HTTP with a deadline, rotated refresh tokens handed on at once.

The decisions are pure and take ``now`` (``token_form``, ``read_token_reply``,
``AccessToken.fresh``); ``TokenProvider`` is the thin edge that posts the form with httpx.

What goes wrong, and what it becomes (the account's connections only ever see ours):
- ``invalid_grant`` (revoked, expired, consent withdrawn) → ``TokenRevoked``: permanent, a
  person must sign in again; the message says with which command.
- ``invalid_client``, ``invalid_scope`` … → ``OAuth2Error``: permanent, the settings are wrong.
- the endpoint down, slow, 5xx, 429, ``temporarily_unavailable`` → transient
  (``ServerConnectError``, ``ServerTimeout``, ``ServerBusy``): back off and retry.
- an answer we cannot use (not JSON, no token, bigger than ``MAX_REPLY_BYTES``) → transient
  too: the account's mail waits, it is never a dead letter. A silly ``expires_in`` (missing,
  not a number, negative, infinite, 1e30) is no error at all: ``lifetime_of`` clamps it.

No token ever reaches a log line, an exception message or a repr: what the endpoint says in
``error_description`` is ``redacted`` (it may echo our form) before anything keeps it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from ..config.providers import Endpoints, Grant, MailProtocol, Provider, default_scopes, endpoints
from ..errors import (
    ErrorTable,
    OAuth2Error,
    PostroomError,
    ServerBusy,
    ServerConnectError,
    ServerTimeout,
    TokenRevoked,
    map_errors,
)
from ..redact import redacted

if TYPE_CHECKING:
    # httpx (with httpcore, ~8 MiB and ~60 ms of imports) is imported by the first token
    # request: a daemon without OAuth2 accounts never loads it.
    import httpx

log = structlog.get_logger(__name__)

# Refresh this long before expiry at most (a quarter of the lifetime for short-lived tokens),
# so a login never starts with a token about to lapse.
REFRESH_MARGIN = timedelta(minutes=5)
# RFC 6749 makes expires_in optional. Missing or nonsense: assume a short life (a refresh too
# many costs little); believed only up to a day (1e30 s must not overflow a datetime, and a
# token is not kept past what any provider gives).
UNKNOWN_LIFETIME = timedelta(minutes=5)
SHORTEST_LIFETIME = timedelta(seconds=1)  # a refresh per call at most once a second
LONGEST_LIFETIME = timedelta(days=1)
REQUEST_DEADLINE = 30.0  # seconds for one token request, connect to last byte
MAX_REPLY_BYTES = 1024 * 1024  # a token reply is a few KiB; more is not a token endpoint
_DESCRIPTION_MAX = 300
_DESCRIPTION_READ = 4096  # what is redacted before the shown part is cut from it
# The form fields that carry a secret: redacted by value from anything the endpoint says.
SECRET_FIELDS = frozenset({"client_secret", "refresh_token", "code", "code_verifier", "device_code", "assertion"})


@dataclass(frozen=True)
class AccessToken:
    value: str = field(repr=False)
    issued_at: datetime
    expires_at: datetime

    def fresh(self, now: datetime) -> bool:
        """Still good for a login that starts now, with a margin before expiry."""
        margin = min(REFRESH_MARGIN, (self.expires_at - self.issued_at) / 4)
        return now < self.expires_at - margin


@dataclass(frozen=True)
class TokenReply:
    access: AccessToken
    refresh_token: str | None = field(default=None, repr=False)  # new one, when the server rotates


@dataclass(frozen=True)
class OAuth2Client:
    """What the token endpoint hears from one account."""

    account: str
    token_url: str
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    grant: Grant = Grant.REFRESH_TOKEN
    scopes: tuple[str, ...] = ()
    scope_on_refresh: bool = True

    @classmethod
    def for_provider(
        cls,
        account: str,
        provider: Provider,
        *,
        client_id: str,
        client_secret: str | None = None,
        grant: Grant = Grant.REFRESH_TOKEN,
        scopes: tuple[str, ...] = (),
        protocols: tuple[MailProtocol, ...] = (),
        tenant: str | None = None,
        token_url: str | None = None,
        authority: str | None = None,
    ) -> OAuth2Client:
        urls: Endpoints = endpoints(provider, tenant=tenant, token_url=token_url, authority=authority)
        return cls(
            account=account,
            token_url=urls.token_url,
            client_id=client_id,
            client_secret=client_secret,
            grant=grant,
            scopes=scopes or default_scopes(provider, grant, protocols),
            scope_on_refresh=provider.scope_on_refresh,
        )


def token_form(client: OAuth2Client, refresh_token: str | None) -> dict[str, str]:
    """The form posted to the token endpoint (RFC 6749 §6 and §4.4), client secret in the
    body as Microsoft and Google take it."""
    form = {"grant_type": client.grant.value, "client_id": client.client_id}
    if client.client_secret:
        form["client_secret"] = client.client_secret
    if client.grant is Grant.REFRESH_TOKEN:
        if refresh_token is None:
            raise ValueError("a refresh_token grant needs a refresh token")
        form["refresh_token"] = refresh_token
    if client.scopes and (client.grant is Grant.CLIENT_CREDENTIALS or client.scope_on_refresh):
        form["scope"] = " ".join(client.scopes)
    return form


class _Outcome(Enum):
    REVOKED = "revoked"  # a person must sign in again
    REFUSED = "refused"  # the settings are wrong
    BUSY = "busy"  # try later


# RFC 6749 §5.2 error codes (and the OpenID Connect ones Microsoft uses) → what they mean.
OAUTH_ERRORS: Mapping[str, _Outcome] = {
    "invalid_grant": _Outcome.REVOKED,
    "interaction_required": _Outcome.REVOKED,
    "consent_required": _Outcome.REVOKED,
    "login_required": _Outcome.REVOKED,
    "invalid_client": _Outcome.REFUSED,
    "unauthorized_client": _Outcome.REFUSED,
    "invalid_scope": _Outcome.REFUSED,
    "invalid_request": _Outcome.REFUSED,
    "unsupported_grant_type": _Outcome.REFUSED,
    "access_denied": _Outcome.REFUSED,
    "temporarily_unavailable": _Outcome.BUSY,
    "server_error": _Outcome.BUSY,
}
_BUSY_STATUS = frozenset({408, 425, 429})


def _refusal(account: str, outcome: _Outcome, status: int, error: str, description: str) -> PostroomError:
    said = f"{error}: {description}" if description else error
    if outcome is _Outcome.REVOKED:
        return TokenRevoked(
            f"{account}: the token endpoint no longer accepts the refresh token ({said}); "
            f"sign in again with `postroom auth login {account}`",
            account=account,
            error=error,
        )
    if outcome is _Outcome.REFUSED:
        return OAuth2Error(
            f"{account}: the token endpoint refused the request ({said}); check the account's oauth2 settings",
            account=account,
            error=error,
        )
    return ServerBusy(f"{account}: the token endpoint is not answering now (HTTP {status}, {said})", code=status)


def read_token_reply(account: str, status: int, body: bytes, now: datetime, secrets: Iterable[str] = ()) -> TokenReply:
    """The token endpoint's answer, or ours for its refusal. ``now`` stamps the new token;
    ``secrets`` (what the form carried) never appear in an error, even echoed back."""
    try:
        found: Any = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's stack
        found = None
    reply: dict[str, Any] = found if isinstance(found, dict) else {}
    if status >= 500 or status in _BUSY_STATUS:
        error = _shown(reply.get("error", "unavailable"), secrets, 60)
        raise _refusal(account, _Outcome.BUSY, status, error, "")
    if status >= 400 or "error" in reply:
        error = _shown(reply.get("error", f"http_{status}"), secrets, 60)
        description = _shown(reply.get("error_description", ""), secrets, _DESCRIPTION_MAX)
        raise _refusal(account, OAUTH_ERRORS.get(error, _Outcome.REFUSED), status, error, description)
    value = reply.get("access_token")
    if not isinstance(value, str) or not value:
        # Not a token reply at all (a proxy's page?): the server is unwell, try again later.
        raise ServerBusy(f"{account}: the token endpoint answered HTTP {status} without an access token", code=status)
    if str(reply.get("token_type", "bearer")).lower() != "bearer":
        raise OAuth2Error(
            f"{account}: the token endpoint gave a {_shown(reply['token_type'], secrets, 40)!r} token, "
            "not a bearer token",
            account=account,
            error="token_type",
        )
    lifetime = lifetime_of(reply.get("expires_in"))
    refresh = reply.get("refresh_token")
    rotated = refresh if isinstance(refresh, str) and refresh else None
    return TokenReply(AccessToken(value, now, now + lifetime), rotated)


def _shown(value: object, secrets: Iterable[str], limit: int) -> str:
    """A field of the endpoint's answer as it may be kept: redacted, then cut to ``limit``."""
    return redacted(str(value)[:_DESCRIPTION_READ], secrets)[:limit]


def lifetime_of(expires_in: object) -> timedelta:
    """How long to believe a token lives: ``expires_in`` clamped to
    [SHORTEST_LIFETIME, LONGEST_LIFETIME]; missing, not a number, not finite or not positive
    is UNKNOWN_LIFETIME."""
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float | str):
        return UNKNOWN_LIFETIME
    longest, shortest = LONGEST_LIFETIME.total_seconds(), SHORTEST_LIFETIME.total_seconds()
    if isinstance(expires_in, int) and expires_in > longest:  # 10**400 is no float, but long
        return LONGEST_LIFETIME
    try:
        seconds = float(expires_in)  # Google sends a number, some a string
    except (ValueError, OverflowError):  # "soon", or "1" followed by 400 zeros
        return UNKNOWN_LIFETIME
    if not math.isfinite(seconds) or seconds <= 0:
        return UNKNOWN_LIFETIME
    return timedelta(seconds=min(max(seconds, shortest), longest))


class RefreshTokenKeeper(Protocol):
    """Where an account's refresh token lives (the store, encrypted). ``save`` must have made
    the token durable when it returns: the old one may already be dead on the server."""

    async def load(self) -> str | None: ...

    async def save(self, refresh_token: str, now: datetime) -> None: ...


@dataclass
class TokenStatus:
    """What ``postroom auth status``, /readyz and the metrics read about one account."""

    expires_at: datetime | None = None
    refreshed_at: datetime | None = None
    last_error: str | None = None
    broken: bool = False  # a permanent error: a person must act


@functools.cache
def _transport_errors() -> ErrorTable:
    import httpx

    return {
        httpx.TimeoutException: ServerTimeout,
        httpx.TransportError: ServerConnectError,  # refused, reset, TLS, protocol errors
        TimeoutError: ServerTimeout,  # our own deadline
    }


class TokenProvider:
    """Access tokens for one account, shared by its SMTP, IMAP and POP3 connections.

    ``token(now)`` answers from the cache while the token is fresh; otherwise one refresh runs
    (concurrent callers wait for it). After a server refused a token, ``token(now,
    refused=that_token)`` refreshes even if the cache thinks it fresh.
    """

    def __init__(
        self,
        client: OAuth2Client,
        keeper: RefreshTokenKeeper | None = None,
        *,
        http: httpx.AsyncClient | None = None,
        deadline: float = REQUEST_DEADLINE,
    ) -> None:
        if client.grant is Grant.REFRESH_TOKEN and keeper is None:
            raise ValueError("a refresh_token grant needs a keeper for the refresh token")
        self.client = client
        self.status = TokenStatus()
        self._keeper = keeper
        self._http = http
        self._deadline = deadline
        self._cached: AccessToken | None = None
        self._lock = asyncio.Lock()

    @property
    def account(self) -> str:
        return self.client.account

    async def token(self, now: datetime, *, refused: str | None = None) -> str:
        """A fresh access token; ``refused``: one a server just refused, never handed out again."""
        async with self._lock:
            cached = self._cached
            if cached is None or not cached.fresh(now) or cached.value == refused:
                cached = self._cached = await self._refresh(now)
            return cached.value

    async def _refresh(self, now: datetime) -> AccessToken:
        try:
            reply = await self._refresh_once(now)
        except PostroomError as exc:
            self.status.last_error = str(exc)
            self.status.broken = isinstance(exc, OAuth2Error)
            log.warning("oauth2.refresh_failed", account=self.account, error=str(exc), permanent=self.status.broken)
            raise
        self.status = TokenStatus(expires_at=reply.access.expires_at, refreshed_at=now)
        log.info(
            "oauth2.refreshed",
            account=self.account,
            expires_at=reply.access.expires_at.isoformat(),
            rotated=reply.refresh_token is not None,
        )
        return reply.access

    async def _refresh_once(self, now: datetime) -> TokenReply:
        if self.client.grant is Grant.CLIENT_CREDENTIALS or self._keeper is None:
            return await self._post(token_form(self.client, None), now)
        used = await self._keeper.load()
        if used is None:
            raise TokenRevoked(
                f"{self.account}: no refresh token yet; sign in with `postroom auth login {self.account}`",
                account=self.account,
                error="no_refresh_token",
            )
        try:
            reply = await self._post(token_form(self.client, used), now)
        except TokenRevoked:
            # Another replica may have rotated it a moment ago: try once more with the latest.
            latest = await self._keeper.load()
            if latest is None or latest == used:
                raise
            used = latest
            reply = await self._post(token_form(self.client, used), now)
        if reply.refresh_token is not None and reply.refresh_token != used:
            await self._keeper.save(reply.refresh_token, now)  # before anyone can need it
            return reply
        return TokenReply(reply.access)

    async def _post(self, form: dict[str, str], now: datetime) -> TokenReply:
        response = await post_form(
            self._http, self.client.token_url, form, deadline=self._deadline, context=f"{self.account}: "
        )
        return read_token_reply(self.account, response.status_code, response.content, now, form_secrets(form))


def form_secrets(form: Mapping[str, str]) -> list[str]:
    """The values of ``form`` that must never be shown, whatever the endpoint echoes."""
    return [value for name, value in form.items() if name in SECRET_FIELDS]


async def post_form(
    http: httpx.AsyncClient | None,
    url: str,
    form: Mapping[str, str],
    *,
    deadline: float = REQUEST_DEADLINE,
    context: str = "",
) -> httpx.Response:
    """POST a form to an OAuth2 endpoint within ``deadline`` seconds, reading at most
    ``MAX_REPLY_BYTES`` of the answer; network trouble and a bloated answer become ours
    (transient). The URL may appear in errors: tokens only ever travel in the body."""
    import httpx

    with map_errors(_transport_errors(), f"{context}token endpoint {url}: "):
        async with asyncio.timeout(deadline):
            if http is not None:
                return await _bounded_post(http, url, form, context)
            async with httpx.AsyncClient(follow_redirects=False) as own:
                return await _bounded_post(own, url, form, context)


async def _bounded_post(http: httpx.AsyncClient, url: str, form: Mapping[str, str], context: str) -> httpx.Response:
    async with http.stream("POST", url, data=dict(form), headers=_HEADERS) as streamed:
        body = bytearray()
        async for chunk in streamed.aiter_bytes():
            body += chunk
            if len(body) > MAX_REPLY_BYTES:
                raise ServerBusy(
                    f"{context}token endpoint {url}: the answer is larger than {MAX_REPLY_BYTES} bytes; "
                    "not a token reply (a proxy or a misconfigured token_url?)",
                    code=streamed.status_code,
                )
        # The body as read (already decoded): only its type is worth carrying over.
        import httpx

        kept = {"content-type": streamed.headers.get("content-type", "application/json")}
        return httpx.Response(streamed.status_code, headers=kept, content=bytes(body), request=streamed.request)


_HEADERS = {"Accept": "application/json"}
