"""The console holds no live part of the daemon and writes nothing to the store itself: it
shows watchers from frozen ``WatcherStatus`` copies, gets a job's messages from the preview
service, and acts on stored rows through the daemon view's action API (console/source.py)."""

from __future__ import annotations

import ast
import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from postroom.app import DaemonConsoleView
from postroom.console.source import WatcherStatus
from postroom.incoming.watch_loop import WatchState

CONSOLE = Path(__file__).resolve().parent.parent / "service" / "postroom" / "console"
LIVE_PARTS = {"Watcher", "ImapWatcher", "Pop3Watcher", "JobRunner", "OutboxSender", "WebhookQueue"}


def imported_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.update(alias.name for alias in node.names)
    return names


def test_no_console_module_imports_a_live_part_of_the_daemon():
    found = {path.name: sorted(imported_names(path) & LIVE_PARTS) for path in CONSOLE.glob("*.py")}
    assert {name: parts for name, parts in found.items() if parts} == {}


def test_the_console_handlers_never_reach_the_store():
    """console/app.py (the routes and their actions) names no store: actions go through the view."""
    tree = ast.parse((CONSOLE / "app.py").read_text())
    reached = [
        ast.unparse(node)
        for node in ast.walk(tree)
        if (isinstance(node, ast.Attribute) and node.attr in ("store", "calls"))
        or (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("store"))
        or (isinstance(node, ast.Name) and node.id == "store_call")
    ]
    assert reached == []


def test_the_console_sees_watchers_as_they_were_when_the_page_was_read():
    failed_at = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    live = SimpleNamespace(
        account="dave",
        folder="INBOX",
        kind="imap",
        state=WatchState.FAILING,
        last_ok=None,
        last_error="login refused",
        last_error_at=failed_at,
    )
    daemon = SimpleNamespace(incoming=SimpleNamespace(watchers=[live]))
    [status] = DaemonConsoleView(daemon).watchers()  # type: ignore[arg-type]
    live.state, live.last_error = WatchState.IDLE, None  # the watcher goes on
    assert status == WatcherStatus("dave", "INBOX", "imap", WatchState.FAILING, None, "login refused", failed_at)
    assert status.watch_name() == "dave/INBOX"
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.state = WatchState.IDLE  # type: ignore[misc]
