"""The daemon's side of the console: whether to serve it, and the running daemon as the
console's ``DaemonView``. Imported by ``app.py`` only; the console package never imports it.

No POSTROOM_CONSOLE_TOKEN, no console (the probes and /metrics stay): an unguarded console
would let anyone who reaches the port retry, discard and send. A token easy to guess (short,
few different characters, a pattern: ``console.security.token_weakness``) is a config error.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from .clock import utcnow
from .config import Config
from .errors import ConfigError
from .http import is_loopback, parse_listen
from .incoming.watch_loop import Watcher
from .outgoing.jobs import BuiltRun, JobRunner

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from .app import Daemon
    from .config import Settings
    from .console.source import ReloadOutcome
    from .store import Store

log = structlog.get_logger(__name__)

MIN_TOKEN = 16
NO_TOKEN = "The console is off: set POSTROOM_CONSOLE_TOKEN (docs/pages/console.md)."


def console_token(settings: Settings) -> str | None:
    """The token, checked; None when the console is off (said in the log, once, at start)."""
    token = settings.console_token.get_secret_value().strip() if settings.console_token else ""
    address = parse_listen(settings.http)
    if address is None:
        return None
    if not token:
        if is_loopback(address[0]):
            log.info("console off: no POSTROOM_CONSOLE_TOKEN")
        else:
            log.warning(
                "refusing to serve the console on a non-loopback address without a token",
                host=address[0],
                hint="set POSTROOM_CONSOLE_TOKEN",
            )
        return None
    from .console.security import token_weakness  # no Starlette: this module is plain

    weakness = token_weakness(token)
    if weakness is not None:
        raise ConfigError(
            f"POSTROOM_CONSOLE_TOKEN is too easy to guess: {weakness} "
            "(make one with `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    return token


def build_daemon_console(daemon: Daemon, token: str) -> ASGIApp:
    from starlette.applications import Starlette

    from .config import load_config
    from .console.app import build_console  # Starlette's routing and the pages: only with a console
    from .console.preview import preview_routes

    settings = daemon.settings

    def config_on_disk() -> Config:  # the preview shows the files as saved, before a reload
        return load_config(settings).config

    preview = Starlette(
        routes=preview_routes(config_on_disk, templates_dir=settings.templates_dir(), watch=[settings.config.resolve()])
    )
    return build_console(DaemonConsoleView(daemon), token, extra_mounts={"/preview": preview})


class DaemonConsoleView:
    """The running daemon as the console sees it (``console.source.DaemonView``)."""

    def __init__(self, daemon: Daemon):
        self.daemon = daemon

    @property
    def store(self) -> Store:
        return self.daemon.store

    @property
    def instance(self) -> str:
        return self.daemon.settings.instance

    @property
    def dry_run(self) -> bool:
        return self.daemon.dry_run

    def config(self) -> Config:
        return self.daemon.loaded.config

    def config_path(self) -> Path:
        return self.daemon.loaded.path

    def loaded_at(self) -> datetime:
        return self.daemon.loaded_at

    def last_reload(self) -> ReloadOutcome | None:
        return self.daemon.last_reload

    def watchers(self) -> Sequence[Watcher]:
        return self.daemon.incoming.watchers

    def next_fires(self) -> Mapping[str, datetime | None]:
        return self.daemon.next_fires()

    def signed_out(self) -> Collection[str]:
        return self.daemon.logins.stopped()

    async def build_job(self, job: str) -> BuiltRun:
        runner = self.daemon.runner
        return await JobRunner(runner.config, runner.renderer, store=None).build(
            job, key_prefix="dry-run", now=utcnow()
        )

    async def run_job(self, job: str) -> BuiltRun:
        # As `postroom send JOB` does: a manual run, recorded, its rows handed to the sender.
        return await self.daemon.runner.run_now(job, key_prefix=f"console:{job}:{uuid.uuid4().hex}")

    def wake_sender(self) -> None:
        self.daemon.sender.wake()

    def wake_webhooks(self) -> None:
        self.daemon.webhooks.wake()
