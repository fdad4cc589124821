"""The console's guard (postroom.console.security.require_token) around a tiny app, in process:
token, session cookie, CSRF, CSP, bounded forms. The browser tests (test_console_browser.py)
check the same against the real daemon."""

from __future__ import annotations

import re

import httpx
import pytest
from postroom.console.security import CSP, MAX_FORM, SESSION_COOKIE, Guard, require_token
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

TOKEN = "t0ken-for-the-console-tests"


async def page(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"page csrf={request.state.csrf}")


async def asset(_request: Request) -> PlainTextResponse:
    return PlainTextResponse("body {}")


async def act(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"acted on {(await request.body()).decode()}")


@pytest.fixture
async def client():
    app = require_token(
        Starlette(routes=[Route("/", page), Route("/act", act, methods=["POST"]), Route("/static/x.css", asset)]), TOKEN
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://console") as c:
        yield c


async def signed_in(client: httpx.AsyncClient) -> str:
    """Sign in through the form; return the page's CSRF token."""
    response = await client.post("/login", data={"token": TOKEN, "next": "/"})
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie  # http here
    match = re.search(r"csrf=(\w+)", (await client.get("/")).text)
    assert match is not None
    return match.group(1)


def tampered(token: str) -> str:
    """The token with its last character changed to another one (never to the one it has)."""
    return token[:-1] + ("1" if token.endswith("0") else "0")


def test_a_tampered_token_always_differs_from_the_real_one():
    # The last character of a real token is "0" one time in 16: then a fixed "0" was no change.
    for token in ("ab12", "ab10", "0"):
        assert tampered(token) != token and len(tampered(token)) == len(token)


async def test_without_a_session_pages_answer_401_with_the_login_form(client):
    html = await client.get("/", headers={"Accept": "text/html"})
    assert html.status_code == 401
    assert 'name="token"' in html.text and 'type="password"' in html.text
    other = await client.get("/")
    assert other.status_code == 401 and other.headers["www-authenticate"].startswith("Bearer")
    assert (await client.post("/act", data={"x": "1"})).status_code == 401
    assert (await client.get("/static/x.css")).status_code == 200  # assets hold no data


async def test_a_wrong_token_gets_the_form_again_and_no_cookie(client):
    response = await client.post("/login", data={"token": TOKEN + "x"})
    assert response.status_code == 401
    assert "set-cookie" not in response.headers
    assert "not the console" in response.text
    assert (await client.get("/")).status_code == 401


async def test_sign_in_then_pages_and_a_post_with_its_csrf_token(client):
    csrf = await signed_in(client)
    assert (await client.get("/")).status_code == 200
    acted = await client.post("/act", data={"csrf": csrf, "x": "1"})
    assert acted.status_code == 200
    assert "x=1" in acted.text  # the body reaches the app after the guard read it


async def test_a_post_without_or_with_a_wrong_csrf_token_is_refused(client):
    csrf = await signed_in(client)
    assert (await client.post("/act", data={"x": "1"})).status_code == 403
    assert (await client.post("/act", data={"csrf": tampered(csrf), "x": "1"})).status_code == 403
    assert (await client.post("/act", headers={"X-CSRF-Token": csrf}, data={"x": "1"})).status_code == 200


async def test_a_bearer_token_works_without_cookie_or_csrf(client):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert (await client.get("/", headers=headers)).status_code == 200
    assert (await client.post("/act", headers=headers, data={"x": "1"})).status_code == 200
    assert (await client.get("/", headers={"Authorization": "Bearer nope"})).status_code == 401


async def test_every_answer_has_the_strict_csp(client):
    for response in (await client.get("/"), await client.get("/login")):
        assert response.headers["content-security-policy"] == CSP
        assert response.headers["x-frame-options"] == "DENY"
    assert "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP


async def test_a_form_body_over_the_bound_is_refused(client):
    csrf = await signed_in(client)
    response = await client.post("/act", data={"csrf": csrf, "x": "y" * (MAX_FORM + 1)})
    assert response.status_code == 413


async def test_logout_needs_csrf_and_ends_the_session(client):
    csrf = await signed_in(client)
    assert (await client.post("/logout", data={})).status_code == 403
    out = await client.post("/logout", data={"csrf": csrf})
    assert out.status_code == 303 and "Max-Age=0" in out.headers["set-cookie"]
    assert (await client.get("/")).status_code == 401


async def test_login_redirects_only_to_local_paths(client):
    for target in ("https://evil.test/", "//evil.test/x", "/\\evil.test"):
        response = await client.post("/login", data={"token": TOKEN, "next": target})
        assert response.headers["location"] == "/"


def test_sessions_are_signed_and_expire():
    guard = Guard(TOKEN)
    value = guard.new_session(now=1000.0)
    assert guard.session_nonce(value, now=1001.0)
    assert guard.session_nonce(value, now=1000.0 + 13 * 3600) is None  # past SESSION_TTL
    assert Guard(TOKEN + "2").session_nonce(value, now=1001.0) is None  # a new token ends sessions
    expires, nonce, sig = value.split(".")
    assert guard.session_nonce(f"{int(expires) + 9999}.{nonce}.{sig}", now=1001.0) is None  # no tampering
    assert SESSION_COOKIE == "postroom_session"
