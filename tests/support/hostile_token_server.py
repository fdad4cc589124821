"""A hostile OAuth2 token endpoint on a real socket: it answers /token in one of ``SHAPES``.

For faults the lab's token server will not produce (an ``expires_in`` of 1e30, a reply of
64 MiB, an ``error_description`` echoing the request). With ``upstream`` (the lab token
server's /token) it is a proxy that bends a real answer: the access token stays one Dovecot
accepts, only ``expires_in`` is hostile, so a test can see the mail go out after all.

``sent`` counts the bytes written for the current shape: a client that reads a huge reply to
the end lets all of it through, one with a cap hangs up early.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx

HUGE_BYTES = 64 * 1024 * 1024
_CHUNK = b" " * 65536

# expires_in as a hostile endpoint may send it (the JSON value as written on the wire).
HOSTILE_EXPIRES = {
    "missing": None,
    "text": '"soon"',
    "negative": "-5",
    "zero": "0",
    "1e12": "1e12",
    "1e30": "1e30",
    "inf_text": '"inf"',
    "Infinity": "Infinity",
    "NaN": "NaN",
    "nan_text": '"NaN"',
    "huge_int": "1" + "0" * 400,
    "object": '{"seconds": 60}',
}
# Whole answers that are no token reply: (status, body).
BROKEN_REPLIES = {
    "not_json": (200, b"<html>captive portal</html>"),
    "nested": (200, b"[" * 200_000 + b"]" * 200_000),
    "no_token": (200, b'{"token_type": "Bearer", "expires_in": 3600}'),
}
ECHO = "echo"  # 400 invalid_request, error_description and error_uri echo the request
ECHO_BUSY = "echo_busy"  # the same as a 503: transient
HUGE = "huge"  # 200, then HUGE_BYTES of JSON whitespace, never a complete answer


class HostileTokenServer:
    def __init__(self, upstream: str | None = None) -> None:
        self.upstream = upstream
        self.shape = "1e30"
        self.sent = 0
        self.requests = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="hostile-token", daemon=True)

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def __enter__(self) -> HostileTokenServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def answer(self, form: dict[str, str]) -> tuple[int, Iterator[bytes]]:
        self.requests += 1
        if self.shape == HUGE:
            return 200, _huge()
        if self.shape in (ECHO, ECHO_BUSY):
            echoed = urlencode(form)
            body = {
                "error": "invalid_request" if self.shape == ECHO else "server_error",
                "error_description": f"bad request: {echoed} (as JSON: {json.dumps(form)})",
                "error_uri": f"https://idp.test/help?{echoed}",
            }
            return (400 if self.shape == ECHO else 503), iter([json.dumps(body).encode()])
        if self.shape in BROKEN_REPLIES:
            status, raw = BROKEN_REPLIES[self.shape]
            return status, iter([raw])
        return 200, iter([self._bent(form)])

    def _bent(self, form: dict[str, str]) -> bytes:
        """A real token reply (from upstream, or a made-up token) with a hostile expires_in."""
        if self.upstream is not None:
            real = httpx.post(self.upstream, data=form, timeout=10).json()
        else:
            real = {"access_token": "hostile-at.Zq81vTTe0aLw2PqR4mXy", "token_type": "Bearer"}
        real.pop("expires_in", None)
        text = json.dumps(real)
        value = HOSTILE_EXPIRES[self.shape]
        if value is None:
            return text.encode()
        return (text[:-1] + f', "expires_in": {value}}}').encode()


def _huge() -> Iterator[bytes]:
    yield b'{"access_token": "x", "padding": "'
    for _ in range(HUGE_BYTES // len(_CHUNK)):
        yield _CHUNK


def _handler_for(server: HostileTokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the answer ends when the connection closes

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = dict(parse_qsl(self.rfile.read(length).decode(), keep_blank_values=True))
            status, chunks = server.answer(form)
            server.sent = 0
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            try:
                for chunk in chunks:
                    self.wfile.write(chunk)
                    server.sent += len(chunk)
            except OSError:  # the client hung up: what a capped reader does
                pass

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
