"""What the console needs from the running daemon, as a protocol: the console imports no
daemon code (``postroom.app`` builds the console and passes itself in through an adapter).

The console never holds a live part of the daemon: a watcher is shown from a ``WatcherStatus``
copied when the page is read, a job's messages come from the daemon's preview (built as a run
would build them, nothing stored or sent), and every action on stored rows goes through the
view's small action API (``run_job``, ``retry_letter``, ``discard_letter``,
``retry_set_aside``, ``retry_webhook``), which writes to the store and wakes the part of the
daemon that acts on it. Pages read the store (``store``) off the loop, and never write to it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from ..config import Config
from ..incoming.watch_loop import WatchState
from ..outgoing.jobs import BuiltRun
from ..store import Store


@dataclass(frozen=True)
class ReloadOutcome:
    at: datetime
    ok: bool
    error: str | None = None


@dataclass(frozen=True)
class WatcherStatus:
    """One watcher as the console shows it, as it was when the page was read."""

    account: str
    folder: str
    kind: str  # "imap" or "pop3"
    state: WatchState
    last_ok: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None

    def watch_name(self) -> str:
        return f"{self.account}/{self.folder}"


class DaemonView(Protocol):
    """Read on the event loop (cheap, in memory) except ``store``, which pages read off-loop."""

    @property
    def store(self) -> Store: ...

    @property
    def instance(self) -> str: ...

    @property
    def dry_run(self) -> bool: ...

    def config(self) -> Config: ...

    def config_path(self) -> Path: ...

    def loaded_at(self) -> datetime: ...

    def last_reload(self) -> ReloadOutcome | None: ...

    def watchers(self) -> Sequence[WatcherStatus]: ...

    def next_fires(self) -> Mapping[str, datetime | None]: ...

    def signed_out(self) -> Collection[str]:
        """OAuth2 accounts stopped until a person signs them in again."""
        ...

    async def build_job(self, job: str) -> BuiltRun:
        """The job's messages as a run now would make them; nothing stored or sent."""
        ...

    # -- actions ---------------------------------------------------------------------------

    async def run_job(self, job: str) -> BuiltRun:
        """Run the job now (as `postroom send` does): stored in the outbox, then sent."""
        ...

    async def retry_letter(self, item: int) -> bool:
        """A dead letter queued again and the sender woken; False: ``item`` is no dead letter."""
        ...

    async def discard_letter(self, item: int) -> bool:
        """A dead letter discarded; False: ``item`` is no dead letter."""
        ...

    async def retry_set_aside(self, key: str) -> bool:
        """A set-aside message taken in again at its watcher's next pass; False: not set aside."""
        ...

    async def retry_webhook(self, webhook_id: str) -> bool:
        """A dead webhook delivery queued again and the queue woken; False: it is not dead."""
        ...
