"""The names a job's templates see: the job's data keys, these, and ``row`` in a mail merge.

One place for both the render (``job_context``) and `postroom check`, which refuses a
template using a name that is none of them (kept free of heavy imports: `check --offline`
loads it).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

__all__ = ["JOB_NAMES", "ROW", "job_context", "template_names"]

JOB_NAMES = ("job", "now", "today", "fire_time")  # always there
ROW = "row"  # one row of `for_each`, only in a mail merge


def job_context(data: Mapping[str, Any], job_id: str, local_now: datetime, fire_time: datetime) -> dict[str, Any]:
    """What every message of a run is rendered with (a merge adds ``row`` per message)."""
    return {**data, "job": job_id, "now": local_now, "today": local_now.date().isoformat(), "fire_time": fire_time}


def template_names(data_keys: Mapping[str, Any], *, merge: bool) -> set[str]:
    """The names a job's template may use: its data keys, JOB_NAMES and, in a merge, ROW."""
    return {*data_keys, *JOB_NAMES, *((ROW,) if merge else ())}
