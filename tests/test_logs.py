"""The JSON log format writes JSON values: timestamps as ISO 8601, durations in seconds."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
import structlog
from postroom.logs import setup_logging


@pytest.fixture
def json_stream():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    setup_logging(fmt="json", stream=stream)
    yield stream
    structlog.reset_defaults()
    root.handlers[:], root.level = handlers, level


def test_datetimes_in_json_logs_are_iso_8601(json_stream):
    retry_at = datetime(2026, 11, 29, 5, 0, 30, tzinfo=UTC)
    structlog.get_logger("postroom.outgoing.sender").warning(
        "message deferred", retry_at=retry_at, backoff=timedelta(minutes=2), password="hunter2")
    [line] = json_stream.getvalue().splitlines()
    event = json.loads(line)
    assert event["retry_at"] == "2026-11-29T05:00:30+00:00"
    assert datetime.fromisoformat(event["retry_at"]) == retry_at
    assert event["backoff"] == 120.0
    assert event["password"] == "[redacted]"
