"""The template preview: a page showing a job's email (one row of a merge) as its reader sees
it, re-rendered and pushed to the open page (server-sent events) when a watched file is saved.

``preview_routes(...)`` are the page's routes, for the console to mount behind its own sign-in;
``serve_preview(...)`` runs them alone for `postroom preview`, on loopback, behind a token
printed in the URL (as Jupyter does): ``?token=…`` sets an HttpOnly SameSite=Strict cookie.

The email's HTML is the one thing on the page postroom did not write: it is served from its
own URL with a CSP ``sandbox`` (no scripts, a unique origin) that loads nothing remote, not even
images, into an ``<iframe sandbox>``. The page itself runs only postroom's own script.

Nothing is sent and nothing is stored: no store is opened (preview_render.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
import signal
import socket
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from time import monotonic
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import jinja2
import structlog
from starlette.applications import Starlette
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.responses import StreamingResponse as _Stream
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..clock import utcnow
from .preview_render import PROBLEM_KINDS, Preview, Problem, build_preview

if TYPE_CHECKING:
    from ..config import Config, Settings

log = structlog.get_logger(__name__)

HERE = Path(__file__).resolve().parent
POLL_SECONDS = 0.25  # how often the watched files' mtimes are read: a save shows within a second
KEEPALIVE_SECONDS = 15.0  # a comment on an idle stream, so a vanished browser is noticed
MAX_STREAM_SECONDS = 3600.0  # then the browser reconnects (EventSource does) with its Last-Event-ID
MAX_WATCHED_FILES = 5000  # files under the templates folder looked at per poll
MAX_FRAMES = 64  # rendered html parts kept for their frames to fetch
MAX_FRAME_BYTES = 32 * 1024 * 1024  # and at most this much of them
ASSETS = {  # the page's own files, all served from here (no CDN)
    "preview.css": "text/css",
    "preview.js": "text/javascript",
    "preview.svg": "image/svg+xml",
}

# The page: only its own script, style and icon; events and frames from itself.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "frame-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
# The email's html: no script runs (sandbox without allow-scripts), nothing remote loads (an
# image would tell the sender it was opened), only the page may frame it.
FRAME_CSP = (
    "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:; "
    "form-action 'none'; base-uri 'none'; frame-ancestors 'self'"
)
COMMON_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}

_pages = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(HERE / "templates")),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _secured(response: Response, csp: str = PAGE_CSP) -> Response:
    response.headers["Content-Security-Policy"] = csp
    response.headers.update(COMMON_HEADERS)
    # Mounted in the console, whose middleware adds X-Frame-Options: DENY where a response has
    # none: the email's frame is framed by its own page.
    response.headers["X-Frame-Options"] = "SAMEORIGIN" if csp == FRAME_CSP else "DENY"
    return response


def files_signature(paths: Sequence[Path]) -> str:
    """A short digest of the files' names, sizes and mtimes (folders: every file under them,
    up to MAX_WATCHED_FILES): it changes when any of them is saved, added or removed."""
    digest = hashlib.sha256()
    seen = 0
    for path in paths:
        for file in _files(path):
            seen += 1
            if seen > MAX_WATCHED_FILES:
                return digest.hexdigest()[:20]
            try:
                st = os.stat(file)
            except OSError:
                digest.update(f"{file}\0-\n".encode())
                continue
            digest.update(f"{file}\0{st.st_mtime_ns}\0{st.st_size}\n".encode(errors="replace"))
    return digest.hexdigest()[:20]


def _files(path: Path) -> list[str]:
    if not path.is_dir():
        return [str(path)]
    out: list[str] = []
    for top, dirs, names in os.walk(path):
        dirs.sort()
        out.extend(os.path.join(top, name) for name in sorted(names))
        if len(out) > MAX_WATCHED_FILES:
            break
    return out


class _Frames:
    """Rendered html parts by id, newest kept: the pane names one, its frame fetches it."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()  # panes are rendered in worker threads

    def add(self, html: str) -> str:
        key = secrets.token_urlsafe(12)
        body = html.encode("utf-8")
        with self._lock:
            self._items[key] = body
            self._size += len(body)
            while len(self._items) > 1 and (len(self._items) > MAX_FRAMES or self._size > MAX_FRAME_BYTES):
                _, dropped = self._items.popitem(last=False)
                self._size -= len(dropped)
        return key

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._items.get(key)


