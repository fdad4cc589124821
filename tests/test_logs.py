"""The JSON log format writes JSON values: timestamps as ISO 8601, durations in seconds.
Run in a child process: setup_logging configures structlog for the whole process (and caches
loggers), which would change what other tests' capture_logs sees."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

from tests.support.daemon import ROOT

SCRIPT = """
from datetime import UTC, datetime, timedelta
import structlog
from postroom.logs import setup_logging
setup_logging(fmt="json")
structlog.get_logger("postroom.outgoing.sender").warning(
    "message deferred", retry_at=datetime(2026, 11, 29, 5, 0, 30, tzinfo=UTC),
    backoff=timedelta(minutes=2), password="hunter2")
"""


def test_datetimes_in_json_logs_are_iso_8601():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, cwd=ROOT, check=True
    )
    [line] = done.stderr.splitlines()
    event = json.loads(line)
    assert event["retry_at"] == "2026-11-29T05:00:30+00:00"
    assert datetime.fromisoformat(event["retry_at"]) == datetime(2026, 11, 29, 5, 0, 30, tzinfo=UTC)
    assert event["backoff"] == 120.0
    assert event["password"] == "[redacted]"


CONSOLE = """
from datetime import UTC, datetime, timedelta
import structlog
from postroom.logs import setup_logging
setup_logging(fmt="console")
structlog.get_logger("postroom.outgoing.sender").warning(
    "message deferred", retry_at=datetime(2026, 11, 29, 5, 0, 30, tzinfo=UTC),
    backoff=timedelta(minutes=2), reply=b"[AUTHENTICATIONFAILED] no")
"""


def test_console_logs_write_times_as_iso_8601_and_replies_as_text():
    done = subprocess.run(
        [sys.executable, "-c", CONSOLE], capture_output=True, text=True, timeout=60, cwd=ROOT, check=True
    )
    [line] = done.stderr.splitlines()
    assert "retry_at=2026-11-29T05:00:30+00:00" in line and "backoff=120.0" in line, line
    assert "reply='[AUTHENTICATIONFAILED] no'" in line or "reply=[AUTHENTICATIONFAILED] no" in line, line
    assert "datetime.datetime" not in line and "b'" not in line
