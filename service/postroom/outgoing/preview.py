"""The preview service: a job's messages as a run would build them, with nothing stored or
sent. The console's job preview (through the daemon) and `postroom preview` render with it,
so neither holds a ``JobRunner`` of its own or a store."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ..config import Config, JobConfig
from ..mail.templates import TemplateRenderer
from ..store.outbox import NewMessage
from .jobs import BuiltRun, JobRunner


class JobPreviews:
    """Previews of the jobs of ``config``, rendered with ``renderer``."""

    def __init__(self, config: Config, renderer: TemplateRenderer):
        self._runner = JobRunner(config, renderer, store=None)

    async def whole_run(self, job: str, *, now: datetime) -> BuiltRun:
        """Every message a run of ``job`` now would make (its data loaded as a run loads it)."""
        return await self._runner.build(job, key_prefix="dry-run", now=now)

    def one_message(
        self, job: str, job_cfg: JobConfig, data: Mapping[str, Any], *, now: datetime, row: int | None
    ) -> NewMessage:
        """The one message (``row``'s, for a merge) exactly as `send --dry-run` builds it, from
        ``data`` already loaded. Rendering is CPU work and reads template files: call it off
        the event loop."""
        (message,) = self._runner.render_messages(
            job, job_cfg, data, key_prefix="preview", now=now, fire_time=None, to_override=None, only_row=row
        )
        return message
