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
# Outbox rows waiting to go out: queued, or leased by a sender right now.
_DEPTH_STATUSES = ("queued", "sending")


def postroom_version() -> str:
    try:
        return version("postroom")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


class StoreCollector(Collector):
    """`postroom_outbox_depth` and `postroom_dead_letters`, read from the store on each scrape.

    `counts` returns {outbox status: rows} (e.g. OutboxStore.counts). It does blocking I/O:
    scrape from a thread (postroom.http does). If it fails the gauges are left out of that
    scrape rather than failing /metrics — the failure shows in /readyz and the logs.
    """

    def __init__(self, counts: Callable[[], Mapping[str, int]]):
        self._counts = counts

    def describe(self) -> Iterable[Metric]:
        # Describing without calling the store keeps registration free of I/O.
        return [_depth_family(), _dead_family()]

    def collect(self) -> Iterator[Metric]:
        try:
            counts = self._counts()
        except Exception as exc:
            log.warning("metrics: reading outbox counts failed", error=type(exc).__name__)
            return
        depth, dead = _depth_family(), _dead_family()
        depth.add_metric([], sum(counts.get(s, 0) for s in _DEPTH_STATUSES))
        dead.add_metric([], counts.get("dead", 0))
        yield depth
        yield dead


def _depth_family() -> GaugeMetricFamily:
    return GaugeMetricFamily("postroom_outbox_depth", "Outbox messages queued or being sent.")


def _dead_family() -> GaugeMetricFamily:
    return GaugeMetricFamily("postroom_dead_letters", "Outbox messages that failed for good.")


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
        self.suppressed_recipients = Counter(
            "postroom_suppressed_recipients_total",
            "Recipients a job left out: on the account's suppression list.",
            ["job", "account"],
            registry=r,
        )

    # -- what the daemon calls -------------------------------------------------------------

    def watch_store(self, counts: Callable[[], Mapping[str, int]]) -> StoreCollector:
        """Expose outbox depth and dead letters from `counts` (e.g. store.outbox.counts)."""
        collector = StoreCollector(counts)
        self.registry.register(collector)
        return collector

    def known_accounts(self, accounts: Iterable[str]) -> None:
        """Create the per-account series at 0 so rate() works from the first message."""
        for account in accounts:
            for counter in self._outbox.values():
                counter.labels(account)

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

    def suppressed(self, job: str, account: str, count: int) -> None:
        self.suppressed_recipients.labels(job, account).inc(count)
