"""structlog's capture_logs sees a watcher's logs whatever ran earlier in the same process.

The cause of an old order dependence: `setup_logging` (run by every in-process CLI test) turns
on structlog's logger cache, and a cached logger keeps the processor list it was built with.
A second `setup_logging` that brought a new list left the loggers first used in between (the
watchers', by the bounce watcher tests) on the old one, out of capture_logs' reach, and the
watcher tests' log checks came up empty. Both tests below run in a child process: logging is
configured for a whole process, and this one's must stay as the other tests expect it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.daemon import ROOT
from tests.support.workers import lab_port_offset

SCRIPT = """
import structlog
from structlog.testing import capture_logs
from postroom.logs import setup_logging
log = structlog.get_logger("postroom.incoming.watch_loop")
setup_logging(fmt="json")
log.info("first use: the logger is cached")
setup_logging(fmt="json")
with capture_logs() as logs:
    log.info("seen")
print([e["event"] for e in logs])
"""

# In the order that failed: a command run in-process, the bounce watcher tests (the first use
# of the watchers' loggers), a command again, then a watcher test that checks its log.
BAD_ORDER = [
    "tests/test_cli.py::test_outbox_dead_then_retry_puts_it_back",
    "tests/test_bounce_watchers.py::test_imap_bounce_is_read_even_where_search_decides_the_rules",
    "tests/test_cli.py::test_rules_failed_lists_set_aside_messages_dead_actions_and_webhooks",
    "tests/test_watcher.py::test_start_from_new_skips_existing",
]


def test_a_logger_cached_before_logging_is_set_up_again_still_reaches_capture_logs():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['seen']"


def test_watcher_log_checks_pass_after_the_bounce_watchers_and_cli_runs(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "POSTROOM_"))}
    # A lab of its own, between this worker's labs and the next worker's (tests/support/workers.py).
    env["POSTROOM_LAB_PORT_OFFSET"] = str(lab_port_offset() + 500)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-n0",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--basetemp={tmp_path / 'run'}",
            *BAD_ORDER,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "4 passed" in done.stdout
