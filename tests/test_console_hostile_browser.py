"""The console's sign-in in a real headless Chromium, where the browser's own reading of a
URL is the attack: a tab in ``next`` (``/\\t/evil.test``), which Chromium drops, turning the
redirect after sign-in into ``//evil.test``. The guard (``require_token``) is served by
uvicorn on loopback; the browser signs in through its form."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from urllib.parse import quote

import pytest
import uvicorn
from postroom.console.security import SESSION_COOKIE, require_token
from selenium.webdriver.common.by import By
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from tests.support.chromium import chromium
from tests.support.daemon import wait_until

TOKEN = "Xq3vT9kLp2Zw8Yt5-browser"


async def home(_request: Request) -> HTMLResponse:
    return HTMLResponse("<!doctype html><title>home</title><p id=home>signed in</p>")


@pytest.fixture(scope="module")
def console() -> Iterator[str]:
    app = require_token(Starlette(routes=[Route("/", home)]), TOKEN, stylesheet=None)
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    wait_until(lambda: server.started, 10, "uvicorn")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.mark.parametrize("hostile", ["/\t/evil.test/", "/\n/evil.test/", "/\r\n/evil.test/"])
def test_a_tab_or_newline_in_next_does_not_take_the_browser_off_site(console: str, hostile: str) -> None:
    with chromium() as browser:
        browser.get(f"{console}/login?next={quote(hostile, safe='')}")
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.CSS_SELECTOR, "form button").click()
        wait_until(lambda: browser.current_url != f"{console}/login?next={quote(hostile, safe='')}", 15, "redirect")
        wait_until(lambda: browser.execute_script("return document.readyState") == "complete", 15, "page")

        assert browser.current_url.startswith(console + "/"), browser.current_url
        assert "evil.test" not in browser.current_url
        assert browser.find_element(By.ID, "home").text == "signed in"
        assert browser.get_cookie(SESSION_COOKIE) is not None
