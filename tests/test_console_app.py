"""The console app's seams, in process: when the daemon serves it (the token rules) and extra
mounts (`postroom preview`) behind the same token. The pages themselves are tested in a real
browser against the real daemon (test_console_browser.py)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from postroom.config import Settings
from postroom.console.app import NAV, Console, build_console, navigation
from postroom.console.daemon import MIN_TOKEN, console_token
from postroom.errors import ConfigError
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

TOKEN = "a-console-token-long-enough"


def settings(http: str, token: str | None) -> Settings:
    return Settings(http=http, console_token=token)


def test_no_token_no_console_on_any_address():
    assert console_token(settings("127.0.0.1:9325", None)) is None
    assert console_token(settings("0.0.0.0:9325", None)) is None  # refused, with a warning in the log
    assert console_token(settings("[::]:9325", "  ")) is None


def test_a_token_turns_the_console_on_and_a_short_one_is_a_config_error():
    assert console_token(settings("0.0.0.0:9325", TOKEN)) == TOKEN
    assert console_token(settings("", TOKEN)) is None  # no listener at all
    with pytest.raises(ConfigError, match="POSTROOM_CONSOLE_TOKEN"):
        console_token(settings("127.0.0.1:9325", "x" * (MIN_TOKEN - 1)))


def test_the_token_never_shows_in_the_settings():
    shown = repr(settings("127.0.0.1:9325", TOKEN))
    assert TOKEN not in shown


async def preview_app(scope: Scope, receive: Receive, send: Send) -> None:
    await PlainTextResponse(f"preview at {scope['path']}")(scope, receive, send)


async def test_extra_mounts_are_served_behind_the_same_token():
    app = build_console(object(), TOKEN, extra_mounts={"/preview": preview_app})  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://console") as client:
        assert (await client.get("/preview/x")).status_code == 401
        answer = await client.get("/preview/x", headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 200 and answer.text.startswith("preview at")


def test_the_navigation_links_the_extra_mounts():
    nav = navigation(["/preview"])
    assert nav[: len(NAV)] == list(NAV) and nav[-1] == ("/preview", "Preview")
    console = Console(object(), nav=nav)  # type: ignore[arg-type]
    page: Any = console.env.get_template("base.html").render(
        nav=console.nav, path="/", title="t", live_only=False, note=None, csrf="c", refresh=5, now=None
    )
    assert '<a href="/preview">Preview</a>' in page
