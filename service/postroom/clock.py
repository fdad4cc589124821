"""The one wall clock. Pure code takes ``now`` as an argument; the edges that need the time
ask here, so a test (or a replica's lease maths) has one place to look."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """The current time, aware, in UTC: every time postroom stores or compares is UTC."""
    return datetime.now(UTC)
