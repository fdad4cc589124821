"""Signing in, driven end to end against the lab token server: Microsoft's device code flow
(the person approves at the verification URL) and Google's loopback flow (a "browser" follows
the authorize redirect to our listener on 127.0.0.1); the refresh tokens they yield work."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from postroom.auth.flows import finish_device_flow, loopback_login, start_device_flow
from postroom.auth.tokens import OAuth2Client, TokenProvider
from postroom.config.providers import PROVIDERS, MailProtocol, ProviderName, endpoints
from postroom.errors import OAuth2Error

from tests.lab.token_server import TokenServer
from tests.support.oauth2_fixtures import MemoryKeeper

NOW = datetime(2026, 11, 29, 4, 0, tzinfo=UTC)


def _microsoft(server: TokenServer) -> OAuth2Client:
    return OAuth2Client.for_provider(
        "alice",
        PROVIDERS[ProviderName.MICROSOFT],
        client_id="maillab-public",
        tenant="organizations",
        authority=server.url,
        protocols=(MailProtocol.IMAP, MailProtocol.SMTP),
    )


def _google(server: TokenServer) -> OAuth2Client:
    return OAuth2Client.for_provider(
        "alice",
        PROVIDERS[ProviderName.GOOGLE],
        client_id="maillab",
        client_secret="maillab-secret",
        authority=server.url,
        protocols=(MailProtocol.IMAP,),
    )


async def test_device_code_flow_end_to_end(token_server: TokenServer) -> None:
    client = _microsoft(token_server)
    urls = endpoints(PROVIDERS[ProviderName.MICROSOFT], tenant="organizations", authority=token_server.url)
    assert urls.device_code_url is not None
    polls: list[float] = []

    async def person_signs_in_while_we_wait(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 2:  # after two "not yet" answers the person approves in a browser
            async with httpx.AsyncClient() as browser:
                approval = {"user_code": code.user_code, "user": "alice"}
                approved = await browser.post(code.verification_uri, data=approval)
            approved.raise_for_status()

    async with httpx.AsyncClient() as http:
        code = await start_device_flow(http, client, urls.device_code_url, NOW)
        assert code.user_code in code.message and code.verification_uri.startswith(token_server.url)
        reply = await finish_device_flow(http, client, code, sleep=person_signs_in_while_we_wait, clock=lambda: NOW)

    assert reply.refresh_token and polls == [1.0, 1.0]
    assert token_server.authority.counters["error.authorization_pending"] == 2
    [request] = token_server.authority.requests_to("/organizations/oauth2/v2.0/devicecode")
    assert request.form == {"client_id": "maillab-public", "scope": " ".join([*client.scopes, "openid", "email"])}
    assert "offline_access" in client.scopes  # else Microsoft would give no refresh token
    # The refresh token it gave is the one a provider then lives on.
    assert await TokenProvider(client, MemoryKeeper(reply.refresh_token)).token(NOW)


async def test_device_code_that_expires_unused_says_to_run_the_login_again(token_server: TokenServer) -> None:
    client = _microsoft(token_server)
    urls = endpoints(PROVIDERS[ProviderName.MICROSOFT], tenant="organizations", authority=token_server.url)
    assert urls.device_code_url is not None
    async with httpx.AsyncClient() as http:
        code = await start_device_flow(http, client, urls.device_code_url, NOW)
        with pytest.raises(OAuth2Error, match="expired") as expired:
            await finish_device_flow(http, client, code, clock=lambda: NOW + timedelta(hours=1))

    assert expired.value.error == "expired_token"


def _browser(rewrite_state: bool = False) -> tuple[list[str], Callable[[str], None]]:
    """A stand-in browser in a thread: GET the authorize URL, follow its redirect to us."""
    visited: list[str] = []

    def visit(url: str) -> None:
        visited.append(url)
        answer = httpx.get(url, follow_redirects=False)
        location = answer.headers["location"]
        if rewrite_state:
            location = location.replace("state=", "state=forged")
        visited.append(location)
        httpx.get(location)

    return visited, lambda url: threading.Thread(target=visit, args=(url,), daemon=True).start()


async def test_loopback_flow_end_to_end_with_pkce(token_server: TokenServer) -> None:
    client = _google(token_server)
    provider = PROVIDERS[ProviderName.GOOGLE]
    urls = endpoints(provider, authority=token_server.url)
    assert urls.authorize_url is not None
    visited, open_browser = _browser()

    async with httpx.AsyncClient() as http:
        reply = await loopback_login(
            http,
            client,
            urls.authorize_url,
            open_browser=open_browser,
            extra=provider.authorize_params,
            wait_for_person=10,
        )

    assert reply.refresh_token
    authorize, redirect = visited
    assert authorize.startswith(f"{token_server.url}/o/oauth2/v2/auth?") and "code_challenge_method=S256" in authorize
    assert "access_type=offline" in authorize and redirect.startswith("http://127.0.0.1:")
    [exchange] = token_server.authority.requests_to("/token")
    assert exchange.form["grant_type"] == "authorization_code" and exchange.form["code_verifier"]
    assert await TokenProvider(client, MemoryKeeper(reply.refresh_token)).token(NOW)


async def test_loopback_flow_refuses_an_answer_to_another_request(token_server: TokenServer) -> None:
    client = _google(token_server)
    urls = endpoints(PROVIDERS[ProviderName.GOOGLE], authority=token_server.url)
    assert urls.authorize_url is not None
    _, open_browser = _browser(rewrite_state=True)

    async with httpx.AsyncClient() as http:
        with pytest.raises(OAuth2Error, match="state"):
            await loopback_login(http, client, urls.authorize_url, open_browser=open_browser, wait_for_person=10)

    assert token_server.authority.requests_to("/token") == []  # the code was never exchanged
