"""Webhooks' durable delivery queue (signed as ``signing`` says).

Delivery: the executor enqueues a row per webhook action (``submit``); ``run`` claims due rows
with a lease (like the outbox), POSTs them and records the outcome. The ``webhook-id`` is derived
from the action key, so every retry - after a 500, a timeout, or a crash mid-request - carries
the same id and the receiver can deduplicate. Only 2xx is success (redirects are not followed:
a 3xx is a failure). 408/429/5xx, timeouts and connection errors are retried with exponential
backoff (``Retry-After`` honoured on 429/503, read defensively and capped at the longest
backoff); other 4xx are dead letters at once. Every state lives in the store, so a restart
continues where it stopped.

Isolation: a receiver is one URL. ``run`` delivers each receiver's rows in its own task, at
most ``PER_RECEIVER`` at a time, and does not claim more for a receiver it is still busy with,
so a slow or dead receiver delays only its own deliveries. Each request has a total deadline
(the action's ``timeout``), not just a per-read one: a receiver that drips a byte at a time
still ends in a timeout (retried).
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from postroom.clock import utcnow
from postroom.config.rules import ActionConfig, WebhookAction
from postroom.errors import (
    ErrorTable,
    PermanentError,
    PostroomError,
    ServerBusy,
    ServerConnectError,
    ServerRejected,
    ServerTimeout,
    is_transient,
    map_errors,
)
from postroom.retry import doubling_delay
from postroom.store.calls import store_call
from postroom.store.ledger import LedgerStore, WebhookDelivery
from postroom.webhooks.signing import sign, webhook_id_for

if TYPE_CHECKING:
    # httpx (with httpcore, ~8 MiB and ~60 ms of imports) is imported when the first delivery
    # is due: a daemon whose rules post no webhooks never loads it.
    import httpx

log = structlog.get_logger(__name__)

EVENT_TYPE = "message.matched"
_RETRY_STATUSES = frozenset({408, 429})  # plus every 5xx
_BODY_EXCERPT = 300
#: Deliveries in flight to one receiver at once. More rows for it wait in the store (not
#: leased), so the lease only has to cover one round of requests.
PER_RECEIVER = 4
#: How long a claim lasts unless renewed. A request may take up to its timeout (300 s at most):
#: while it runs, ``run`` renews the lease every third of this, so a replica that dies
#: mid-request gives its deliveries up to another within one lease, not one timeout.
LEASE = timedelta(seconds=20)


# -- queue ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookRequest:
    """One POST a rule's webhook action asks the queue to make (durably). Defined here, by
    the queue that takes it: the incoming half imports it, never the other way round."""

    action_key: str  # "message key|rule|index": the webhook id is derived from it
    rule: str
    url: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class RetryPolicy:
    base: timedelta = timedelta(seconds=10)
    maximum: timedelta = timedelta(hours=1)
    max_attempts: int = 15
    max_age: timedelta = timedelta(days=2)

    def backoff(self, attempts: int) -> timedelta:
        """Delay after the ``attempts``-th failure (1-based): base, 2*base, 4*base … maximum."""
        return doubling_delay(attempts, base=self.base, cap=self.maximum)


# httpx's errors on a POST, by one table: all of them may pass (a receiver down or slow).
@functools.cache
def _http_errors() -> ErrorTable:
    import httpx

    return {
        httpx.TimeoutException: ServerTimeout,
        httpx.TransportError: ServerConnectError,  # refused, reset, DNS, TLS, protocol errors
    }


SpecLookup = Callable[[str, int], ActionConfig]


class _ClientOnFirstUse:
    """The queue's one HTTP client, made when the first delivery is due: most daemons never
    post a webhook, and the client's import is the only thing that would load httpx."""

    def __init__(self, make: Callable[[], httpx.AsyncClient]) -> None:
        self._make = make
        self._client: httpx.AsyncClient | None = None

    def __call__(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = self._make()
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


class WebhookQueue:
    """Durable webhook deliveries. ``spec_lookup(rule, index)`` is ``RuleSet.action_config``:
    the secret and timeout are read from the config at send time, never stored."""

    def __init__(
        self,
        ledger: LedgerStore,
        *,
        spec_lookup: SpecLookup,
        clock: Callable[[], datetime] = utcnow,
        policy: RetryPolicy = RetryPolicy(),
        batch_size: int = 20,
        transport: httpx.AsyncBaseTransport | None = None,
        on_result: Callable[[str], None] = lambda result: None,
        lease: timedelta = LEASE,
    ):
        self.on_result = on_result  # delivered | retry | dead — metrics
        self.lease = lease
        self._inflight: set[str] = set()  # webhook ids being delivered now (leases to renew)
        self.ledger = ledger
        self.spec_lookup = spec_lookup
        self.clock = clock
        self.policy = policy
        self.batch_size = batch_size
        self._transport = transport
        self._wake = asyncio.Event()

    async def submit(self, requests: Sequence[WebhookRequest]) -> int:
        """Store deliveries (on a store thread; idempotent on the webhook id) and wake the
        queue. Returns how many were new."""
        added = await self.ledger.calls.run(self._store_requests, requests)
        if added:
            self._wake.set()
        return added

    def _store_requests(self, requests: Sequence[WebhookRequest]) -> int:
        now = self.clock()
        rows = []
        for request in requests:
            webhook_id = webhook_id_for(request.action_key)
            payload = {"type": EVENT_TYPE, "timestamp": now.isoformat(), **request.payload}
            rows.append(
                dict(
                    webhook_id=webhook_id,
                    action_key=request.action_key,
                    rule=request.rule,
                    url=request.url,
                    payload=json.dumps(payload, sort_keys=True).encode(),
                )
            )
        return self.ledger.enqueue_webhooks(rows, now=now)

    def wake(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event, *, idle: float = 30.0) -> None:
        """Deliver until ``stop`` is set: due rows now, then sleep until the next is due.
        One HTTP client for the queue's life, so receivers' connections are reused."""
        heartbeat = asyncio.create_task(self._heartbeat(), name="webhook lease heartbeat")
        try:
            clients = _ClientOnFirstUse(self._client)
            try:
                await self._run(stop, clients, idle)
            finally:
                await clients.aclose()
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)

    async def _heartbeat(self) -> None:
        """Renew the leases of the deliveries in flight every third of the lease."""
        while True:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            if not self._inflight:
                continue
            try:
                await store_call(self.ledger.renew_webhooks, set(self._inflight), now=self.clock(), lease=self.lease)
            except Exception as exc:  # the store is down: the leases may run out, rows go again
                log.warning("could not renew the webhook leases", error=repr(exc))

    async def _run(self, stop: asyncio.Event, clients: _ClientOnFirstUse, idle: float) -> None:
        lanes: dict[str, asyncio.Task[int]] = {}  # receiver URL -> the task delivering to it
        try:
            while not stop.is_set():
                for url in [url for url, lane in lanes.items() if lane.done()]:
                    lanes.pop(url).result()  # a store error ends the run (its supervisor restarts it)
                if await self._start_lanes(clients, lanes):
                    continue
                # a busy receiver's waiting rows are due, but only its own lane's end frees them
                due = await store_call(
                    self.ledger.next_webhook_due, skip_urls=[url for url, lane in lanes.items() if not lane.done()]
                )
                wait = idle if due is None else max(0.05, min(idle, (due - self.clock()).total_seconds()))
                self._wake.clear()
                waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
                try:
                    await asyncio.wait([*waiters, *lanes.values()], timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiter in waiters:
                        waiter.cancel()
            if lanes:  # stopping: what is in flight finishes (or is handed back if cancelled)
                await asyncio.gather(*lanes.values())
        finally:
            for lane in lanes.values():
                lane.cancel()
            await asyncio.gather(*lanes.values(), return_exceptions=True)

    async def _start_lanes(self, clients: _ClientOnFirstUse, lanes: dict[str, asyncio.Task[int]]) -> int:
        """Claim what is due for receivers not busy now; one task per receiver."""
        busy = [url for url, lane in lanes.items() if not lane.done()]
        for url, group in (await self._claim(skip_urls=busy)).items():
            lanes[url] = asyncio.create_task(self._deliver_all(clients(), group), name=f"webhooks to {url}")
        return sum(1 for url in lanes if url not in busy)

    def _client(self) -> httpx.AsyncClient:
        import httpx

        return httpx.AsyncClient(follow_redirects=False, transport=self._transport)

    async def _claim(self, skip_urls: Collection[str] = ()) -> dict[str, list[WebhookDelivery]]:
        """Due rows by receiver, at most PER_RECEIVER each: the rest go back at once, due."""
        claimed = await store_call(
            self.ledger.claim_webhooks, now=self.clock(), limit=self.batch_size, lease=self.lease, skip_urls=skip_urls
        )
        groups: dict[str, list[WebhookDelivery]] = {}
        extra: list[WebhookDelivery] = []
        for delivery in claimed:
            group = groups.setdefault(delivery.url, [])
            (group if len(group) < PER_RECEIVER else extra).append(delivery)
        await store_call(self.ledger.release_webhooks, extra, now=self.clock())
        return groups

    async def deliver_due(self, client: httpx.AsyncClient | None = None) -> int:
        """One pass: claim what is due and deliver it. Returns how many rows were handled."""
        groups = await self._claim()
        if not groups:
            return 0
        if client is None:
            async with self._client() as own:
                return sum(await asyncio.gather(*(self._deliver_all(own, g) for g in groups.values())))
        return sum(await asyncio.gather(*(self._deliver_all(client, g) for g in groups.values())))

    async def _deliver_all(self, client: httpx.AsyncClient, claimed: list[WebhookDelivery]) -> int:
        try:
            await asyncio.gather(*(self._deliver(client, d) for d in claimed))
        except asyncio.CancelledError:
            await asyncio.shield(store_call(self.ledger.release_webhooks, claimed, now=self.clock()))
            raise
        return len(claimed)

    async def _deliver(self, client: httpx.AsyncClient, delivery: WebhookDelivery) -> None:
        logger = log.bind(
            webhook_id=delivery.webhook_id, rule=delivery.rule, url=delivery.url, attempt=delivery.attempts + 1
        )
        self._inflight.add(delivery.webhook_id)
        try:
            status = await self._post(client, delivery)
        except PostroomError as exc:
            self._inflight.discard(delivery.webhook_id)
            if is_transient(exc):
                await self._retry_or_kill(delivery, exc, logger)
                return
            logger.warning("webhook dead", reason=str(exc))
            await store_call(self.ledger.webhook_dead, delivery, now=self.clock(), error=str(exc))
            self.on_result("dead")
            return
        except BaseException:  # cancelled: handed back by _deliver_all
            self._inflight.discard(delivery.webhook_id)
            raise
        self._inflight.discard(delivery.webhook_id)
        logger.info("webhook delivered", status=status)
        await store_call(self.ledger.webhook_done, delivery, now=self.clock())
        self.on_result("delivered")

    async def _post(self, client: httpx.AsyncClient, delivery: WebhookDelivery) -> int:
        """The status of a 2xx answer; anything else raises ours (transient: retry later)."""
        try:
            action = self.spec_lookup(delivery.rule, _action_index(delivery.action_key))
            spec = action.webhook if isinstance(action, WebhookAction) else None
        except (KeyError, IndexError, ValueError):
            spec = None
        if spec is None:
            raise PermanentError("the rule's webhook action is no longer configured")
        timestamp = int(self.clock().timestamp())
        headers = {
            "webhook-id": delivery.webhook_id,
            "webhook-timestamp": str(timestamp),
            "content-type": "application/json",
            "user-agent": "postroom",
        }
        if spec.secret is not None:
            headers["webhook-signature"] = sign(
                spec.secret.get_secret_value(), delivery.webhook_id, timestamp, delivery.payload
            )
        # httpx's timeout is per read: a receiver dripping a byte a second would never end it.
        try:
            async with asyncio.timeout(spec.timeout):
                with map_errors(_http_errors(), f"POST {delivery.url}: "):
                    response = await client.post(
                        delivery.url, content=delivery.payload, headers=headers, timeout=spec.timeout
                    )
        except TimeoutError:
            raise ServerTimeout(f"POST {delivery.url}: no complete answer within {spec.timeout:g} s") from None
        code = response.status_code
        if 200 <= code < 300:
            return code
        excerpt = response.text[:_BODY_EXCERPT]
        reason = f"HTTP {code}: {excerpt}" if excerpt else f"HTTP {code}"
        if 300 <= code < 400:
            location = response.headers.get("location", "")
            raise ServerBusy(f"HTTP {code} redirect to {location!r} not followed", code=code)
        if code in _RETRY_STATUSES or code >= 500:
            after = None
            if code in (429, 503):
                after = _retry_after(response.headers.get("retry-after"), self.clock(), cap=self.policy.maximum)
            raise ServerBusy(reason, code=code, retry_after=after)
        raise ServerRejected(reason, code=code)

    async def _retry_or_kill(self, delivery: WebhookDelivery, exc: PostroomError, logger: Any) -> None:
        now = self.clock()
        attempts = delivery.attempts + 1
        retry_after = exc.retry_after if isinstance(exc, ServerBusy) else None
        retry_at = now + (retry_after if retry_after is not None else self.policy.backoff(attempts))
        if attempts >= self.policy.max_attempts:
            error = f"gave up after {attempts} attempts; last: {exc}"
        elif retry_at - delivery.created_at > self.policy.max_age:
            error = f"gave up after {now - delivery.created_at}; last: {exc}"
        else:
            logger.info("webhook retry", reason=str(exc), retry_at=retry_at.isoformat())
            await store_call(self.ledger.webhook_retry, delivery, now=now, retry_at=retry_at, error=str(exc))
            self.on_result("retry")
            return
        logger.warning("webhook dead", reason=error)
        await store_call(self.ledger.webhook_dead, delivery, now=now, error=error)
        self.on_result("dead")


def _action_index(action_key: str) -> int:
    return int(action_key.rsplit("|", 1)[1])


def _retry_after(value: str | None, now: datetime, *, cap: timedelta) -> timedelta | None:
    """``Retry-After`` as seconds or an HTTP date, at most ``cap``; None when absent or
    unreadable. A receiver's header is not trusted to fit a timedelta (``99999999999999999999``)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        digits = value.lstrip("0")[:20] or "0"  # 20 digits already exceed any cap
        return timedelta(seconds=min(int(digits), int(cap.total_seconds())))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return min(cap, max(timedelta(0), when - now))
