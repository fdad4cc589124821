"""Signing in once, to get the first refresh token (what ``postroom auth login`` will run):

- the device code flow (RFC 8628), Microsoft's for delegated access: ask for a code, show the
  person the URL and the code, poll the token endpoint until they have signed in;
- the installed-app flow with a loopback redirect (RFC 8252, PKCE per RFC 7636), Google's (its
  device flow does not allow the mail scope): open the authorize URL in a browser, receive the
  redirect on 127.0.0.1 with a one-shot listener, exchange the code.

Both legs are a few standard HTTP requests, done with httpx like every other token request
(and against the lab's token server in tests); the answers are read by ``read_token_reply``.
Both send ``login_hint`` (the mailbox the account logs in to), so the provider proposes that
user; and both read who signed in from the reply's OpenID id token when there is one
(``SignInReply.signed_in_as``): the proof that the right person signed in is signin.py's.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import math
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx

from ..clock import utcnow
from ..errors import OAuth2Error, ServerBusy
from ..redact import redacted
from .tokens import OAuth2Client, TokenReply, lifetime_of, post_form, read_token_reply

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
SLOW_DOWN_STEP = 5.0  # RFC 8628 §3.5: add five seconds to the interval on slow_down
LOOPBACK_TIMEOUT = 300.0  # how long a person has to finish signing in in the browser
ID_TOKEN_MAX = 16_384  # bytes of an id token we read; real ones are 1-2 KiB
# OpenID Connect scopes asked for beside the mail ones, so the reply names who signed in.
IDENTITY_SCOPES = ("openid", "email")


@dataclass(frozen=True)
class SignInReply(TokenReply):
    """A sign-in's token reply, and whom the provider says signed in (the id token's email or
    preferred_username), when it says."""

    signed_in_as: str | None = None


def signed_in_as(body: bytes) -> str | None:
    """Who the id token of a token reply names, read without checking its signature: it came
    straight from the token endpoint over TLS, which OpenID Connect Core §3.1.3.7 allows.
    None when there is no id token or it is not one we can read (bounded: ``ID_TOKEN_MAX``)."""
    try:
        reply = json.loads(body)
        token = reply.get("id_token") if isinstance(reply, dict) else None
        if not isinstance(token, str) or len(token) > ID_TOKEN_MAX or token.count(".") != 2:
            return None
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(claims, dict):
        return None
    for claim in ("email", "preferred_username", "upn"):
        value = claims.get(claim)
        if isinstance(value, str) and "@" in value:
            return value[:320]
    return None


def _identified(reply: TokenReply, body: bytes) -> SignInReply:
    return SignInReply(reply.access, reply.refresh_token, signed_in_as(body))


def sign_in_scopes(client: OAuth2Client) -> str:
    """The scopes a sign-in asks for: the account's, and OpenID's to learn who signed in."""
    return " ".join([*client.scopes, *(s for s in IDENTITY_SCOPES if s not in client.scopes)])


@dataclass(frozen=True)
class DeviceCode:
    """What the person is shown (``message``, or the URL and code), and what we poll with."""

    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    message: str
    interval: float
    expires_at: datetime


def _client_fields(client: OAuth2Client) -> dict[str, str]:
    fields = {"client_id": client.client_id}
    if client.client_secret:
        fields["client_secret"] = client.client_secret
    return fields


async def start_device_flow(
    http: httpx.AsyncClient, client: OAuth2Client, device_code_url: str, now: datetime, *, login_hint: str | None = None
) -> DeviceCode:
    form = {**_client_fields(client), "scope": sign_in_scopes(client)}
    if login_hint:
        form["login_hint"] = login_hint
    response = await post_form(http, device_code_url, form, context=f"{client.account}: ")
    if response.status_code != 200:
        read_token_reply(client.account, response.status_code, response.content, now, secrets=form.values())
        raise ServerBusy(f"{device_code_url}: HTTP {response.status_code}", code=response.status_code)
    answer = _json_object(response.content)
    # Microsoft says verification_uri (RFC 8628); Google's older endpoint verification_url.
    uri = str(answer.get("verification_uri") or answer.get("verification_url") or "")
    user_code, device_code = answer.get("user_code"), answer.get("device_code")
    if not isinstance(user_code, str) or not isinstance(device_code, str) or not uri:
        raise ServerBusy(f"{device_code_url}: the answer has no device code, user code or address")
    return DeviceCode(
        device_code=device_code,
        user_code=user_code,
        verification_uri=uri,
        message=str(answer.get("message") or f"To sign in, open {uri} and enter the code {user_code}."),
        interval=_poll_interval(answer.get("interval", 5)),
        # Hostile or silly values (1e30, "inf", none) are clamped as a token's lifetime is.
        expires_at=now + lifetime_of(answer.get("expires_in", 900)),
    )


def _json_object(body: bytes) -> dict[str, Any]:
    """A JSON object, or {} for anything else (not JSON, nested past the parser's stack)."""
    try:
        found: Any = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    return found if isinstance(found, dict) else {}


def _poll_interval(value: object) -> float:
    """RFC 8628's ``interval`` within [1 s, 60 s]; 5 s when missing or not a finite number."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return 5.0
    return min(max(seconds, 1.0), 60.0) if math.isfinite(seconds) else 5.0


async def finish_device_flow(
    http: httpx.AsyncClient,
    client: OAuth2Client,
    code: DeviceCode,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], datetime] = utcnow,
) -> SignInReply:
    """Poll until the person signed in (their refresh token comes back), refused, or the code
    expired. ``sleep`` and ``clock`` are the edges a test may replace."""
    form = {**_client_fields(client), "grant_type": DEVICE_GRANT, "device_code": code.device_code}
    interval = code.interval
    while True:
        now = clock()
        if now >= code.expires_at:
            raise OAuth2Error(
                f"{client.account}: the sign-in code expired before it was used; run the login again",
                account=client.account,
                error="expired_token",
            )
        response = await post_form(http, client.token_url, form, context=f"{client.account}: ")
        try:
            reply = read_token_reply(client.account, response.status_code, response.content, now, secrets=form.values())
            return _identified(_with_refresh_token(client, reply), response.content)
        except OAuth2Error as exc:
            if exc.error == "slow_down":
                interval += SLOW_DOWN_STEP
            elif exc.error != "authorization_pending":
                raise
        await sleep(interval)


def signed_in_refresh_token(client: OAuth2Client, reply: TokenReply) -> str:
    """The refresh token a sign-in gave; without one the sign-in is of no use to a daemon."""
    if reply.refresh_token is None:
        raise OAuth2Error(
            f"{client.account}: signed in, but no refresh token came back (Microsoft: add the offline_access "
            "scope; Google: access_type=offline)",
            account=client.account,
            error="no_refresh_token",
        )
    return reply.refresh_token


def _with_refresh_token(client: OAuth2Client, reply: TokenReply) -> TokenReply:
    signed_in_refresh_token(client, reply)
    return reply


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge), RFC 7636."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize_url(
    base: str,
    client: OAuth2Client,
    *,
    redirect_uri: str,
    state: str,
    challenge: str,
    extra: Mapping[str, str] | None = None,
) -> str:
    params = {
        "client_id": client.client_id,
        "redirect_uri": redirect_uri,
        "response_type": "code",
        "scope": sign_in_scopes(client),
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **(extra or {}),
    }
    return f"{base}?{urlencode(params)}"


_PAGE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nConnection: close\r\n\r\n"
    b"<!doctype html><title>postroom</title><p>Signed in. You can close this window.</p>\n"
)
_NOT_HERE = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class _LoopbackReceiver:
    """A one-shot HTTP listener on 127.0.0.1 for the authorization redirect."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
        self.server: asyncio.Server | None = None

    async def start(self, port: int = 0) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = (await reader.readline()).decode("latin-1").split()
            while (await reader.readline()).strip():
                pass  # headers: nothing in them matters here
            target = urlsplit(request_line[1]) if len(request_line) > 1 else None
            query = dict(parse_qsl(target.query)) if target is not None else {}
            if target is None or target.path != "/" or not ({"code", "error"} & query.keys()):
                writer.write(_NOT_HERE)  # a browser's favicon request and the like
                return
            writer.write(_PAGE)
            if not self.answer.done():
                self.answer.set_result(query)
        finally:
            await writer.drain()
            writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def loopback_login(
    http: httpx.AsyncClient,
    client: OAuth2Client,
    authorize_base: str,
    *,
    open_browser: Callable[[str], None],
    extra: Mapping[str, str] | None = None,
    wait_for_person: float = LOOPBACK_TIMEOUT,
    clock: Callable[[], datetime] = utcnow,
    port: int = 0,
) -> SignInReply:
    """Send the person to the authorize URL (``open_browser``: the CLI prints it, and opens a
    browser if asked), take the code from the redirect to 127.0.0.1, exchange it with the PKCE
    verifier. ``port``: the listener's (0: any free one); a fixed one can be forwarded over SSH
    from the person's machine to a server without a browser."""
    receiver = _LoopbackReceiver()
    redirect_uri = await receiver.start(port)
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    try:
        open_browser(
            authorize_url(
                authorize_base, client, redirect_uri=redirect_uri, state=state, challenge=challenge, extra=extra
            )
        )
        try:
            answer = await asyncio.wait_for(receiver.answer, wait_for_person)
        except TimeoutError:
            raise OAuth2Error(
                f"{client.account}: nobody finished signing in within {wait_for_person:.0f} s",
                account=client.account,
                error="timeout",
            ) from None
    finally:
        receiver.close()
    if answer.get("state") != state:
        raise OAuth2Error(
            f"{client.account}: the sign-in answer does not match our request (state)",
            account=client.account,
            error="state_mismatch",
        )
    if "error" in answer:
        # What the browser was sent back with is anyone's text: shown only redacted and short.
        said = redacted(f"{answer['error']}: {answer.get('error_description', '')}"[:300], secrets=[verifier])
        error = redacted(answer["error"][:60])
        raise OAuth2Error(f"{client.account}: sign-in refused ({said})", account=client.account, error=error)
    form = {
        **_client_fields(client),
        "grant_type": "authorization_code",
        "code": answer["code"],
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
    }
    response = await post_form(http, client.token_url, form, context=f"{client.account}: ")
    reply = read_token_reply(client.account, response.status_code, response.content, clock(), secrets=form.values())
    return _identified(_with_refresh_token(client, reply), response.content)
