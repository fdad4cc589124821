"""What `postroom check` verifies beyond the schema: templates, and (online) every server login."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import Config
from .config.model import ServerConfig
from .config.rules import ReplyAction
from .errors import PostroomError, TemplateError
from .mail.templates import TemplateRenderer


@dataclass(frozen=True)
class Finding:
    where: str  # "jobs.orders-report.template", "accounts.alice.smtp"
    ok: bool
    message: str


def template_findings(config: Config, renderer: TemplateRenderer) -> list[Finding]:
    """Each template a job or reply action names must exist and compile."""
    wanted: list[tuple[str, str]] = [(f"jobs.{name}.template", job.template) for name, job in config.jobs.items()]
    for i, rule in enumerate(config.rules):
        for j, action in enumerate(rule.actions):
            if isinstance(action, ReplyAction):
                wanted.append((f"rules.{i}.actions.{j}.reply.template", action.reply.template))
    out = []
    known = set(renderer.names())
    for where, name in wanted:
        if name not in known:
            out.append(Finding(where, False, f"template {name!r} not found in {renderer.template_dir} "
                                             f"(expected {name}.j2; have: {', '.join(sorted(known)) or 'none'})"))
            continue
        try:
            renderer.check(name)
        except TemplateError as exc:
            out.append(Finding(where, False, str(exc)))
    return out


async def server_findings(config: Config, *, within: float = 15.0) -> list[Finding]:
    """Connect and log in to every configured server, concurrently, each ``within`` seconds."""
    import asyncio  # here, not at the top: `check --offline` never needs it (~15 ms of start-up)

    from .incoming.imap import ImapConnection
    from .incoming.pop3 import Pop3Connection
    from .outgoing.smtp import SmtpConnection

    async def probe(where: str, server: ServerConfig, make: Callable[[], Any]) -> Finding:
        credentials = server.credentials()
        try:
            conn = make()
            await asyncio.wait_for(conn.connect(), within)
            await conn.close()
        except (TimeoutError, PostroomError, OSError) as exc:
            return Finding(where, False, f"{type(exc).__name__}: {exc}")
        if credentials is None:
            return Finding(where, True, "connected (no login configured)")
        return Finding(where, True, f"connected and logged in as {credentials.username}")

    probes = []
    for name, account in config.accounts.items():
        if account.smtp:
            probes.append(probe(f"accounts.{name}.smtp", account.smtp,
                                functools.partial(SmtpConnection, name, account.smtp)))
        if account.imap:
            probes.append(probe(f"accounts.{name}.imap", account.imap,
                                functools.partial(ImapConnection, name, account.imap)))
        if account.pop3:
            probes.append(probe(f"accounts.{name}.pop3", account.pop3,
                                functools.partial(Pop3Connection, name, account.pop3)))
    return list(await asyncio.gather(*probes))
