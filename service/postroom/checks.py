"""What `postroom check` verifies beyond the schema: templates, (online) every server login,
and (``check --render`` and online `check`) every job rendered once against its real data.

The rendering (``render_findings``): as a run now would make its messages, with strict
undefined names. Nothing is sent, no store is opened: a data key the template misspells
(``row.emial``) or a row the template cannot take shows here, per job, not at the next fire.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import Config
from .config.model import ServerConfig
from .config.rules import ReplyAction
from .errors import PostroomError, TemplateError
from .mail.templates import TemplateRenderer
from .outgoing.job_context import template_names

if TYPE_CHECKING:
    from datetime import datetime

    from .auth.accounts import AccountLogins


@dataclass(frozen=True)
class Finding:
    where: str  # "jobs.orders-report.template", "accounts.alice.smtp"
    ok: bool
    message: str


def template_findings(config: Config, renderer: TemplateRenderer) -> list[Finding]:
    """Each template a job or reply action names must exist and compile; a job's may read
    only names its render gives it (data keys, job, now, today, fire_time, row in a merge)
    or that it defines itself: a typo fails here, not at every fire."""
    wanted: list[tuple[str, str]] = [(f"jobs.{name}.template", job.template) for name, job in config.jobs.items()]
    for i, rule in enumerate(config.rules):
        for j, action in enumerate(rule.actions):
            if isinstance(action, ReplyAction):
                wanted.append((f"rules.{i}.actions.{j}.reply.template", action.reply.template))
    out = []
    known = set(renderer.names())
    for where, name in wanted:
        if name not in known:
            out.append(
                Finding(
                    where,
                    False,
                    f"template {name!r} not found in {renderer.template_dir} "
                    f"(expected {name}.j2; have: {', '.join(sorted(known)) or 'none'})",
                )
            )
            continue
        try:
            renderer.check(name)
        except TemplateError as exc:
            out.append(Finding(where, False, str(exc)))
            continue
        job = config.jobs.get(where.split(".")[1]) if where.startswith("jobs.") else None
        if job is not None:
            names = template_names(job.data, merge=job.for_each is not None)
            out.extend(Finding(where, False, str(problem)) for problem in renderer.undefined_names(name, names))
    return out


async def server_findings(
    config: Config, *, within: float = 15.0, logins: AccountLogins | None = None
) -> list[Finding]:
    """Connect and log in to every configured server, concurrently, each ``within`` seconds
    (an OAuth2 account's token is got first, once for all its servers: ``logins``)."""
    import asyncio  # here, not at the top: `check --offline` never needs it (~15 ms of start-up)

    from .auth.accounts import AccountLogins
    from .incoming.imap import ImapConnection
    from .incoming.pop3 import Pop3Connection
    from .outgoing.smtp import SmtpConnection

    known = logins if logins is not None else AccountLogins()
    edges: dict[str, Callable[..., Any]] = {"smtp": SmtpConnection, "imap": ImapConnection, "pop3": Pop3Connection}

    async def probe(account: str, protocol: str, server: ServerConfig) -> Finding:
        where = f"accounts.{account}.{protocol}"
        try:
            credentials = known.credentials(account, server)
            conn = edges[protocol](account, server, credentials)
            await asyncio.wait_for(conn.connect(), within)
            await conn.close()
        except (TimeoutError, PostroomError, OSError) as exc:
            return Finding(where, False, f"{type(exc).__name__}: {exc}")
        if credentials is None:
            return Finding(where, True, "connected (no login configured)")
        how = "" if credentials.mechanism == "password" else f" ({credentials.mechanism.upper()}, OAuth2 token)"
        return Finding(where, True, f"connected and logged in as {credentials.username}{how}")

    probes = [
        probe(name, protocol, server)
        for name, account in config.accounts.items()
        for protocol, server in account.servers().items()
    ]
    return list(await asyncio.gather(*probes))


async def render_findings(config: Config, renderer: TemplateRenderer, *, now: datetime) -> list[Finding]:
    """One finding per job, in config order (a job's data sources are read, read-only)."""
    from .outgoing.jobs import JobRunner  # here, not at the top: `check --offline` never renders

    runner = JobRunner(config, renderer, store=None)
    out: list[Finding] = []
    for name, job in config.jobs.items():
        where = f"jobs.{name}"
        if not job.enabled:
            out.append(Finding(where, True, "disabled; not rendered"))
            continue
        try:
            built = await runner.build(name, key_prefix="check", now=now)
        except PostroomError as exc:
            out.append(Finding(where, False, f"does not render: {exc}"))
            continue
        except Exception as exc:  # a bug must not hide the other jobs' results
            out.append(Finding(where, False, f"does not render: {type(exc).__name__}: {exc}"))
            continue
        if built.skipped:
            out.append(Finding(where, True, f"nothing to send now ({built.skipped}); not rendered"))
        else:
            count = len(built.messages)
            out.append(Finding(where, True, f"rendered {count} message{'' if count == 1 else 's'}; nothing sent"))
    return out
