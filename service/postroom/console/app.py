"""The console's Starlette app: five status pages, their actions, and the assets they use.

    GET  /                 overview          GET  /jobs, /jobs/{job}/preview
    GET  /outbox           GET  /mailboxes   GET  /webhooks
    POST /jobs/{job}/run   POST /outbox/{id}/retry, /outbox/{id}/discard
    POST /mailboxes/retry  POST /webhooks/retry          (each redirects back, 303)

Pages refresh themselves: ``static/console.js`` fetches the page again every few seconds with
``X-Postroom-Live: 1`` and swaps in the part marked ``data-live``; the server then renders
that part alone. No framework, no inline script or style (the CSP forbids both), every asset
served from ``static/``. Actions go through the daemon's action API (``source.DaemonView``):
the same store paths as the CLI (`outbox retry`, `postroom send`), and the part of the daemon
that acts on them woken; no handler here writes to the store.

``build_console`` returns the app behind ``security.require_token``; ``extra_mounts`` (e.g.
``{"/preview": app}``) are served behind the same token and get a link in the navigation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import structlog
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from ..clock import utcnow
from ..errors import PostroomError
from . import pages
from .security import require_token
from .source import DaemonView

log = structlog.get_logger(__name__)

HERE = Path(__file__).parent
REFRESH_SECONDS = 5  # how often an open page fetches itself again
NAV = (
    ("/", "Overview"),
    ("/jobs", "Jobs"),
    ("/outbox", "Outbox"),
    ("/mailboxes", "Mailboxes"),
    ("/webhooks", "Webhooks"),
)
Page = Callable[[DaemonView], Awaitable[dict[str, Any]]]


def build_console(view: DaemonView, token: str, *, extra_mounts: Mapping[str, ASGIApp] | None = None) -> ASGIApp:
    """The console app for ``view``, behind ``token``; ``extra_mounts``: path -> app."""
    console = Console(view, nav=navigation(extra_mounts or {}))
    routes: list[BaseRoute] = [
        Route("/", console.page("overview.html", pages.overview_page, "Overview")),
        Route("/jobs", console.page("jobs.html", pages.jobs_page, "Jobs")),
        Route("/jobs/{job}/preview", console.preview),
        Route("/jobs/{job}/run", console.run_job, methods=["POST"]),
        Route("/outbox", console.page("outbox.html", pages.outbox_page, "Outbox")),
        Route("/outbox/{item:int}/retry", console.retry_letter, methods=["POST"]),
        Route("/outbox/{item:int}/discard", console.discard_letter, methods=["POST"]),
        Route("/mailboxes", console.page("mailboxes.html", pages.mailboxes_page, "Mailboxes")),
        Route("/mailboxes/retry", console.retry_set_aside, methods=["POST"]),
        Route("/webhooks", console.page("webhooks.html", pages.webhooks_page, "Webhooks")),
        Route("/webhooks/retry", console.retry_webhook, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
        *(Mount(path, app=app) for path, app in (extra_mounts or {}).items()),
    ]
    app = Starlette(routes=routes, exception_handlers={404: console.not_found})
    return require_token(app, token)


def navigation(extra_paths: Iterable[str]) -> list[tuple[str, str]]:
    """The pages' links, then one per extra mount ("/preview" -> "Preview")."""
    return [*NAV, *((path, path.strip("/").replace("-", " ").title()) for path in extra_paths)]


def templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["ago"] = _ago
    return env