def _choice(request: Request) -> tuple[str | None, int | None]:
    job = request.query_params.get("job") or None
    row_text = request.query_params.get("row", "")
    row = int(row_text) if row_text.isdigit() and len(row_text) < 10 else None
    return job, row


def preview_routes(
    load_config: Callable[[], Config], *, templates_dir: Path, watch: Sequence[Path] = ()
) -> list[BaseRoute]:
    """The preview's routes, relative to where they are mounted: ``/`` (the page), ``events``
    (its updates), ``frame/ID`` (an email's html) and ``assets/NAME``.

    ``load_config`` is called for every render (off the event loop), so an edited config shows;
    ``watch``: the files and folders whose saving re-renders an open page (the config file; the
    templates folder is always watched)."""
    watched = [templates_dir, *watch]
    frames = _Frames()

    async def build(job: str | None, row: int | None) -> Preview:
        try:
            return await build_preview(load_config, templates_dir, job, row, now=utcnow())
        except Exception as exc:  # a bug must show on the page, not end the stream
            log.exception("preview failed", job=job, row=row)
            return Preview(jobs=[], job=job, row=row, problem=Problem("message", f"{type(exc).__name__}: {exc}"))

    def pane(preview: Preview, signature: str) -> str:
        frame = frames.add(preview.email.html) if preview.email is not None and preview.email.html else None
        return _pages.get_template("preview_pane.html").render(
            p=preview,
            frame=frame,
            kinds=PROBLEM_KINDS,
            signature=signature,
            rendered_at=utcnow().astimezone().strftime("%H:%M:%S"),
        )

    async def page(request: Request) -> Response:
        job, row = _choice(request)
        signature = await asyncio.to_thread(files_signature, watched)
        preview = await build(job, row)
        query = {"job": preview.job or "", "row": "" if preview.row is None else str(preview.row), "w": signature}
        body = await asyncio.to_thread(whole_page, preview, signature, "events?" + urlencode(query))
        return _secured(HTMLResponse(body))

    def whole_page(preview: Preview, signature: str, events: str) -> str:
        return _pages.get_template("preview.html").render(p=preview, pane=pane(preview, signature), events=events)

    async def events(request: Request) -> Response:
        job, row = _choice(request)
        seen = request.headers.get("last-event-id") or request.query_params.get("w", "")
        return _secured(_Stream(_updates(job, row, seen), media_type="text/event-stream"))

    async def _updates(job: str | None, row: int | None, seen: str) -> AsyncIterator[str]:
        yield "retry: 1000\n\n"
        started = last_sent = monotonic()
        while monotonic() - started < MAX_STREAM_SECONDS:
            signature = await asyncio.to_thread(files_signature, watched)
            if signature != seen:
                seen = signature
                html = await asyncio.to_thread(pane, await build(job, row), signature)  # a 2 MB text part…
                yield sse_event("render", signature, html)
                last_sent = monotonic()
            elif monotonic() - last_sent > KEEPALIVE_SECONDS:
                yield ": still here\n\n"
                last_sent = monotonic()
            await asyncio.sleep(POLL_SECONDS)

    async def frame(request: Request) -> Response:
        body = frames.get(request.path_params["key"])
        if body is None:
            return _secured(PlainTextResponse("this rendering is gone; reload the page", status_code=404))
        return _secured(Response(body, media_type="text/html; charset=utf-8"), FRAME_CSP)

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return _secured(PlainTextResponse("not found", status_code=404))
        return _secured(FileResponse(HERE / "static" / name, media_type=ASSETS[name]))

    return [
        Route("/", page, name="preview"),
        Route("/events", events, name="preview_events"),
        Route("/frame/{key}", frame, name="preview_frame"),
        Route("/assets/{name}", asset, name="preview_asset"),
    ]


