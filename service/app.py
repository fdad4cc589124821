"""The composition root: builds every part from settings + config and runs the daemon.

Start order: config → store (migrate, recover) → sender → scheduler → watchers. Stop order
is the reverse, and every part hands unfinished work back to the store, so a restart
resumes exactly there.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import structlog

from .checks import template_findings
from .config import LoadedConfig, Settings, load_config
from .errors import ConfigError, PostroomError
from .outgoing.jobs import JobRunner
from .outgoing.sender import OutboxSender
from .outgoing.templates import TemplateRenderer
from .store import Store, utcnow

log = structlog.get_logger(__name__)

STOP_TIMEOUT = 15.0  # seconds to let in-flight work finish before handing it back


def load_checked(settings: Settings) -> tuple[LoadedConfig, TemplateRenderer]:
    """Config plus templates, validated together; ConfigError lists every problem."""
    loaded = load_config(settings)
    renderer = TemplateRenderer(loaded.templates_dir)
    bad = [f for f in template_findings(loaded.config, renderer) if not f.ok]
    if bad:
        raise ConfigError([(f.where, f.message) for f in bad], file=str(loaded.path))
    return loaded, renderer


def open_store(settings: Settings) -> Store:
    return Store.open(settings.database_url_or_default(), owner=settings.instance)


def recover_single_node(store: Store) -> None:
    """SQLite means one process: whatever a previous process left in flight is ours again now
    (no need to wait for leases to run out). PostgreSQL replicas wait for the lease instead."""
    if store.engine.dialect.name != "sqlite":
        return
    released = store.outbox.release_all_leases(now=utcnow())
    if released:
        log.info("outbox: took back messages in flight at the last stop", count=released)


@dataclass
class Daemon:
    settings: Settings
    dry_run: bool = False
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task] = field(default_factory=list)
    on_ready: Callable[[], None] = lambda: None

    async def run(self) -> int:
        loaded, renderer = load_checked(self.settings)
        self.loaded = loaded
        store = await asyncio.to_thread(open_store, self.settings)
        self.store = store
        await asyncio.to_thread(recover_single_node, store)
        config = loaded.config

        self.sender = OutboxSender(store.outbox, config.accounts, config.outbox)
        self.runner = JobRunner(config, renderer, store, wake_sender=self.sender.wake)
        from .scheduler import Scheduler

        self.scheduler = Scheduler(config, store.runs, self._on_fire)
        self._install_signals()
        if not self.dry_run:
            self.tasks.append(asyncio.create_task(self.sender.run(self.stop_event), name="sender"))
            await self.scheduler.start()
            stale = await asyncio.to_thread(store.runs.unfinished_fires, now=utcnow(),
                                            stale_after=self._stale_after(store))
            for job_id, fire_time in stale:
                if job_id in config.jobs:
                    log.info("resuming a fire left unfinished", job=job_id, fire_time=fire_time.isoformat())
                    self.tasks.append(asyncio.create_task(self.runner.run_fire(job_id, fire_time, "resume")))
        log.info("postroom running", config=str(loaded.path), jobs=len(config.jobs),
                 rules=len(config.rules), dry_run=self.dry_run)
        self.on_ready()
        await self.stop_event.wait()
        await self._shutdown()
        return 0

    async def _on_fire(self, job_id: str, fire_time, trigger: str) -> None:  # noqa: ANN001
        if self.stop_event.is_set():
            return
        await self.runner.run_fire(job_id, fire_time, trigger)

    @staticmethod
    def _stale_after(store: Store) -> timedelta:
        # One process on SQLite: anything still "running" is from a process that is gone.
        return timedelta(0) if store.engine.dialect.name == "sqlite" else timedelta(minutes=10)

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)

    def request_stop(self, why: str = "request") -> None:
        if not self.stop_event.is_set():
            log.info("stopping", signal=why)
            self.stop_event.set()

    async def _shutdown(self) -> None:
        await self.scheduler.shutdown()
        pending = [t for t in self.tasks if not t.done()]
        if pending:
            done, still = await asyncio.wait(pending, timeout=STOP_TIMEOUT)
            for task in still:
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)
        await asyncio.to_thread(self.store.close)
        log.info("stopped")


def run_daemon(settings: Settings, *, dry_run: bool = False) -> int:
    try:
        return asyncio.run(Daemon(settings, dry_run=dry_run).run())
    except PostroomError:
        raise