class Console:
    def __init__(self, view: DaemonView, *, nav: list[tuple[str, str]]):
        self.view = view
        self.nav = nav
        self.env = templates()

    def page(self, template: str, gather: Page, title: str) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            return self.render(request, template, title, await gather(self.view))

        return handler

    def render(
        self, request: Request, template: str, title: str, data: dict[str, Any], *, refresh: int = REFRESH_SECONDS
    ) -> Response:
        live = request.headers.get("x-postroom-live") == "1"
        body = self.env.get_template(template).render(
            **data,
            title=title,
            nav=self.nav,
            path=request.url.path,
            live_only=live,
            note=request.query_params.get("note"),
            csrf=getattr(request.state, "csrf", ""),
            refresh=refresh,
            now=utcnow(),
        )
        return HTMLResponse(body)

    async def not_found(self, request: Request, _exc: Exception) -> Response:
        return PlainTextResponse("not found\n", 404)

    # -- jobs -------------------------------------------------------------------------------

    async def preview(self, request: Request) -> Response:
        job = request.path_params["job"]
        if job not in self.view.config().jobs:
            return PlainTextResponse(f"no job named {job}\n", 404)
        try:
            data = await pages.job_preview(self.view, job)
        except PostroomError as exc:
            data = {"name": job, "error": str(exc), "messages": [], "total": 0, "skipped": None}
        # No refresh: each one would build the job's messages again.
        return self.render(request, "job_preview.html", f"Run {job}?", data, refresh=0)

    async def run_job(self, request: Request) -> Response:
        job = request.path_params["job"]
        if job not in self.view.config().jobs:
            return PlainTextResponse(f"no job named {job}\n", 404)
        if self.view.dry_run:
            return _back("/jobs", "a dry-run daemon sends nothing: use the preview")
        log.info("console: run now", job=job)
        try:
            built = await self.view.run_job(job)
        except PostroomError as exc:
            return _back("/jobs", f"{job} failed: {exc}")
        if built.skipped:
            return _back("/jobs", f"{job}: nothing to send ({built.skipped})")
        return _back("/jobs", f"{job}: {len(built.messages)} message(s) queued for sending")

    # -- actions on stored rows --------------------------------------------------------------

    async def retry_letter(self, request: Request) -> Response:
        item = request.path_params["item"]
        done = await self.view.retry_letter(item)
        if done:
            log.info("console: dead letter queued again", id=item)
        return _back("/outbox", f"message {item} is queued again" if done else f"message {item} is not a dead letter")

    async def discard_letter(self, request: Request) -> Response:
        item = request.path_params["item"]
        done = await self.view.discard_letter(item)
        if done:
            log.info("console: dead letter discarded", id=item)
        return _back("/outbox", f"message {item} discarded" if done else f"message {item} is not a dead letter")

    async def retry_set_aside(self, request: Request) -> Response:
        key = await _field(request, "key")
        if not key:
            return PlainTextResponse("which message? (form field key)\n", 400)
        done = await self.view.retry_set_aside(key)
        if done:
            log.info("console: set-aside message taken in again", key=key)
        note = "taken in again at the watcher's next pass" if done else "is not set aside"
        return _back("/mailboxes", f"{key} {note}")

    async def retry_webhook(self, request: Request) -> Response:
        webhook_id = await _field(request, "id")
        if not webhook_id:
            return PlainTextResponse("which delivery? (form field id)\n", 400)
        done = await self.view.retry_webhook(webhook_id)
        if done:
            log.info("console: dead webhook queued again", webhook=webhook_id)
        return _back("/webhooks", f"{webhook_id} is queued again" if done else f"{webhook_id} is not dead")


async def _field(request: Request, name: str) -> str:
    """One field of the urlencoded form (Starlette's own form parsing needs python-multipart;
    the body is small: security.py bounded it before it got here)."""
    form = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=50)
    return (form.get(name) or [""])[0]


def _back(path: str, note: str) -> Response:
    return RedirectResponse(f"{path}?{urlencode({'note': note})}", status_code=303)


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z") if value is not None else "–"


def _ago(value: datetime | None) -> str:
    if value is None:
        return "never"
    seconds = int((utcnow() - value).total_seconds())
    future, seconds = seconds < 0, abs(seconds)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min"), (1, "s")):
        if seconds >= size or size == 1:
            text = f"{seconds // size} {unit}"
            return f"in {text}" if future else f"{text} ago"
    return ""
