"""The console and the HTTP listener against a hostile client (issue 18, item 5): an open
redirect hidden behind a tab, 300 wrong tokens in a row, a weak token, a session cookie kept
after sign-out, a foreign Host (DNS rebinding), 80 idle connections in front of a probe, and a
carriage return in row data injected into the preview's event stream.

The guard runs in process (httpx's ASGI transport); the listener, the preview stream and the
daemon's start-up are real (sockets, uvicorn, `postroom run`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from postroom.config import Settings
from postroom.console.preview import preview_app, sse_event
from postroom.console.security import (
    FREE_FAILURES,
    LONGEST_WAIT,
    SESSION_COOKIE,
    SignInThrottle,
    require_token,
    token_weakness,
)
from postroom.http import MAX_CONNECTIONS, PROBE_RESERVE, HttpServer
from postroom.metrics import Metrics
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tests.support.daemon import ROOT, free_port, run_cli

TOKEN = "t0ken-for-the-console-tests"


async def page(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"page csrf={request.state.csrf}")


# The console's clock in these tests: still, so 300 tries land inside one wait however slow
# the machine is (a wait is seconds of real time otherwise).
STILL = 1_000_000.0


def guarded() -> Starlette:
    return require_token(Starlette(routes=[Route("/", page)]), TOKEN, clock=lambda: STILL)  # type: ignore[return-value]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=guarded(), client=("203.0.113.7", 4711))
    async with httpx.AsyncClient(transport=transport, base_url="http://console") as c:
        yield c


async def test_next_with_a_tab_newline_or_control_character_goes_home(client: httpx.AsyncClient) -> None:
    hostile = ["/\t/evil.test", "/\n/evil.test", "/\r/evil.test", "/\x00//evil.test", "/ /evil.test", "/\x7f/x"]
    for target in hostile:
        signed = await client.post("/login", data={"token": TOKEN, "next": target})
        assert signed.headers["location"] == "/", repr(target)
        # and the login page's own ?next= (the form's action and hidden field) drops it too
        form = await client.get("/login", params={"next": target})
        assert "evil" not in form.text, repr(target)
    kept = await client.post("/login", data={"token": TOKEN, "next": "/outbox?note=a%09b"})
    assert kept.headers["location"] == "/outbox?note=a%09b"  # an encoded tab is only text


async def test_300_wrong_tokens_meet_a_growing_wait_with_429_and_retry_after(client: httpx.AsyncClient) -> None:
    answers = [await client.post("/login", data={"token": f"guess-{n:04d}-xxxxxxxxxx"}) for n in range(300)]
    checked = [a for a in answers if a.status_code == 401]
    refused = [a for a in answers if a.status_code == 429]

    assert len(checked) == FREE_FAILURES + 1  # the free ones, and the one that earned the wait
    assert len(refused) == 300 - len(checked) and refused[0].headers["retry-after"] == "1"
    # During the wait even the right token is not checked, nor a Bearer one.
    assert (await client.post("/login", data={"token": TOKEN})).status_code == 429
    assert (await client.get("/", headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 429
    # Another client is not held up by this one.
    other = httpx.ASGITransport(app=guarded(), client=("198.51.100.1", 1))
    async with httpx.AsyncClient(transport=other, base_url="http://console") as elsewhere:
        assert (await elsewhere.post("/login", data={"token": TOKEN})).status_code == 303


def test_the_wait_doubles_up_to_a_limit_and_a_right_token_clears_it() -> None:
    throttle = SignInThrottle()
    waits = [throttle.failed("a", now=1000.0 + n * 10_000) for n in range(FREE_FAILURES + 14)]
    assert waits[:FREE_FAILURES] == [0.0] * FREE_FAILURES
    assert waits[FREE_FAILURES : FREE_FAILURES + 5] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert waits[-1] == LONGEST_WAIT
    assert throttle.wait("a", now=1000.0 + (FREE_FAILURES + 13) * 10_000 + 1) > 0
    throttle.succeeded("a")
    assert throttle.wait("a", now=0.0) == 0.0 and throttle.failed("a", now=0.0) == 0.0


async def test_a_session_cookie_copied_before_sign_out_stops_working(client: httpx.AsyncClient) -> None:
    signed = await client.post("/login", data={"token": TOKEN})
    cookie = signed.cookies[SESSION_COOKIE]
    home = await client.get("/")
    csrf = home.text.split("csrf=", 1)[1]
    assert (await client.post("/logout", data={"csrf": csrf})).status_code == 303

    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, cookie)
    replayed = await client.get("/")
    assert replayed.status_code == 401


@pytest.mark.parametrize(
    ("token", "why"),
    [
        ("aaaaaaaaaaaaaaaa", "only 1 different characters"),
        ("abababababababababab", "only 2 different"),
        ("abcdefgh-abcdefgh-abcdefgh", "repeats 'abcdefgh-'"),
        ("abcdefghijklmnopq", "straight run"),
        ("0123456789abcdefgh", "straight run"),
        ("changeme-changeme", "common words"),
        ("Password123456!!!", "common words"),
        ("short-Xq3", "at least 16"),
    ],
)
def test_an_obvious_token_is_refused_and_says_why(token: str, why: str) -> None:
    weakness = token_weakness(token)
    assert weakness is not None and why in weakness


def test_random_and_passphrase_tokens_pass() -> None:
    for token in (TOKEN, "a-console-token-long-enough", "Xq3vT9kLp2Zw8Yt5", "correct-horse-battery-staple"):
        assert token_weakness(token) is None, token


def test_the_daemon_refuses_a_weak_console_token_at_start_with_exit_78(tmp_path: Path) -> None:
    (tmp_path / "postroom.yaml").write_text("accounts: {}\n")
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "POSTROOM_CONFIG": str(tmp_path / "postroom.yaml"),
        "POSTROOM_STATE_DIR": str(tmp_path / "state"),
        "POSTROOM_HTTP": f"127.0.0.1:{free_port()}",
        "POSTROOM_CONSOLE_TOKEN": "aaaaaaaaaaaaaaaa",
    }
    done = run_cli(["run"], env, timeout=60)
    assert done.returncode == 78, done.stdout + done.stderr
    assert "POSTROOM_CONSOLE_TOKEN is too easy to guess: it uses only 1 different characters" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr and "aaaaaaaaaaaaaaaa" not in done.stdout + done.stderr


# -- the listener --------------------------------------------------------------------------


async def ready() -> tuple[bool, dict[str, object]]:
    return True, {}


@pytest.fixture
async def listener() -> AsyncIterator[tuple[HttpServer, str]]:
    server = HttpServer(
        "127.0.0.1:0", registry=Metrics().registry, readiness=ready, hosts="postroom.internal, ops.test"
    )
    host, port = await server.start()
    server.attach_console(guarded())
    server.mark_running()
    yield server, f"http://{host}:{port}"
    await server.stop()


async def test_a_foreign_host_is_refused_on_every_path(listener: tuple[HttpServer, str]) -> None:
    _, url = listener
    port = url.rsplit(":", 1)[1]
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        for path in ("/metrics", "/", "/login", "/healthz", "/readyz"):
            rebound = await http.get(path, headers={"Host": f"evil.test:{port}"})
            assert rebound.status_code == 421, path
            assert "POSTROOM_CONSOLE_HOSTS" in rebound.text
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "postroom.internal", f"OPS.test:{port}", "[::1]"):
            assert (await http.get("/metrics", headers={"Host": host})).status_code == 200, host


async def test_probes_are_answered_with_80_idle_connections_open(listener: tuple[HttpServer, str]) -> None:
    _, url = listener
    host, port = url.removeprefix("http://").rsplit(":", 1)
    idle = [await asyncio.open_connection(host, int(port)) for _ in range(80)]
    try:
        await asyncio.sleep(0.3)  # every one accepted and waiting for its head
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            for _ in range(3):
                assert (await http.get("/healthz")).status_code == 200
                assert (await http.get("/readyz")).status_code == 200
    finally:
        for _, writer in idle:
            writer.close()
    assert MAX_CONNECTIONS + PROBE_RESERVE <= 80  # the test really passes the limit


async def test_pages_are_shed_past_the_limit_but_probes_still_answered(listener: tuple[HttpServer, str]) -> None:
    server, url = listener
    server._busy = MAX_CONNECTIONS  # as if that many console requests were in progress
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            assert (await http.get("/metrics")).status_code == 503
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.get("/readyz")).status_code == 200
    finally:
        server._busy = 0


# -- the preview's event stream --------------------------------------------------------------

INJECTED = "Eve\rid: 666\rretry: 1\revent: evil\r\rdata: forged"


def test_an_event_field_cannot_be_split_by_cr_or_lf() -> None:
    event = sse_event("render\rretry: 1", "sig\nid: 2", f"<p>{INJECTED}</p>")
    lines = re.split(r"\r\n|\r|\n", event)
    assert [line for line in lines if not line.startswith("data: ")] == [
        "event: renderretry: 1",
        "id: sigid: 2",
        "",
        "",
    ]
    assert event.endswith("\n\n") and "\r" not in event


@pytest.fixture
def preview_project(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "note.j2").write_text(
        "{% block subject %}For {{ row.name }}{% endblock %}{% block text %}Dear {{ row.name }}{% endblock %}\n"
    )
    (tmp_path / "people.json").write_text(json.dumps([{"name": INJECTED, "email": "eve@example.test"}]))
    (tmp_path / "postroom.yaml").write_text(
        "accounts:\n  a: {address: a@example.test, smtp: {host: 127.0.0.1, port: 25, security: none}}\n"
        "jobs:\n  notes:\n    schedule: {every: 1h}\n    account: a\n    template: note\n"
        '    to: ["{{ row.email }}"]\n    data: {people: {file: people.json}}\n    for_each: people\n'
    )
    yield tmp_path


async def test_a_carriage_return_in_row_data_injects_no_field_into_the_preview_stream(preview_project: Path) -> None:
    settings = Settings(config=preview_project / "postroom.yaml", templates=preview_project / "templates")
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = preview_app(settings, token="preview-token-Xq3vT9kLp2", port=port)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await asyncio.sleep(0.3)
        cookies = {f"postroom_preview_{port}": "preview-token-Xq3vT9kLp2"}
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", cookies=cookies, timeout=20) as http,
            http.stream("GET", "/events?job=notes&row=0") as stream,
        ):
            raw = b""
            async for chunk in stream.aiter_raw():
                raw += chunk
                if b"event: render" in raw and raw.endswith(b"\n\n"):
                    break
        text = raw.decode()
        assert "Eve" in text  # the row was rendered into the stream
        fields = [line.split(":", 1)[0] for line in re.split(r"\r\n|\r|\n", text) if line and not line.startswith(":")]
        assert set(fields) == {"retry", "event", "id", "data"}
        assert fields.count("retry") == 1 and fields.count("id") == 1 and fields.count("event") == 1
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(serving, 10)