_SSE_LINE_END = re.compile(r"\r\n|\r|\n")  # all three end a line of an event stream


def sse_event(event: str, event_id: str, data: str) -> str:
    """One server-sent event. ``data`` goes out one ``data:`` line per line, split at CR, LF
    and CRLF alike (a bare CR in row data would otherwise start an ``id:`` or ``retry:`` line
    of its own); ``event`` and ``id`` lose any line end (and NUL, which voids an id)."""
    head = "".join(
        f"{name}: {_SSE_LINE_END.sub('', value).replace(chr(0), '')}\n"
        for name, value in (
            ("event", event),
            ("id", event_id),
        )
    )
    return head + "".join(f"data: {line}\n" for line in _SSE_LINE_END.split(data)) + "\n"


class TokenGate:
    """Lets a request through with the session cookie; ``?token=`` with the right token sets
    the cookie and redirects to the same URL without it (out of the address bar and history).
    Anything else: 401. The cookie's name carries the port: cookies ignore ports, and two
    previews on one machine must not overwrite each other's."""

    def __init__(self, app: ASGIApp, *, token: str, port: int):
        self.app = app
        self.token = token.encode()
        self.cookie = f"postroom_preview_{port}"

    def _is_token(self, value: str | None) -> bool:
        return value is not None and secrets.compare_digest(value.encode(errors="replace"), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if self._is_token(request.cookies.get(self.cookie)):
            await self.app(scope, receive, send)
            return
        if self._is_token(request.query_params.get("token")):
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            response: Response = RedirectResponse(
                request.url.path + (f"?{urlencode(rest)}" if rest else ""), status_code=303
            )
            response.set_cookie(self.cookie, self.token.decode(), httponly=True, samesite="strict", path="/")
        else:
            response = PlainTextResponse(
                "401: open the URL `postroom preview` printed (it carries ?token=…)\n", status_code=401
            )
        await _secured(response)(scope, receive, send)


def preview_app(settings: Settings, *, token: str, port: int) -> ASGIApp:
    """The preview alone (`postroom preview`): its routes behind the token, on loopback names."""
    from ..config import load_config

    def load() -> Config:
        return load_config(settings).config

    routes = preview_routes(load, templates_dir=settings.templates_dir(), watch=[settings.config.resolve()])
    app: ASGIApp = Starlette(routes=routes)
    app = TokenGate(app, token=token, port=port)
    # A page on loopback is reachable from any web page by DNS rebinding: only our own names.
    return TrustedHostMiddleware(app, allowed_hosts=["127.0.0.1", "localhost"])


def listen(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1 (port 0: a free one)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    return sock


def serve_preview(settings: Settings, *, port: int, job: str | None, announce: Callable[[str], None]) -> None:
    """Serve the preview until interrupted; ``announce`` gets the URL (with its token) once the
    socket listens."""
    import uvicorn

    sock = listen(port)
    port = sock.getsockname()[1]
    token = secrets.token_urlsafe(24)
    url = f"http://127.0.0.1:{port}/?" + urlencode({**({"job": job} if job else {}), "token": token})
    server = uvicorn.Server(
        uvicorn.Config(
            preview_app(settings, token=token, port=port),
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
            log_level="warning",
        )
    )
    announce(url)
    # uvicorn stops gracefully on SIGINT/SIGTERM, then raises the signal again for the handler
    # that was there before it: make that one a plain exit 0, not a KeyboardInterrupt or death
    # by signal (the person asked it to stop; nothing failed).
    before = {sig: signal.signal(sig, _exit_quietly) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        sock.close()
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _exit_quietly(_signum: int, _frame: object) -> None:
    raise SystemExit(0)
