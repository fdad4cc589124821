"""What the console needs from the running daemon, as a protocol: the console imports no
daemon code (``postroom.app`` builds the console and passes itself in through an adapter)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from ..config import Config
from ..incoming.watch_loop import Watcher
from ..outgoing.jobs import BuiltRun
from ..store import Store


@dataclass(frozen=True)
class ReloadOutcome:
    at: datetime
    ok: bool
    error: str | None = None


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

    def watchers(self) -> Sequence[Watcher]: ...

    def next_fires(self) -> Mapping[str, datetime | None]: ...

    def signed_out(self) -> Collection[str]:
        """OAuth2 accounts stopped until a person signs them in again."""
        ...

    async def build_job(self, job: str) -> BuiltRun:
        """The job's messages as a run now would make them; nothing stored or sent."""
        ...

    async def run_job(self, job: str) -> BuiltRun:
        """Run the job now (as `postroom send` does): stored in the outbox, then sent."""
        ...

    def wake_sender(self) -> None: ...

    def wake_webhooks(self) -> None: ...
