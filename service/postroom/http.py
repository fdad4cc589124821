"""The operator's HTTP endpoint on POSTROOM_HTTP: the probes, /metrics and the console.

Starlette served by uvicorn (plain, h11), on the daemon's own event loop, so a /healthz
answer proves the loop is turning:

    /healthz  200 "ok" whenever the loop answers (liveness)
    /readyz   200 when `readiness()` says so, else 503 with JSON details; always 503 while
              starting or stopping, so a load balancer drains us before we go
    /metrics  Prometheus text exposition of the registry
    anything else: the console (``postroom.console``) once the daemon attaches it, behind its
              token; 503 while starting, 404 when there is no console

Bad input never reaches the daemon: the request head has a deadline (408) and a size bound
(431), at most MAX_HEADERS headers (431); idle keep-alive connections close after KEEP_ALIVE
seconds; every failure ends that connection only. The first two are ``_BoundedH11``: uvicorn
has neither.

Connections are bounded without starving the probes: at most MAX_CONNECTIONS requests other
than /healthz and /readyz are served at once (503 past that: shed, not queued); at most
MAX_CONNECTIONS + PROBE_RESERVE connections are open, and one more makes room by closing the
oldest connection that is idle (no request in progress), so 80 idle connections cannot keep a
liveness probe out.

``Host`` is checked on every path (DNS rebinding: a web page whose name resolves to us must not
read /metrics or the console): an IP address, a loopback name (``localhost``), the listen host
and the names in POSTROOM_CONSOLE_HOSTS pass; any other name gets 421.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any

import structlog
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import ConfigError, PortInUse
from .listening import port_holder

log = structlog.get_logger(__name__)

Readiness = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]

READ_TIMEOUT = 5.0  # seconds for a client to send its whole request head
KEEP_ALIVE = 5.0  # seconds an idle keep-alive connection stays open
STOP_TIMEOUT = 5.0  # seconds requests in progress may take to finish at stop
READINESS_TIMEOUT = 5.0  # a readiness check slower than this counts as not ready
MAX_HEAD = 16 * 1024  # bytes of request line + headers
MAX_HEADERS = 100
MAX_CONNECTIONS = 64  # requests in progress, probes aside
PROBE_RESERVE = 16  # connections open beyond MAX_CONNECTIONS, for the probes
PROBES = ("/healthz", "/readyz", "/metrics")
ALWAYS_SERVED = frozenset({"/healthz", "/readyz"})  # even when the console and /metrics are shed
LOOPBACK_NAMES = ("localhost", "localhost.")
_NO_STORE = {"Cache-Control": "no-store"}

# uvicorn speaks through stdlib logging ("Shutting down", "Waiting for connections…"): only
# its warnings are worth a line in the daemon's log.
logging.getLogger("uvicorn").setLevel(logging.WARNING)


class Phase(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"


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


def is_loopback(host: str) -> bool:
    """Only this machine can reach an address like this (127.0.0.0/8, ::1)."""
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_names(listen_host: str | None, configured: str) -> frozenset[str]:
    """The names (besides IP addresses and loopback names) a request's Host may carry: the
    listen host and POSTROOM_CONSOLE_HOSTS (names separated by commas or spaces)."""
    names = {name.strip().lower().rstrip(".") for name in configured.replace(",", " ").split()}
    if listen_host:
        names.add(listen_host.lower())
    return frozenset(name for name in names if name)


def host_allowed(host_header: str | None, names: frozenset[str]) -> bool:
    """Whether a request for ``Host: host_header`` is meant for us (see the module doc)."""
    import ipaddress

    if host_header is None:  # HTTP/1.0 without Host: no browser sends that
        return True
    host = host_header.strip().lower()
    if host.startswith("["):  # [v6]:port
        host = host[1 : host.find("]")] if "]" in host else ""
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    try:
        ipaddress.ip_address(host)
        return True  # an address names no one else: DNS rebinding needs a name
    except ValueError:
        pass
    bare = host.rstrip(".")
    return bool(bare) and (bare in LOOPBACK_NAMES or bare.endswith(".localhost") or bare in names)


class HttpServer:
    """Serve the probes, metrics and (once attached) the console.
    Lifecycle: `start()`, `attach_console()`, `mark_running()`, `mark_stopping()`, `stop()`."""

    def __init__(
        self,
        listen: str,
        *,
        registry: CollectorRegistry,
        readiness: Readiness,
        read_timeout: float = READ_TIMEOUT,
        hosts: str = "",
    ):
        """``hosts``: POSTROOM_CONSOLE_HOSTS, the names besides addresses we answer to."""
        self.address = parse_listen(listen)
        self.hosts = host_names(self.address[0] if self.address else None, hosts)
        self._busy = 0  # requests in progress other than ALWAYS_SERVED
        self.read_timeout = read_timeout
        self.registry = registry
        self.readiness = readiness
        self.phase = Phase.STARTING
        self.console: ASGIApp | None = None
        self.console_note = ""  # what / says when there is no console
        self._probes = Starlette(
            routes=[
                Route("/healthz", self._healthz, methods=["GET"]),
                Route("/readyz", self._readyz, methods=["GET"]),
                Route("/metrics", self._metrics, methods=["GET"]),
            ]
        )
        self._server: uvicorn.Server | None = None

    async def start(self) -> tuple[str, int] | None:
        """Listen; returns the bound (host, port) — port 0 picks one — or None when disabled."""
        if self.address is None:
            return None
        host, port = self.address
        # Bound here, not by uvicorn: it ends the process (sys.exit) when it cannot listen.
        try:
            sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:  # a moment's clash (a restart racing the old process) passes
                holder = port_holder(port)
                raise PortInUse(
                    f"POSTROOM_HTTP: {host}:{port} is in use" + (f" by {holder}" if holder else "") + "; stop that "
                    "process or give POSTROOM_HTTP another port (systemd tries again: exit 75, EX_TEMPFAIL)"
                ) from exc
            raise ConfigError(f"POSTROOM_HTTP: cannot listen on {host}:{port}: {exc.strerror}") from exc
        sock.setblocking(False)
        config = uvicorn.Config(
            self,
            http=_bounded_h11(self.read_timeout),
            ws="none",
            lifespan="off",
            interface="asgi3",
            log_config=None,
            access_log=False,
            limit_concurrency=None,  # ours (see the module doc): uvicorn's would shed the probes too
            h11_max_incomplete_event_size=MAX_HEAD * 2,
            timeout_keep_alive=int(KEEP_ALIVE),
            timeout_graceful_shutdown=int(STOP_TIMEOUT),
            server_header=False,
            date_header=False,
        )
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        # Not server.serve(): that would take the signals (the daemon has its own) and tick
        # ten times a second (for a Date header we do without); startup/shutdown are enough.
        await server.startup(sockets=[sock])
        self._server = server
        bound = sock.getsockname()
        log.info("http listening", host=bound[0], port=bound[1])
        return bound[0], bound[1]

    def attach_console(self, app: ASGIApp | None, note: str = "") -> None:
        """Serve ``app`` for every path but the probes (None: answer 404 with ``note``)."""
        self.console, self.console_note = app, note

    def mark_running(self) -> None:
        self.phase = Phase.RUNNING

    def mark_stopping(self) -> None:
        self.phase = Phase.STOPPING

    async def stop(self) -> None:
        self.phase = Phase.STOPPING
        if self._server is None:
            return
        server, self._server = self._server, None
        await server.shutdown()
        for sock in (s for srv in server.servers for s in (srv.sockets or ())):
            sock.close()

    # -- requests ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if len(scope["headers"]) > MAX_HEADERS:
            await PlainTextResponse("too many headers\n", 431)(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
        if not host_allowed(host, self.hosts):
            text = "misdirected request: this server does not answer to that Host (see POSTROOM_CONSOLE_HOSTS)\n"
            await PlainTextResponse(text, 421)(scope, receive, send)
            return
        if scope["path"] in ALWAYS_SERVED:
            await self._probes(scope, receive, send)
            return
        if self._busy >= MAX_CONNECTIONS:
            await PlainTextResponse("busy: too many requests at once\n", 503)(scope, receive, send)
            return
        self._busy += 1
        try:
            await self._serve(scope, receive, send)
        finally:
            self._busy -= 1

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] in PROBES:
            await self._probes(scope, receive, send)
        elif self.console is not None:
            await self.console(scope, receive, send)
        elif self.phase is Phase.STARTING:  # the console comes once the store is open
            await PlainTextResponse("starting\n", 503, headers=_NO_STORE)(scope, receive, send)
        else:
            await PlainTextResponse(f"not found\n{self.console_note}\n", 404)(scope, receive, send)

    async def _healthz(self, _request: Request) -> Response:
        return PlainTextResponse("ok\n", headers=_NO_STORE)

    async def _readyz(self, _request: Request) -> Response:
        ready, details = await self._ready()
        body = (json.dumps({"ready": ready, **details}, default=str, sort_keys=True) + "\n").encode()
        return Response(body, 200 if ready else 503, media_type="application/json", headers=_NO_STORE)

    async def _metrics(self, _request: Request) -> Response:
        # Collectors may query the store: keep that blocking I/O off the event loop.
        body = await asyncio.to_thread(generate_latest, self.registry)
        return Response(body, headers={**_NO_STORE, "Content-Type": CONTENT_TYPE_LATEST})

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


def _bounded_h11(read_timeout: float) -> type[H11Protocol]:
    """uvicorn's HTTP/1.1 protocol with what it lacks: a deadline for each request head (a
    client that opens a connection and trickles, or sends nothing, gets 408 and is closed) and
    a bound on the head's size answered with 431 (h11 itself would answer 400)."""

    # This server's open connections, oldest first: a new one past the limit closes the
    # oldest idle one (a connection is idle while it waits for a request head).
    open_connections: dict[BoundedH11, None] = {}

    class BoundedH11(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _waiting_after: object = None  # the cycle before the head we wait for

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            open_connections[self] = None
            self._arm()
            if len(open_connections) > MAX_CONNECTIONS + PROBE_RESERVE:
                idle = next((c for c in open_connections if c is not self and c._idle()), None)
                (idle or self)._refuse(b"503 Service Unavailable", b"too many connections\n")

        def connection_lost(self, exc: Exception | None) -> None:
            open_connections.pop(self, None)
            self._disarm()
            super().connection_lost(exc)

        def _idle(self) -> bool:
            return self._deadline is not None and self.cycle is self._waiting_after and not self.transport.is_closing()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request on this connection has its own deadline

        def data_received(self, data: bytes) -> None:
            if self._deadline is not None:
                pending = self.conn.trailing_data[0] + data
                if len(pending) > MAX_HEAD and not _has_blank_line(pending[:MAX_HEAD]):
                    self._refuse(b"431 Request Header Fields Too Large", b"request head too large\n")
                    return
            super().data_received(data)
            if self._deadline is not None and self.cycle is not self._waiting_after:
                self._disarm()  # the head is in

        def _arm(self) -> None:
            self._disarm()
            self._waiting_after = self.cycle
            self._deadline = self.loop.call_later(read_timeout, self._timed_out)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _timed_out(self) -> None:
            self._deadline = None
            if self.cycle is self._waiting_after and not self.transport.is_closing():
                self._refuse(b"408 Request Timeout", b"request timeout\n")

        def _refuse(self, status: bytes, body: bytes) -> None:
            open_connections.pop(self, None)  # closing: it holds no place any more
            self._disarm()
            self.transport.write(
                b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
            )
            self.transport.close()

    return BoundedH11


def _has_blank_line(head: bytes) -> bool:
    return b"\n\r\n" in head or b"\n\n" in head
