"""A hostile device-code endpoint (RFC 8628's first answer), on a real socket: an expiry or a
poll interval of 1e30, "inf" or NaN, a body that is no JSON object, a missing code. Each ends
in a clear transient error or a clamped value, never an OverflowError or a KeyError."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from postroom.auth.flows import start_device_flow
from postroom.auth.tokens import OAuth2Client
from postroom.config.providers import PROVIDERS, MailProtocol, ProviderName
from postroom.errors import PostroomError, ServerBusy

NOW = datetime(2026, 12, 8, 1, 0, tzinfo=UTC)
CODES = '"device_code": "dc-1", "user_code": "ABCD-EFGH", "verification_uri": "http://127.0.0.1/device"'


class DeviceCodeServer:
    """Answers every POST with ``self.body`` (status 200)."""

    def __init__(self) -> None:
        self.body = b"{}"
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/devicecode"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def device_server() -> Iterator[DeviceCodeServer]:
    server = DeviceCodeServer()
    yield server
    server.close()


def _client() -> OAuth2Client:
    return OAuth2Client.for_provider(
        "alice",
        PROVIDERS[ProviderName.MICROSOFT],
        client_id="maillab-public",
        tenant="organizations",
        authority="http://127.0.0.1:9",
        protocols=(MailProtocol.IMAP,),
    )


@pytest.mark.parametrize(
    ("expires_in", "interval", "lifetime", "poll"),
    [
        ("1e30", "1e30", timedelta(days=1), 60.0),
        ('"inf"', "NaN", timedelta(minutes=5), 5.0),
        ("1" + "0" * 400, '"soon"', timedelta(days=1), 5.0),
        ("-5", "0", timedelta(minutes=5), 1.0),
        ("900", "5", timedelta(seconds=900), 5.0),
    ],
)
async def test_a_silly_expiry_or_interval_is_clamped(device_server, expires_in, interval, lifetime, poll) -> None:
    device_server.body = f'{{{CODES}, "expires_in": {expires_in}, "interval": {interval}}}'.encode()
    async with httpx.AsyncClient() as http:
        code = await start_device_flow(http, _client(), device_server.url, NOW)
    assert code.expires_at == NOW + lifetime
    assert code.interval == poll


@pytest.mark.parametrize(
    "body",
    [b"<html>captive portal</html>", b"[1, 2]", b"[" * 100_000 + b"]" * 100_000, b'{"user_code": "ABCD"}'],
    ids=["html", "list", "nested", "no_device_code"],
)
async def test_an_answer_without_codes_is_a_transient_error(device_server, body) -> None:
    device_server.body = body
    async with httpx.AsyncClient() as http:
        with pytest.raises(ServerBusy) as caught:
            await start_device_flow(http, _client(), device_server.url, NOW)
    assert isinstance(caught.value, PostroomError) and "device code" in str(caught.value)
