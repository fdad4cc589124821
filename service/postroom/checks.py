"""What `postroom check` verifies beyond the schema: templates, and (online) every server login."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from .config import Config
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
            if action.kind == "reply":
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


async def server_findings(config: Config, *, timeout: float = 15.0) -> list[Finding]:
    """Connect and log in to every configured server, concurrently."""
    from .incoming.imap import ImapConnection
    from .incoming.pop3 import Pop3Connection
    from .outgoing.smtp import SmtpConnection

    async def probe(where: str, make) -> Finding:
        try:
            conn = make()
            await asyncio.wait_for(conn.connect(), timeout)
            await conn.close()
            return Finding(where, True, "connected and logged in")
        except (TimeoutError, PostroomError, OSError) as exc:
            return Finding(where, False, f"{type(exc).__name__}: {exc}")

    probes = []
    for name, account in config.accounts.items():
        if account.smtp:
            probes.append(probe(f"accounts.{name}.smtp", lambda n=name, c=account.smtp: SmtpConnection(n, c)))
        if account.imap:
            probes.append(probe(f"accounts.{name}.imap", lambda n=name, c=account.imap: ImapConnection(n, c)))
        if account.pop3:
            probes.append(probe(f"accounts.{name}.pop3", lambda n=name, c=account.pop3: Pop3Connection(n, c)))
    return list(await asyncio.gather(*probes))
