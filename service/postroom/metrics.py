"""Prometheus metrics: one `Metrics` object on its own registry, small methods the daemon calls.

Conventions: `postroom_` prefix, base units (seconds, timestamps in seconds since the epoch),
labels only from bounded, operator-chosen names (job, account, folder) or small fixed sets
(status, result, kind). Never an address, a subject or a message id: each would be a new
series per message and grow the scrape without bound.

Queue sizes are read from the store when scraped (a custom collector over a callable), so
they are right after a restart and across replicas sharing one database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = structlog.get_logger(__name__)

# Jobs range from a quick digest to a large mail merge.
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
OUTBOX_RESULTS = ("sent", "deferred", "dead", "held")
# Created at 0 for each account / job, so an alert's increase() sees the first one happen.
BOUNCE_KINDS = ("hard", "soft", "other")
JOB_STATUSES = ("done", "failed", "skipped")
# Outbox rows waiting to go out: queued, held (their account signed out), or leased by a
# sender right now.
_DEPTH_STATUSES = ("queued", "held", "sending")


def postroom_version() -> str:
    try:
        return version("postroom")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


@dataclass(frozen=True)
class OutboxGauges:
    """What the store says about the outbox at one scrape."""

    counts: Mapping[str, int]  # {outbox status: rows}
    oldest_waiting: datetime | None = None  # created_at of the oldest queued or sending row


class StoreCollector(Collector):
    """`postroom_outbox_depth`, `postroom_outbox_oldest_age_seconds` and
    `postroom_dead_letters`, read from the store on each scrape.

    `read` returns OutboxGauges (e.g. from OutboxStore.counts and .oldest_waiting). It does
    blocking I/O: scrape from a thread (postroom.http does). If it fails the gauges are left
    out of that scrape rather than failing /metrics — the failure shows in /readyz, the logs
    and `postroom_store_up`.
    """

    def __init__(self, read: Callable[[], OutboxGauges], now: Callable[[], datetime]):
        self._read = read
        self._now = now

    def describe(self) -> Iterable[Metric]:
        # Describing without calling the store keeps registration free of I/O.
        return [_depth_family(), _oldest_family(), _dead_family(), _held_family()]

    def collect(self) -> Iterator[Metric]:
        try:
            found = self._read()
        except Exception as exc:
            log.warning("metrics: reading outbox counts failed", error=type(exc).__name__)
            return
        depth, oldest, dead, held = _depth_family(), _oldest_family(), _dead_family(), _held_family()
        depth.add_metric([], sum(found.counts.get(s, 0) for s in _DEPTH_STATUSES))
        age = 0.0 if found.oldest_waiting is None else (self._now() - found.oldest_waiting).total_seconds()
        oldest.add_metric([], max(0.0, age))
        dead.add_metric([], found.counts.get("dead", 0))
        held.add_metric([], found.counts.get("held", 0))
        yield depth
        yield oldest
        yield dead
        yield held


def _oldest_family() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "postroom_outbox_oldest_age_seconds", "Age of the oldest outbox message queued or being sent (0: none)."
    )


def _depth_family() -> GaugeMetricFamily:
    return GaugeMetricFamily("postroom_outbox_depth", "Outbox messages queued or being sent.")


def _dead_family() -> GaugeMetricFamily:
    return GaugeMetricFamily("postroom_dead_letters", "Outbox messages that failed for good.")


def _held_family() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "postroom_outbox_held", "Outbox messages held, untried, until their account signs in again."
    )


@dataclass(frozen=True)
class WatchGauge:
    """One watcher (account, folder) as this replica sees it."""

    state: str  # a WatchState value: starting, IDLE, polling, standing by, failing
    connected: bool  # working the folder now (IDLE or polling), not standing by or failing
    held: bool | None = None  # replicas: this replica holds the folder's lease
    last_pass: datetime | None = None  # this replica's last full pass over the folder


@dataclass(frozen=True)
class DaemonGauges:
    """The daemon's state at one scrape (Daemon.gauges builds it, without I/O)."""

    ready: bool
    store_up: bool
    watches: Mapping[tuple[str, str], WatchGauge] = field(default_factory=dict)
    signed_in: Mapping[str, bool] = field(default_factory=dict)  # OAuth2 accounts
    replicas_alive: int | None = None  # replicas on PostgreSQL, by the heartbeat
    last_reload_ok: bool = True
    last_reload_at: datetime | None = None  # the start counts as the first (good) load


