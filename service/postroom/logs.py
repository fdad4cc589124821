"""Logging: structlog over the stdlib, JSON in production, console on a TTY, secrets redacted.
In JSON every value is JSON, and in the console format text: a datetime is an ISO 8601
string, not a Python repr.

The pipeline is a list of small processors over the event dict; the renderer is the last.
Library loggers (aiosmtplib, apscheduler, httpx …) go through the same pipeline.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import date, datetime, time, timedelta
from typing import Any

import structlog

_SECRET_KEYS = re.compile(r"pass(word)?|secret|token|authorization|credential", re.IGNORECASE)
REDACTED = "[redacted]"


def redact_secrets(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Never let a password or secret reach a log line, whatever a caller bound."""
    for key in list(event):
        if _SECRET_KEYS.search(key):
            event[key] = REDACTED
    return event


def json_value(obj: Any) -> Any:
    """What a log value json.dumps cannot write becomes: times as ISO 8601, durations in
    seconds, anything else its ``__structlog__`` or repr (structlog's own fallback)."""
    if isinstance(obj, datetime | date | time):
        return obj.isoformat()
    if isinstance(obj, timedelta):
        return obj.total_seconds()
    structlog_value = getattr(obj, "__structlog__", None)
    return structlog_value() if callable(structlog_value) else repr(obj)


def text_values(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """For the console format: times as ISO 8601, durations in seconds and bytes as text, not
    their Python reprs (``retry_at=datetime.datetime(…)``)."""
    for key, value in event.items():
        if isinstance(value, datetime | date | time | timedelta):
            event[key] = json_value(value)
        elif isinstance(value, bytes):
            event[key] = value.decode("utf-8", "replace")
    return event


def setup_logging(*, fmt: str | None = None, level: str = "INFO", stream: Any = None) -> None:
    stream = stream or sys.stderr
    if fmt is None:
        fmt = "console" if stream.isatty() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(default=json_value)
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
        shared.append(text_values)
    # One processor list for the life of the process, refilled by each call: a logger cached on
    # first use keeps the list object it was built with, so a new list here would leave every
    # logger used before this call on the old chain (and out of structlog's capture_logs, which
    # edits the current list in place) — as when a command runs twice in one process.
    processors: list[Any] = structlog.get_config()["processors"]
    processors[:] = [*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter]
    structlog.configure(
        processors=processors,
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Chatty libraries: their INFO lines are noise next to ours.
    for name in ("apscheduler", "httpx", "httpcore", "aiosmtplib", "imapclient", "alembic"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
