"""`postroom check --render` (and online `check`): every job rendered once against its real
data, as a run now would make its messages, with strict undefined names. Nothing is sent,
no store is opened: a data key the template misspells (``row.emial``) or a row the template
cannot take shows here, per job, not at the next fire.
"""

from __future__ import annotations

from datetime import datetime

from postroom.checks import Finding
from postroom.config import Config
from postroom.errors import PostroomError
from postroom.mail.templates import TemplateRenderer

from .jobs import JobRunner

__all__ = ["render_findings"]


async def render_findings(config: Config, renderer: TemplateRenderer, *, now: datetime) -> list[Finding]:
    """One finding per job, in config order (a job's data sources are read, read-only)."""
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