# Every state a watcher reports, so each (account, folder) has one series per state: a
# state's series does not vanish when the watcher leaves it (an enum, Prometheus-style).
WATCH_STATES = ("starting", "IDLE", "polling", "standing by", "failing")


class DaemonCollector(Collector):
    """Readiness, store, watchers, replicas, OAuth2 sign-ins and the last reload, read from the
    running daemon on each scrape (a callable that does no I/O, so it answers even while the
    store is stalled)."""

    def __init__(self, read: Callable[[], DaemonGauges]):
        self._read = read

    def describe(self) -> Iterable[Metric]:
        return list(_daemon_families().values())

    def collect(self) -> Iterator[Metric]:
        g = self._read()
        f = _daemon_families()
        f["ready"].add_metric([], float(g.ready))
        f["store_up"].add_metric([], float(g.store_up))
        for (account, folder), watch in sorted(g.watches.items()):
            f["connected"].add_metric([account, folder], float(watch.connected))
            for state in WATCH_STATES:
                f["state"].add_metric([account, folder, state], float(watch.state == state))
            if watch.last_pass is not None:
                f["last_pass"].add_metric([account, folder], watch.last_pass.timestamp())
            if watch.held is not None:
                f["held"].add_metric([account, folder], float(watch.held))
        for account, signed_in in sorted(g.signed_in.items()):
            f["signed_in"].add_metric([account], float(signed_in))
        if g.replicas_alive is not None:
            f["replicas"].add_metric([], g.replicas_alive)
        f["reload_ok"].add_metric([], float(g.last_reload_ok))
        if g.last_reload_at is not None:
            f["reload_at"].add_metric([], g.last_reload_at.timestamp())
        yield from f.values()


def _daemon_families() -> dict[str, GaugeMetricFamily]:
    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=list(labels))

    watch = ("account", "folder")
    return {
        "ready": gauge("postroom_ready", "1 while /readyz says ready, else 0."),
        "store_up": gauge("postroom_store_up", "1 while the store answered its last probe in time, else 0."),
        "connected": gauge(
            "postroom_watcher_connected", "1 while the watcher works its folder (IDLE or polling).", watch
        ),
        "state": gauge(
            "postroom_watcher_state", "1 for the state the watcher is in, 0 for the others.", (*watch, "state")
        ),
        "last_pass": gauge(
            "postroom_watcher_last_pass_timestamp_seconds",
            "When this replica last finished a full pass over the folder (standing by is no pass).",
            watch,
        ),
        "held": gauge("postroom_watch_lease_held", "Replicas: 1 while this replica holds the folder's lease.", watch),
        "signed_in": gauge(
            "postroom_oauth2_signed_in",
            "1 while the OAuth2 account has a usable token; 0: sign in again.",
            ("account",),
        ),
        "replicas": gauge(
            "postroom_replicas_alive", "Replicas with a live heartbeat in the store, as this one counts."
        ),
        "reload_ok": gauge(
            "postroom_config_last_reload_successful", "1 if the last configuration load (start or SIGHUP) was applied."
        ),
        "reload_at": gauge(
            "postroom_config_last_reload_timestamp_seconds", "When the last configuration load was tried."
        ),
    }


