"""The composition root: builds every part from settings + config and runs the daemon.

Start: config → store (lock, migrate) → HTTP (/healthz answers from here) → recover → sender,
webhook queue → scheduler → watchers → READY. Stop (SIGTERM/SIGINT): STOPPING, no new
work, let in-flight sends and actions finish for a while, hand the rest back to the store,
exit 0. Reload (SIGHUP): validate the new config and templates first; apply only if good.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from .bootstrap import build_logins, load_checked, open_daemon_store, recover_single_node
from .clock import utcnow
from .clock_check import ClockCheck
from .config import Config, Settings
from .console.daemon import build_daemon_console, console_token
from .console.source import ReloadOutcome, WatcherStatus
from .errors import PostroomError, StoreUnavailable
from .http import HttpServer
from .incoming.actions import ActionExecutor
from .incoming.balance import FolderBalance
from .incoming.bounces import BounceIntake, watch_targets
from .incoming.rules import RuleSet
from .incoming.transfer import imap_opener
from .incoming.watch_loop import WatchState
from .incoming.watcher import ImapWatcher, Pop3Watcher, Watcher, WatcherHooks
from .mail.templates import TemplateRenderer
from .metrics import DaemonGauges, Metrics, OutboxGauges, WatchGauge
from .notify import Notifier, watchdog_loop
from .outgoing import smtp
from .outgoing.envelopes import given_verp_key, signed_return_paths
from .outgoing.jobs import BuiltRun, JobRunner
from .outgoing.preview import JobPreviews
from .outgoing.refusals import suppressing
from .outgoing.sender import HOLD, MAX_IDLE, OutboxSender
from .retry import sleep_or_stop
from .schedule.runner import Scheduler
from .sieve.rule import compile_config
from .store import Store
from .store import calls as store_calls
from .store.calls import close_store, store_call
from .store.dbtime import clock_offset
from .store.health import StoreMonitor
from .supervise import TaskHealth, supervised
from .webhooks.delivery import WebhookQueue

log = structlog.get_logger(__name__)

STOP_TIMEOUT = 15.0  # seconds in-flight work may take to finish at stop; systemd allows 45
# A watcher in these states works its folder; "standing by" leaves it to another replica.
CONNECTED = frozenset({WatchState.IDLE, WatchState.POLLING})
FORGET_DEAD = timedelta(hours=1)  # a dead replica's row stays this long (for `postroom status`)


@dataclass
class Incoming:
    """One generation of watchers (replaced whole on reload)."""

    ruleset: RuleSet
    executor: ActionExecutor
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    balance: FolderBalance | None = None  # replicas: this one's share of the watches
    watchers: list[Watcher] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def close(self, timeout: float) -> None:
        self.stop.set()
        if self.tasks:
            _done, late = await asyncio.wait(self.tasks, timeout=timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)


@dataclass
class Daemon:
    settings: Settings
    dry_run: bool = False
    migrate: bool = True  # False: `run --no-migrate`, an old schema is refused
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    metrics: Metrics = field(default_factory=Metrics)
    notifier: Notifier = field(default_factory=Notifier)
    task_health: TaskHealth = field(default_factory=TaskHealth)  # supervised tasks down now
    shared: bool = False  # replicas on PostgreSQL share the work
    replicas_alive: int = 1  # by the replica heartbeat
    members: list[str] = field(default_factory=list)  # the replicas alive, by fresh heartbeats
    replicas_settled: bool = False  # the replica count was the same at two heartbeats (balance)
    _started: bool = False  # every part is up: a SIGHUP may reload
    last_reload: ReloadOutcome | None = None  # for the console

    async def run(self) -> int:
        self.http = HttpServer(
            self.settings.http,
            registry=self.metrics.registry,
            readiness=self.readiness,
            hosts=self.settings.console_hosts,
        )
        self.console_token = console_token(self.settings)  # a bad token fails here, before anything starts
        # Handlers first: a SIGTERM while starting (systemd's stop, or a restart loop) must
        # end in an orderly exit 0, not Python's default death by signal.
        self._install_signals()
        store_calls.observe.hook, smtp.observe.hook = self.metrics.store_call, self.metrics.smtp_send
        try:
            return await self._run()
        finally:
            store_calls.observe.hook = smtp.observe.hook = None
            await self.http.stop()
            self.notifier.close()

    async def _run(self) -> int:
        loaded, renderer = load_checked(self.settings)
        self.loaded, self.loaded_at = loaded, utcnow()
        config = loaded.config
        self.store = store = await asyncio.to_thread(open_daemon_store, self.settings, migrate=self.migrate)
        # The port opens once nothing left can refuse the start (config, store lock, schema):
        # a daemon that refuses never answered /healthz, so no probe saw it up.
        bound = await self.http.start()
        if bound is not None and self.console_token is not None:  # the line that says where to look
            host, port = bound
            log.info("console listening", url=f"http://{f'[{host}]' if ':' in host else host}:{port}/")
        await store.calls.run(recover_single_node, store)
        self.metrics.watch_store(self._outbox_gauges, utcnow)
        self.metrics.known_accounts(config.accounts)
        self.metrics.known_jobs({name: job.account for name, job in config.jobs.items()})
        # One token provider per OAuth2 account, shared by the sender and the watchers.
        self.logins = build_logins(self.settings, config, store, on_refresh=self.metrics.oauth2_refresh)
        # VERP return paths are signed with it, and bounces checked against it (mail/verp.py).
        self.verp_key = await store_call(store.bounces.verp_key, given_verp_key(self.settings), now=utcnow())

        # Replicas on PostgreSQL share the work: short leases renewed while held; a fire keeps
        # one batch for itself and leaves the rest for any replica; idle senders look for rows
        # queued or left by others every third of a lease.
        self.shared = store.engine.dialect.name != "sqlite"
        self.lease = lease = timedelta(seconds=self.settings.lease_seconds)
        store.runs.lease = lease  # a fire's claim is renewed, and taken over, like other leases
        self.clock_check = ClockCheck(shared=self.shared)
        self.sender = OutboxSender(
            store.outbox,
            config.accounts,
            config.outbox,
            logins=self.logins,
            on_result=lambda kind, item: self.metrics.outbox_result(kind, item.account),
            on_refused=self.metrics.refused,
            suppress=suppressing(store.bounces),
            lease=lease,
            handoff_limit=config.outbox.batch_size if self.shared else None,
            max_idle=min(MAX_IDLE, lease / 3) if self.shared else MAX_IDLE,
            return_paths=signed_return_paths(self.verp_key),
        )
        # A fire's messages go straight to the running sender (already leased, already in
        # memory) instead of being claimed back from the store.
        self.runner = JobRunner(
            config,
            renderer,
            store,
            wake_sender=self.sender.wake,
            sender=self.sender,
            on_run=self.metrics.job_run,
            on_suppressed=self.metrics.suppressed,
        )
        ruleset = compile_config(config)
        self.webhooks = WebhookQueue(
            store.ledger, spec_lookup=ruleset.action_config, on_result=self.metrics.webhook, lease=lease
        )
        self.scheduler = Scheduler(
            config, store.runs, self._on_fire, clock_check=self.clock_check, shutdown_timeout=STOP_TIMEOUT
        )
        # Fires the store failed wait for it; when it answers again they run, and the catch-up too.
        self.store_monitor = StoreMonitor(
            store.engine,
            store.calls,
            sqlite_path=self.settings.sqlite_path(),
            on_back=None if self.dry_run else self.scheduler.store_back,
        )
        self.tasks.append(asyncio.create_task(self.store_monitor.run(self.stop_event), name="store monitor"))
        if not self.dry_run:
            self.tasks.append(asyncio.create_task(self.sender.run(self.stop_event), name="sender"))
            self.tasks.append(
                asyncio.create_task(
                    supervised(
                        "webhooks", lambda: self.webhooks.run(self.stop_event), self.stop_event, health=self.task_health
                    ),
                    name="webhooks",
                )
            )
            if self.shared:  # the catch-up at start reads the database's time
                await self._check_clock()
            await self.scheduler.start()
            self.tasks.append(
                asyncio.create_task(
                    self.scheduler.take_over_lapsed(self.stop_event, lease.total_seconds() / 3), name="lapsed fires"
                )
            )
        if self.shared and not self.dry_run:  # counted before the watchers claim their share
            self.replicas_alive = await store_call(
                store.replicas.beat, now=utcnow(), ttl=lease, clock_offset=self.clock_check.offset
            )
            self.members = await self._members() or [self.settings.instance]
            self.tasks.append(asyncio.create_task(self._replica_heartbeat(), name="replica heartbeat"))
        self.incoming = self._start_incoming(config, renderer, ruleset)
        self.tasks.append(asyncio.create_task(watchdog_loop(self.notifier, self.stop_event), name="watchdog"))
        self.metrics.set_jobs(self._next_fires(config))
        if self.console_token is not None:
            self.http.attach_console(build_daemon_console(DaemonConsoleView(self), self.settings, self.console_token))
        else:
            self.http.attach_console(None, "the console is off: set POSTROOM_CONSOLE_TOKEN (docs/pages/console.md)")

        self.metrics.watch_daemon(self.gauges)
        self._started = True
        if self.stop_event.is_set():  # asked to stop while starting: no READY, straight to stop
            await self._shutdown()
            return 0
        self.http.mark_running()
        status = self._status_line(config)
        self.notifier.ready(status=status)
        log.info("postroom running", config=str(loaded.path), status=status, dry_run=self.dry_run)
        await self.stop_event.wait()
        await self._shutdown()
        return 0

    # -- parts -----------------------------------------------------------------------------
    def _start_incoming(self, config: Config, renderer: TemplateRenderer, ruleset: RuleSet) -> Incoming:
        executor = ActionExecutor(
            config,
            ruleset,
            self.store,
            renderer,
            self.webhooks,
            wake_sender=self.sender.wake,
            dry_run=self.dry_run,
            on_action=self.metrics.action,
            open_account=imap_opener(config, self.logins.credentials),
        )
        incoming = Incoming(ruleset=ruleset, executor=executor)
        hooks = WatcherHooks(processed=self.metrics.inbound, ok=self.metrics.watcher_ok)
        pop3_started: set[str] = set()
        # replicas on PostgreSQL: one watches each folder. SQLite is one process, nothing to
        # share; a dry run takes no lease (it must not keep a real replica out).
        leases = self.store.leases if self.shared and not self.dry_run else None
        targets = []  # (account, folder); a maildrop has one "folder", watched once
        for account_name, folder in watch_targets(config, ruleset):  # rules' folders, then bounce folders
            account = config.accounts[account_name]
            if account.imap is not None:
                targets.append((account_name, folder))
            elif account.pop3 is not None and account_name not in pop3_started:
                pop3_started.add(account_name)
                targets.append((account_name, folder))
        # each replica holds at most its share of the watches (incoming.balance)
        balance = (
            FolderBalance(
                len(targets),
                me=self.settings.instance,
                members=self.members,
                settled=self.replicas_settled,
                refresh=self._members,
                settle_max=self.lease.total_seconds(),
                beyond_hold=self.lease.total_seconds(),
            )
            if leases is not None
            else None
        )
        incoming.balance = balance
        ttl = self.settings.lease_seconds
        for account_name, folder in targets:
            account = config.accounts[account_name]
            intake = self._bounce_intake(account_name, config, folder)
            watcher: Watcher
            if account.imap is not None:
                watcher = ImapWatcher(
                    account_name,
                    account,
                    folder,
                    ruleset,
                    executor,
                    self.store.inbound,
                    dry_run=self.dry_run,
                    hooks=hooks,
                    leases=leases,
                    lease_ttl=ttl,
                    balance=balance,
                    bounces=intake,
                    credentials=self.logins.credentials(account_name, account.imap),
                )
            elif account.pop3 is not None:
                watcher = Pop3Watcher(
                    account_name,
                    account,
                    ruleset,
                    executor,
                    self.store.inbound,
                    dry_run=self.dry_run,
                    hooks=hooks,
                    leases=leases,
                    lease_ttl=ttl,
                    balance=balance,
                    bounces=intake,
                    credentials=self.logins.credentials(account_name, account.pop3),
                )
            else:
                continue
            incoming.watchers.append(watcher)
            incoming.tasks.append(
                asyncio.create_task(watcher.run(incoming.stop), name=f"watch {account_name}/{folder}")
            )
        return incoming

    async def _replica_heartbeat(self) -> None:
        """Renew this replica's row every third of a lease and learn how many are alive: the
        folders' shares follow (incoming.balance). Rows of replicas long dead are dropped."""
        store, lease = self.store, self.lease
        started = time.monotonic()
        while not self.stop_event.is_set():
            await sleep_or_stop(self.stop_event, lease.total_seconds() / 3)
            if self.stop_event.is_set():
                break
            try:
                await self._check_clock()
                self.replicas_alive = await store_call(
                    store.replicas.beat, now=utcnow(), ttl=lease, clock_offset=self.clock_check.offset
                )
                members = await store_call(store.replicas.members, now=utcnow(), fresh=lease * 2 / 3)
                await store_call(store.replicas.forget_dead, now=utcnow(), after=FORGET_DEAD)
            except Exception as exc:  # the store is down: the leases say what happens meanwhile
                log.warning("replica heartbeat failed", error=repr(exc))
                continue
            # Settled: the count did not change over a beat, or a lease has passed since start.
            settled = len(members) == len(self.members) or time.monotonic() - started >= lease.total_seconds()
            self.members, self.replicas_settled = members, self.replicas_settled or settled
            balance = self.incoming.balance
            if balance is not None:
                balance.members(members)
                balance.settled = balance.settled or self.replicas_settled

    async def _members(self) -> list[str] | None:
        """The replicas alive now by fresh heartbeats; None when the store could not say."""
        try:
            return await store_call(self.store.replicas.members, now=utcnow(), fresh=self.lease * 2 / 3)
        except StoreUnavailable:
            return None

    async def _check_clock(self) -> None:
        """Compare this host's clock with the database's; fires left alone while they
        disagreed are caught up once they agree again."""
        offset = await self.store.calls.run(clock_offset, self.store.engine, utcnow)
        if self.clock_check.update(offset):
            await self.scheduler.clock_back()

    def _bounce_intake(self, account_name: str, config: Config, folder: str) -> BounceIntake | None:
        """The account's bounce intake when ``folder`` is its bounce folder."""
        bounces = config.accounts[account_name].bounces
        if bounces is None or bounces.folder != folder:
            return None
        return BounceIntake(
            account_name,
            config.accounts[account_name],
            self.store.outbox,
            self.store.bounces,
            key=self.verp_key,
            on_bounce=self.metrics.bounce,
        )

    async def _on_fire(self, job_id: str, fire_time: datetime, trigger: str) -> None:
        if self.stop_event.is_set():
            return  # the claim is not taken: a restart within grace runs it
        await self.runner.run_fire(job_id, fire_time, trigger)
        self.metrics.set_jobs(self._next_fires(self.runner.config))

    def next_fires(self) -> dict[str, datetime | None]:
        return self._next_fires(self.runner.config)

    def _next_fires(self, config: Config) -> dict[str, datetime | None]:
        upcoming = self.scheduler.next_fires() if not self.dry_run else {}
        return {name: upcoming.get(name) for name in config.jobs}

    def _status_line(self, config: Config) -> str:
        return f"{len(config.jobs)} jobs, {len(self.incoming.watchers)} watchers" + (
            ", dry run" if self.dry_run else ""
        )

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        return self.readiness_now()

    def readiness_now(self) -> tuple[bool, dict[str, Any]]:
        """/readyz's answer, from what the daemon knows now (no I/O: /metrics reads it too)."""
        # The monitor's last probe (a query with a deadline, and for SQLite the file itself):
        # a stalled store makes us not ready without a /readyz waiting on it.
        store_ok, store_problem = self.store_monitor.state.ok, self.store_monitor.state.why
        watchers = {f"{w.account}/{w.folder}": bool(getattr(w, "ready", True)) for w in list(self.incoming.watchers)}
        scheduler_ok = self.dry_run or self.scheduler.running
        # An OAuth2 account stopped for want of a token (revoked) is not ready until a person
        # signs in again; the others go on, and say so.
        stopped = self.logins.stopped()
        accounts = {name: name not in stopped for name in self.logins.tokens}
        clock_problem = None if self.dry_run else self.clock_check.problem()
        ok = (
            store_ok
            and scheduler_ok
            and clock_problem is None
            and all(watchers.values())
            and not stopped
            and not self.task_health.down
        )
        details: dict[str, Any] = {
            "store": store_ok,
            "scheduler": scheduler_ok,
            "watchers": watchers,
            "tasks_down": dict(self.task_health.down),
        }
        if store_problem is not None:
            details["store_problem"] = store_problem
        if self.shared:  # replicas: schedules follow the database's clock
            details["clock"] = {"offset_s": self.clock_check.offset_s, "agrees": clock_problem is None}
            if clock_problem is not None:
                details["clock"]["problem"] = clock_problem
        if accounts:
            details["oauth2_accounts"] = accounts
        if stopped:  # their outgoing mail is `held` in the outbox (and postroom_outbox_held)
            details["held"] = {name: f"signed out: mail held until `postroom auth login {name}`" for name in stopped}
        failing = self.logins.failing()
        if failing:  # ready (mail waits and is retried), but told: the token endpoint misbehaves
            details["oauth2_failing"] = failing
        balance = self.incoming.balance
        if balance is not None:  # replicas: who this is and which watches it holds
            details["replica"] = {
                "instance": self.settings.instance,
                "replicas_alive": balance.alive,
                "share": balance.share,
                "holds": sorted(balance.held),
            }
        return ok, details

    # -- signals ---------------------------------------------------------------------------
    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)

    def _on_sighup(self) -> None:
        if not self._started or self.stop_event.is_set():
            # Startup reads the config file anyway; a reload while stopping has nothing to change.
            log.info("reload ignored while starting or stopping")
            return
        self.tasks.append(asyncio.create_task(self.reload(), name="reload"))

    def request_stop(self, why: str = "request") -> None:
        if not self.stop_event.is_set():
            log.info("stopping", signal=why)
            self.http.mark_stopping()
            self.notifier.stopping(status="stopping: finishing in-flight work")
            self.stop_event.set()

    async def reload(self) -> None:
        """SIGHUP: new config and templates, validated before anything changes."""
        self.notifier.reloading()
        started = time.monotonic()
        try:
            loaded, renderer = await asyncio.to_thread(load_checked, self.settings)
            # A stopped account (or one whose oauth2: changed) is built anew: it reads the
            # refresh token stored by `postroom auth login` (or configured) since.
            logins = await asyncio.to_thread(
                build_logins,
                self.settings,
                loaded.config,
                self.store,
                on_refresh=self.metrics.oauth2_refresh,
                keep=self.logins,
            )
        except PostroomError as exc:
            self.metrics.reload("failed")
            self.last_reload = ReloadOutcome(utcnow(), ok=False, error=str(exc))
            log.error("reload refused; still running the previous config", error=str(exc))
            self.notifier.ready(status=f"reload failed; {self._status_line(self.loaded.config)}")
            return
        config = loaded.config
        self.loaded, self.loaded_at = loaded, utcnow()
        resumed = [name for name in self.logins.stopped() if logins.tokens.get(name) is not self.logins.tokens[name]]
        self.logins = logins
        self.sender.accounts, self.sender.policy, self.sender.logins = config.accounts, config.outbox, logins
        self.runner.config, self.runner.renderer = config, renderer
        self.metrics.known_accounts(config.accounts)
        self.metrics.known_jobs({name: job.account for name, job in config.jobs.items()})
        if not self.dry_run:
            self.scheduler.replace(config)
        ruleset = compile_config(config)
        self.webhooks.spec_lookup = ruleset.action_config
        old = self.incoming
        # In-flight batches finish (the old watchers stop between batches), then the new
        # generation starts from the checkpoints the old one left.
        await old.close(timeout=STOP_TIMEOUT)
        if self.stop_event.is_set():
            return  # a SIGTERM came meanwhile: _shutdown owns what is left; start nothing new
        self.incoming = self._start_incoming(config, renderer, ruleset)
        if resumed and not self.dry_run:
            # Held rows of an account built anew (maybe signed in again) are tried now.
            await store_call(self.store.outbox.bring_forward, resumed, now=utcnow(), within=HOLD)
            self.sender.wake()
        self.metrics.set_jobs(self._next_fires(config))
        self.metrics.reload("ok")
        self.last_reload = ReloadOutcome(utcnow(), ok=True)
        status = self._status_line(config)
        log.info(
            "config reloaded", config=str(loaded.path), status=status, seconds=round(time.monotonic() - started, 3)
        )
        self.notifier.ready(status=status)

    def _outbox_gauges(self) -> OutboxGauges:
        """For /metrics: the outbox gauges, left out while the store is known to be down — a
        stalled database would hold the scrape's thread (and the next scrape's) until it answers."""
        monitor = getattr(self, "store_monitor", None)
        if self.store.calls.gate.closed_because is not None or (monitor is not None and not monitor.state.ok):
            raise StoreUnavailable("store unavailable: outbox gauges left out of this scrape")
        return OutboxGauges(self.store.outbox.counts(), self.store.outbox.oldest_waiting())

    def gauges(self) -> DaemonGauges:
        """For /metrics: the daemon's state as gauges (read from a scrape thread, no I/O)."""
        ready, _details = self.readiness_now()
        balance = self.incoming.balance
        watches = {
            (w.account, w.folder): WatchGauge(
                state=str(w.state),
                connected=w.state in CONNECTED,
                held=None if balance is None else w.watch_name() in balance.held,
                last_pass=w.last_ok,
            )
            for w in list(self.incoming.watchers)
        }
        stopped = self.logins.stopped()
        reload = self.last_reload
        return DaemonGauges(
            ready=ready and not self.stop_event.is_set(),
            store_up=self.store_monitor.state.ok,
            watches=watches,
            signed_in={name: name not in stopped for name in self.logins.tokens},
            replicas_alive=balance.alive if balance is not None else None,
            last_reload_ok=reload.ok if reload is not None else True,
            last_reload_at=reload.at if reload is not None else self.loaded_at,
        )

    async def _shutdown(self) -> None:
        # One grace period for all, counted from the stop: running fires, watchers' batches,
        # sends and webhooks finish side by side, and whatever still runs after STOP_TIMEOUT
        # is cancelled. A cancelled mail command cuts its connection (incoming/threaded.py), so
        # no thread blocked on a slow server holds the process past the grace period.
        if self.shared and not self.dry_run:
            # Leave first: the others count one fewer as soon as they ask, so each folder this
            # replica releases below is taken at once by one that has room for it.
            try:
                await store_call(self.store.replicas.leave)
            except Exception as exc:
                log.warning("could not remove this replica's heartbeat row; it runs out", error=repr(exc))
        await asyncio.gather(self.scheduler.shutdown(), self.incoming.close(timeout=STOP_TIMEOUT), self._finish_tasks())
        await close_store(self.store)
        log.info("stopped")

    async def _finish_tasks(self) -> None:
        pending = [t for t in self.tasks if not t.done()]
        if pending:
            _done, late = await asyncio.wait(pending, timeout=STOP_TIMEOUT)
            for task in late:
                task.cancel()  # the sender and webhook queue hand claimed rows back on cancel
            await asyncio.gather(*late, return_exceptions=True)


