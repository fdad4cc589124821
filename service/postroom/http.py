"""The operator's HTTP endpoint: /healthz, /readyz and /metrics on POSTROOM_HTTP.

A deliberately tiny HTTP/1.1 server on asyncio.start_server (no web framework to install or
patch): one request per connection, answered and closed. It runs on the daemon's own event
loop, so a /healthz answer proves the loop is turning.

    /healthz  200 "ok" whenever the loop answers (liveness)
    /readyz   200 when `readiness()` says so, else 503 with JSON details; always 503 while
              starting or stopping, so a load balancer drains us before we go
    /metrics  Prometheus text exposition of the registry

Bad input never reaches the daemon: each connection has a read deadline, bounded request
size and a cap on how many are open at once; every failure ends that connection only.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .errors import ConfigError

log = structlog.get_logger(__name__)

Readiness = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]

READ_TIMEOUT = 5.0  # seconds for a client to send its whole request head
WRITE_TIMEOUT = 10.0  # seconds for a client to take the response
READINESS_TIMEOUT = 5.0  # a readiness check slower than this counts as not ready
MAX_LINE = 8192
MAX_HEADERS = 100
MAX_CONNECTIONS = 64

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}
_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json"


class Phase(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"


class BadRequest(Exception):
    def __init__(self, status: int, why: str):
        self.status = status
        super().__init__(why)


def parse_listen(listen: str) -> tuple[str, int] | None:
    """'host:port', '[v6]:port', ':port' (loopback) or '' (disabled) -> (host, port) or None.
    Every interface only when asked for by name (0.0.0.0, [::]): metrics and readiness are
    for this machine unless the operator says otherwise."""
    listen = listen.strip()
    if not listen:
        return None
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"POSTROOM_HTTP: expected host:port (or empty to disable), got {listen!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


class HttpServer:
    """Serve health and metrics. Lifecycle: `start()`, `mark_running()`, `mark_stopping()`, `stop()`."""

    def __init__(self, listen: str, *, registry: CollectorRegistry, readiness: Readiness,
                 read_timeout: float = READ_TIMEOUT):
        self.address = parse_listen(listen)
        self.read_timeout = read_timeout
        self.registry = registry
        self.readiness = readiness
        self.phase = Phase.STARTING
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def start(self) -> tuple[str, int] | None:
        """Listen; returns the bound (host, port) — port 0 picks one — or None when disabled."""
        if self.address is None:
            return None
        host, port = self.address
        try:
            self._server = await asyncio.start_server(self._handle, host, port, limit=MAX_LINE)
        except OSError as exc:
            raise ConfigError(f"POSTROOM_HTTP: cannot listen on {host}:{port}: {exc.strerror}") from exc
        bound = self._server.sockets[0].getsockname()
        log.info("http listening", host=bound[0], port=bound[1])
        return bound[0], bound[1]

    def mark_running(self) -> None:
        self.phase = Phase.RUNNING

    def mark_stopping(self) -> None:
        self.phase = Phase.STOPPING

    async def stop(self) -> None:
        self.phase = Phase.STOPPING
        if self._server is None:
            return
        self._server.close()
        # Python 3.11's wait_closed does not wait for open connections: end them ourselves.
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    # -- one connection ---------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            if self._slots.locked():  # too many open: shed this one instead of queueing it
                await _respond(writer, 503, b"busy\n", _TEXT)
                return
            async with self._slots:
                await self._serve_one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the client went away or stalled; nothing more to say to it
        except Exception:
            log.exception("http handler failed")
        finally:
            writer.close()
            if task is not None:
                self._handlers.discard(task)

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, path = await asyncio.wait_for(_read_head(reader), self.read_timeout)
        except TimeoutError:
            await _respond(writer, 408, b"request timeout\n", _TEXT)
            return
        except BadRequest as exc:
            await _respond(writer, exc.status, f"{exc}\n".encode(), _TEXT)
            return
        head_only = method == "HEAD"
        if method not in ("GET", "HEAD"):
            await _respond(writer, 405, b"method not allowed\n", _TEXT, extra={"Allow": "GET, HEAD"})
            return
        status, body, ctype = await self._route(path)
        await _respond(writer, status, body, ctype, head_only=head_only)

    async def _route(self, path: str) -> tuple[int, bytes, str]:
        path = path.split("?", 1)[0]
        if path == "/healthz":
            return 200, b"ok\n", _TEXT
        if path == "/readyz":
            ready, details = await self._ready()
            return (200 if ready else 503), _json({"ready": ready, **details}), _JSON
        if path == "/metrics":
            # Collectors may query the store: keep that blocking I/O off the event loop.
            body = await asyncio.to_thread(generate_latest, self.registry)
            return 200, body, CONTENT_TYPE_LATEST
        return 404, b"not found\n", _TEXT

    async def _ready(self) -> tuple[bool, dict[str, Any]]:
        if self.phase is not Phase.RUNNING:
            return False, {"phase": self.phase.value}
        try:
            ready, details = await asyncio.wait_for(self.readiness(), READINESS_TIMEOUT)
        except TimeoutError:
            return False, {"phase": self.phase.value, "error": "readiness check timed out"}
        except Exception as exc:
            log.warning("readiness check failed", error=type(exc).__name__)
            return False, {"phase": self.phase.value, "error": type(exc).__name__}
        return bool(ready), {"phase": self.phase.value, **details}


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str]:
    """Read the request line and headers (ignored); return (method, target)."""
    line = await _read_line(reader)
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        raise BadRequest(400, "malformed request line")
    for _ in range(MAX_HEADERS):
        if not await _read_line(reader):
            return parts[0], parts[1]
    raise BadRequest(431, "too many headers")


async def _read_line(reader: asyncio.StreamReader) -> str:
    try:
        raw = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError as exc:
        raise BadRequest(431, "line too long") from exc
    try:
        return raw.decode("ascii").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise BadRequest(400, "non-ASCII request head") from exc


async def _respond(writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str, *,
                   head_only: bool = False, extra: dict[str, str] | None = None) -> None:
    headers = {"Content-Type": ctype, "Content-Length": str(len(body)), "Connection": "close",
               "Cache-Control": "no-store", **(extra or {})}
    head = f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    writer.write(head.encode("ascii") + (b"" if head_only else body))
    # A client that never reads must not hold a connection slot for ever.
    await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)


def _json(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, default=str, sort_keys=True) + "\n").encode()