# Store calls take milliseconds; a stalled database is cut at its deadline (seconds).
# A pipelined send takes milliseconds; a connect with TLS and login up to seconds.
SMTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
STORE_CALL_RESULTS = ("ok", "unavailable", "error")
STORE_CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """Every postroom metric, on a dedicated registry (not prometheus_client's global one)."""

    def __init__(self, registry: CollectorRegistry | None = None, *, build_version: str | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # process_* (memory, CPU, fds), python_info and python_gc_*: the global registry has
        # these by default, a dedicated one only when asked.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.build_info = Gauge(
            "postroom_build_info", "Always 1; labels say which build runs.", ["version"], registry=r
        )
        self.build_info.labels(build_version or postroom_version()).set(1)

        self.job_runs = Counter(
            "postroom_job_runs_total", "Job fires that finished, by outcome.", ["job", "status"], registry=r
        )
        self.job_duration = Histogram(
            "postroom_job_run_duration_seconds",
            "Time from a fire's start to its last message queued.",
            ["job"],
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.jobs = Gauge("postroom_jobs", "Jobs in the loaded configuration.", registry=r)
        self.job_next_fire = Gauge(
            "postroom_job_next_fire_timestamp_seconds",
            "When each job fires next (absent: never again).",
            ["job"],
            registry=r,
        )

        self.sent = Counter(
            "postroom_messages_sent_total", "Messages the SMTP server accepted.", ["account"], registry=r
        )
        self.failed = Counter(
            "postroom_messages_failed_total",
            "Messages moved to the dead letters (permanent failure or retries used up).",
            ["account"],
            registry=r,
        )
        self.deferred = Counter(
            "postroom_messages_deferred_total",
            "Send attempts that failed transiently and will be retried.",
            ["account"],
            registry=r,
        )
        self.held = Counter(
            "postroom_messages_held_total",
            "Messages put off, untried, while their account waits for an OAuth2 sign-in.",
            ["account"],
            registry=r,
        )
        self._outbox = {"sent": self.sent, "dead": self.failed, "deferred": self.deferred, "held": self.held}
        self.oauth2_refreshes = Counter(
            "postroom_oauth2_refreshes_total",
            "OAuth2 access token refreshes, by result (ok, transient, revoked, refused).",
            ["account", "result"],
            registry=r,
        )
        self.oauth2_expiry = Gauge(
            "postroom_oauth2_token_expiry_timestamp_seconds",
            "When each OAuth2 account's current access token expires.",
            ["account"],
            registry=r,
        )

        self.inbound_messages = Counter(
            "postroom_inbound_messages_total",
            "Incoming messages handled, by result.",
            ["account", "folder", "result"],
            registry=r,
        )
        self.actions_taken = Counter(
            "postroom_actions_total", "Rule actions taken, by kind and result.", ["kind", "result"], registry=r
        )
        self.webhook_deliveries = Counter(
            "postroom_webhook_deliveries_total", "Webhook delivery attempts, by result.", ["result"], registry=r
        )
        self.watcher_success = Gauge(
            "postroom_watcher_last_success_timestamp_seconds",
            "Last time a mailbox watcher completed a check without error.",
            ["account", "folder"],
            registry=r,
        )
        self.config_reloads = Counter(
            "postroom_config_reloads_total", "Configuration reloads (SIGHUP), by result.", ["result"], registry=r
        )
        self.bounces = Counter(
            "postroom_bounces_total",
            "Bounce reports read, by kind: consumed (hard: 5.x.x, soft, other), or left to the rules "
            "(unverified: not proven ours by a signed VERP token; over_budget: not parsed in time).",
            ["account", "kind"],
            registry=r,
        )
        self.refused_recipients = Counter(
            "postroom_recipients_refused_total",
            "Recipients the SMTP server refused for good at RCPT (kept on the outbox row).",
            ["account", "job"],
            registry=r,
        )
        self.store_calls = Histogram(
            "postroom_store_call_duration_seconds",
            "Store calls from the daemon's async code, by result (ok, unavailable, error).",
            ["result"],
            buckets=STORE_CALL_BUCKETS,
            registry=r,
        )
        for result in STORE_CALL_RESULTS:  # rate() of errors works from the first one
            self.store_calls.labels(result)
        self.smtp_sends = Histogram(
            "postroom_smtp_send_duration_seconds",
            "Time to hand one message to the SMTP server (connecting first if need be), by result (ok, error).",
            ["account", "result"],
            buckets=SMTP_BUCKETS,
            registry=r,
        )
        self.suppressed_recipients = Counter(
            "postroom_suppressed_recipients_total",
            "Recipients a job left out: on the account's suppression list.",
            ["job", "account"],
            registry=r,
        )

    # -- what the daemon calls -------------------------------------------------------------

    def watch_store(self, read: Callable[[], OutboxGauges], now: Callable[[], datetime]) -> StoreCollector:
        """Expose outbox depth, its oldest row's age and dead letters from `read`."""
        collector = StoreCollector(read, now)
        self.registry.register(collector)
        return collector

    def watch_daemon(self, read: Callable[[], DaemonGauges]) -> DaemonCollector:
        """Expose the daemon's own state (readiness, watchers, replicas, sign-ins, reloads)."""
        collector = DaemonCollector(read)
        self.registry.register(collector)
        return collector

    def store_call(self, seconds: float, result: str, _subject: str = "") -> None:
        """One store call (``store.calls.observe``)."""
        self.store_calls.labels(result).observe(seconds)

    def smtp_send(self, seconds: float, result: str, account: str) -> None:
        """One message handed to an SMTP server, connecting first if need be (``outgoing.smtp.observe``)."""
        self.smtp_sends.labels(account, result).observe(seconds)

    def known_accounts(self, accounts: Iterable[str]) -> None:
        """Create the per-account series at 0 so rate() works from the first message."""
        for account in accounts:
            for counter in self._outbox.values():
                counter.labels(account)
            self.smtp_sends.labels(account, "ok")
            for kind in BOUNCE_KINDS:
                self.bounces.labels(account, kind)

    def known_jobs(self, accounts_by_job: Mapping[str, str]) -> None:
        """Create each job's refused-recipients series at 0 (its account, the job), so the
        refusal alert's increase() sees the first refusal."""
        for job, account in accounts_by_job.items():
            self.refused_recipients.labels(account, job)

    def outbox_result(self, result: str, account: str) -> None:
        """`result` is one of OUTBOX_RESULTS: sent, deferred (will retry) or dead."""
        counter = self._outbox.get(result)
        if counter is None:
            raise ValueError(f"unknown outbox result {result!r}; expected one of {OUTBOX_RESULTS}")
        counter.labels(account).inc()

    def oauth2_refresh(self, account: str, result: str, expires_at: datetime | None) -> None:
        """One token refresh of ``account`` (``auth.accounts.RefreshHook``)."""
        self.oauth2_refreshes.labels(account, result).inc()
        if expires_at is not None:
            self.oauth2_expiry.labels(account).set(expires_at.timestamp())

    def job_run(self, job: str, status: str, seconds: float) -> None:
        self.job_runs.labels(job, status).inc()
        self.job_duration.labels(job).observe(seconds)

    def set_jobs(self, next_fires: Mapping[str, datetime | None]) -> None:
        """Every configured job with its next fire time (None: no further fire).

        Replaces what was there, so jobs removed by a reload stop being exported.
        """
        self.jobs.set(len(next_fires))
        self.job_next_fire.clear()
        for job in next_fires:
            for status in JOB_STATUSES:
                self.job_runs.labels(job, status)
        for job, at in next_fires.items():
            if at is not None:
                self.job_next_fire.labels(job).set(at.timestamp())

    def inbound(self, account: str, folder: str, result: str) -> None:
        self.inbound_messages.labels(account, folder, result).inc()

    def action(self, kind: str, result: str) -> None:
        self.actions_taken.labels(kind, result).inc()

    def webhook(self, result: str) -> None:
        self.webhook_deliveries.labels(result).inc()

    def watcher_ok(self, account: str, folder: str, at: datetime) -> None:
        self.watcher_success.labels(account, folder).set(at.timestamp())

    def reload(self, result: str) -> None:
        self.config_reloads.labels(result).inc()

    def bounce(self, account: str, kind: str) -> None:
        """A bounce report consumed (``incoming.bounces.BounceHook``)."""
        self.bounces.labels(account, kind).inc()

    def refused(self, account: str, job: str, count: int) -> None:
        """Recipients of one message refused for good (``outgoing.sender.RefusedHook``)."""
        self.refused_recipients.labels(account, job).inc(count)

    def suppressed(self, job: str, account: str, count: int) -> None:
        self.suppressed_recipients.labels(job, account).inc(count)
