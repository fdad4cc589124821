"""The daemon's side of the console: whether to serve it, and its app around the running
daemon's ``DaemonView`` (app.py's ``DaemonConsoleView``). Imported by ``app.py`` only, and
imports nothing of it; the rest of the console package never imports this module.

No POSTROOM_CONSOLE_TOKEN, no console (the probes and /metrics stay): an unguarded console
would let anyone who reaches the port retry, discard and send. A token easy to guess (short,
few different characters, a pattern: ``console.security.token_weakness``) is a config error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from ..config import Config
from ..errors import ConfigError
from ..http import is_loopback, parse_listen

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from ..config import Settings
    from .source import DaemonView

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
    from .security import token_weakness  # no Starlette: this module is plain

    weakness = token_weakness(token)
    if weakness is not None:
        raise ConfigError(
            f"POSTROOM_CONSOLE_TOKEN is too easy to guess: {weakness} "
            "(make one with `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    return token


def build_daemon_console(view: DaemonView, settings: Settings, token: str) -> ASGIApp:
    """The console's app for the running daemon (``view``, built by app.py) with the preview
    mounted at /preview."""
    from starlette.applications import Starlette

    from ..config import load_config
    from .app import build_console  # Starlette's routing and the pages: only with a console
    from .preview import preview_routes

    def config_on_disk() -> Config:  # the preview shows the files as saved, before a reload
        return load_config(settings).config

    preview = Starlette(
        routes=preview_routes(config_on_disk, templates_dir=settings.templates_dir(), watch=[settings.config.resolve()])
    )
    return build_console(view, token, extra_mounts={"/preview": preview})