def run_daemon(settings: Settings, *, dry_run: bool = False, migrate: bool = True) -> int:
    return asyncio.run(Daemon(settings, dry_run=dry_run, migrate=migrate).run())


class DaemonConsoleView:
    """The running daemon as the console sees it (``console.source.DaemonView``). It lives
    beside the daemon it reads, so console/daemon.py, which builds the console, needs nothing
    of this module."""

    def __init__(self, daemon: Daemon):
        self.daemon = daemon

    @property
    def store(self) -> Store:
        return self.daemon.store

    @property
    def instance(self) -> str:
        return self.daemon.settings.instance

    @property
    def dry_run(self) -> bool:
        return self.daemon.dry_run

    def config(self) -> Config:
        return self.daemon.loaded.config

    def config_path(self) -> Path:
        return self.daemon.loaded.path

    def loaded_at(self) -> datetime:
        return self.daemon.loaded_at

    def last_reload(self) -> ReloadOutcome | None:
        return self.daemon.last_reload

    def watchers(self) -> Sequence[WatcherStatus]:
        return [
            WatcherStatus(w.account, w.folder, w.kind, w.state, w.last_ok, w.last_error, w.last_error_at)
            for w in self.daemon.incoming.watchers
        ]

    def next_fires(self) -> Mapping[str, datetime | None]:
        return self.daemon.next_fires()

    def signed_out(self) -> Collection[str]:
        return self.daemon.logins.stopped()

    async def build_job(self, job: str) -> BuiltRun:
        runner = self.daemon.runner
        return await JobPreviews(runner.config, runner.renderer).whole_run(job, now=utcnow())

    async def run_job(self, job: str) -> BuiltRun:
        # As `postroom send JOB` does: a manual run, recorded, its rows handed to the sender.
        return await self.daemon.runner.run_now(job, key_prefix=f"console:{job}:{uuid.uuid4().hex}")

    async def retry_letter(self, item: int) -> bool:
        done = await store_call(self.store.outbox.retry, item, now=utcnow())
        if done:
            self.daemon.sender.wake()
        return done

    async def discard_letter(self, item: int) -> bool:
        return await store_call(self.store.outbox.discard, item, now=utcnow())

    async def retry_set_aside(self, key: str) -> bool:
        return await store_call(self.store.inbound.retry_set_aside, key, now=utcnow())

    async def retry_webhook(self, webhook_id: str) -> bool:
        done = await store_call(self.store.ledger.retry_webhook, webhook_id, now=utcnow())
        if done:
            self.daemon.webhooks.wake()
        return done
