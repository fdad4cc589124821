"""What `postroom preview` shows: one job's message (one row of a merge) built by the pipeline
`postroom send --dry-run` uses (sources, JobRunner.render_messages, compose), then taken apart
for a person to read — or the error that stopped it, with the template's lines around it.

Nothing here sends or stores: messages come from the preview service (``outgoing.preview``),
which has no store. The config and the templates are read afresh on every build, so what is
shown is what is on disk now.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..config import Config, JobConfig
from ..errors import ConfigError, DataSourceError, MessageRefused, PostroomError, TemplateError
from ..mail.parse import decode_header_value, parse_message, part_text
from ..mail.templates import SUFFIX, TemplateRenderer
from ..outgoing.preview import JobPreviews
from ..outgoing.sources import load_data

MAX_ROW_CHOICES = 1000  # rows offered in the picker; any row can still be asked for by number
MAX_ROW_LABEL = 80  # characters of a row's values shown in the picker
MAX_RAW_SHOWN = 256 * 1024  # bytes of raw MIME put in the page (attachments make it large)
MAX_EXCERPT_BYTES = 1024 * 1024  # of a template read to show the lines around an error
EXCERPT_CONTEXT = 3  # lines before and after the one in error


@dataclass(frozen=True)
class RowChoice:
    index: int
    label: str


@dataclass(frozen=True)
class AttachmentView:
    filename: str
    content_type: str
    size: int  # decoded bytes


@dataclass(frozen=True)
class EmailView:
    subject: str
    envelope_from: str
    recipients: list[str]
    headers: list[tuple[str, str]]  # decoded, in message order
    html: str | None
    text: str | None
    attachments: list[AttachmentView]
    size: int  # bytes on the wire
    raw: str  # the wire form, cut at MAX_RAW_SHOWN
    raw_cut: int  # bytes of it not shown


@dataclass(frozen=True)
class Problem:
    """Why there is no email to show. ``kind`` is one of PROBLEM_KINDS."""

    kind: str
    message: str
    template: str | None = None
    lineno: int | None = None
    excerpt: list[tuple[int, str]] = field(default_factory=list)


# What went wrong, as the page names it.
PROBLEM_KINDS = {
    "config": "Config error",
    "template": "Template error",
    "data": "Data error",
    "message": "Message refused",
    "choice": "Nothing to show",
}


@dataclass(frozen=True)
class Preview:
    jobs: list[str]
    job: str | None
    row: int | None  # None: the job is not a merge (or no job)
    rows: list[RowChoice] = field(default_factory=list)
    row_count: int = 0
    email: EmailView | None = None
    problem: Problem | None = None
    notice: str | None = None  # e.g. skip_if_empty: the real run would send nothing


async def build_preview(
    load_config: Callable[[], Config], templates_dir: Path, job: str | None, row: int | None, *, now: datetime
) -> Preview:
    """The preview of ``job`` (default: the first) for ``row`` of its merge (default: 0)."""
    try:
        config = await asyncio.to_thread(load_config)
    except ConfigError as exc:
        return Preview(jobs=[], job=job, row=row, problem=Problem("config", str(exc)))
    jobs = sorted(config.jobs)
    if not jobs:
        return Preview(jobs=[], job=None, row=None, problem=Problem("choice", "the config has no jobs"))
    job = job or jobs[0]
    job_cfg = config.jobs.get(job)
    if job_cfg is None:
        return Preview(
            jobs=jobs, job=job, row=None, problem=Problem("choice", f"no job named {job!r}; jobs: {', '.join(jobs)}")
        )
    shown = Preview(jobs=jobs, job=job, row=None)
    try:
        data = await load_data(job_cfg.data)
    except DataSourceError as exc:
        return _with(shown, problem=Problem("data", str(exc)))
    notice = None
    if job_cfg.skip_if_empty and not data.get(job_cfg.skip_if_empty):
        notice = f"a run now would send nothing: {job_cfg.skip_if_empty} has no rows"
    if job_cfg.for_each:
        rows = data.get(job_cfg.for_each)
        if not isinstance(rows, list):
            return _with(
                shown, problem=Problem("data", f"data source {job_cfg.for_each!r}: for_each needs a list of rows")
            )
        row = 0 if row is None else row
        shown = _with(shown, row=row, rows=_row_choices(rows), row_count=len(rows), notice=notice)
        if not 0 <= row < len(rows):
            have = f"rows 0 to {len(rows) - 1}" if rows else "no rows"
            return _with(shown, problem=Problem("choice", f"{job_cfg.for_each} has {have}; there is no row {row}"))
    else:
        shown = _with(shown, notice=notice)
    previews = JobPreviews(config, TemplateRenderer(templates_dir, auto_reload=True))
    try:
        # Rendering and taking the message apart are CPU work (rendering reads template files
        # too): off the event loop, as a run renders.
        view = await asyncio.to_thread(_render_one, previews, job, job_cfg, data, now=now, row=shown.row)
    except TemplateError as exc:
        return _with(shown, problem=_template_problem(exc, templates_dir))
    except MessageRefused as exc:
        return _with(shown, problem=Problem("message", str(exc)))
    except DataSourceError as exc:
        return _with(shown, problem=Problem("data", str(exc)))
    except PostroomError as exc:
        return _with(shown, problem=Problem("message", str(exc)))
    return _with(shown, email=view)


def _render_one(
    previews: JobPreviews, job: str, job_cfg: JobConfig, data: Mapping[str, Any], *, now: datetime, row: int | None
) -> EmailView:
    """The one message (``row``'s, for a merge) exactly as `send --dry-run` builds it."""
    message = previews.one_message(job, job_cfg, data, now=now, row=row)
    return email_view(message.raw, envelope_from=message.envelope_from, recipients=list(message.recipients))


def _with(preview: Preview, **changes: Any) -> Preview:
    from dataclasses import replace

    return replace(preview, **changes)


def _row_choices(rows: Sequence[Any]) -> list[RowChoice]:
    return [RowChoice(i, _row_label(row)) for i, row in enumerate(rows[:MAX_ROW_CHOICES])]


def _row_label(row: Any) -> str:
    values = row.values() if isinstance(row, Mapping) else row if isinstance(row, list | tuple) else [row]
    text = " · ".join(str(v) for v in values)
    return text if len(text) <= MAX_ROW_LABEL else text[: MAX_ROW_LABEL - 1] + "…"


def email_view(raw: bytes, *, envelope_from: str, recipients: list[str]) -> EmailView:
    """The message as its reader gets it: decoded headers, the html and text parts, attachments."""
    msg = parse_message(raw)
    leaves = [part for part in msg.walk() if not part.is_multipart()]
    attached = [part for part in leaves if part.get_content_disposition() == "attachment"]
    shown = [part for part in leaves if part.get_content_disposition() != "attachment"]
    html = next((part for part in shown if part.get_content_type() == "text/html"), None)
    text = next((part for part in shown if part.get_content_type() == "text/plain"), None)
    attachments = [
        AttachmentView(
            part.get_filename() or "(no name)", part.get_content_type(), len(part.get_payload(decode=True) or b"")
        )
        for part in attached
    ]
    return EmailView(
        subject=decode_header_value(msg.get("Subject", "")),
        envelope_from=envelope_from,
        recipients=recipients,
        headers=[(name, decode_header_value(value)) for name, value in msg.items()],
        html=part_text(html) if html is not None else None,
        text=part_text(text) if text is not None else None,
        attachments=attachments,
        size=len(raw),
        raw=raw[:MAX_RAW_SHOWN].decode("utf-8", "replace").replace("\r\n", "\n"),
        raw_cut=max(0, len(raw) - MAX_RAW_SHOWN),
    )


def _template_problem(exc: TemplateError, templates_dir: Path) -> Problem:
    return Problem(
        "template",
        exc.message,
        template=exc.template,
        lineno=exc.lineno,
        excerpt=template_excerpt(templates_dir, exc.template, exc.lineno),
    )


def template_excerpt(templates_dir: Path, template: str | None, lineno: int | None) -> list[tuple[int, str]]:
    """The lines around ``lineno`` of a template file in ``templates_dir`` (never outside it)."""
    if not template or not lineno or not template.endswith(SUFFIX):
        return []
    root = templates_dir.resolve()
    path = (root / template).resolve()
    if not path.is_relative_to(root):
        return []
    try:
        with path.open("rb") as f:
            lines = f.read(MAX_EXCERPT_BYTES).decode("utf-8", "replace").splitlines()
    except OSError:
        return []
    first = max(1, lineno - EXCERPT_CONTEXT)
    return [(n, lines[n - 1]) for n in range(first, min(len(lines), lineno + EXCERPT_CONTEXT) + 1)]
