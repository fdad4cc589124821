"""The outbox sender: claims due rows, sends them over reused SMTP connections, records results.

Every claimed row ends a drain in exactly one state, written to the store:
- sent:     every recipient accepted or refused for good (5xx at RCPT, kept with the reply),
            at least one accepted (now or on an earlier try);
- deferred: a transient failure (connection, timeout, 4xx) or some recipients refused with
            4xx; retried after `backoff()`, only to the recipients still owed;
- dead:     a permanent failure (5xx at MAIL/DATA, bad credentials, TLS, every recipient
            refused for good at RCPT), or a transient one once the message is past
            `max_attempts` tries or `max_age` old;
- held:     the account has stopped for want of an OAuth2 token (revoked: a person must sign
            in again): the message is not at fault, so it waits, not counted as a try and never
            too old, and goes out once the account signs in again (checked every `HOLD`);
- released: claimed but not tried when the sender was cancelled (shutdown): due again at once.

A failure to connect or log in is the account's, not the message's: it is applied to every
row of that account still waiting in the drain, without trying them one by one (a server
that is down would otherwise cost a connect timeout per message).
Rows are sent as stored (`item.raw`, same Message-ID) and never re-rendered.

A recipient refused for good with a mailbox status (5.1.1) is suppressed like a hard bounce
(`suppress`, see refusals.py), in the same store call as the row's result and before it.

Leases are short (`lease`, POSTROOM_LEASE_SECONDS) and claimed a batch at a time; while a drain
runs, a heartbeat renews the leases of every row it holds and has not settled, every third of
the lease. A sender that dies (kill -9) stops renewing: its rows run out within one lease and
another replica's sender takes them (same Message-ID), instead of waiting minutes.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from postroom.auth.accounts import AccountLogins
from postroom.clock import utcnow
from postroom.config.model import AccountConfig, OutboxConfig, SmtpConfig
from postroom.errors import OAuth2Error, PostroomError, StoreUnavailable, is_transient
from postroom.retry import doubling_delay
from postroom.store.calls import StoreCalls, store_call
from postroom.store.outbox import OutboxItem, OutboxStore, Settlement, SettlementKind

from .envelopes import ReturnPaths, send_each, unchanged
from .refusals import MAX_REPLY
from .smtp import SendResult, SmtpConnection

log = structlog.get_logger(__name__)

__all__ = ["DrainStats", "OutboxSender", "Outcome", "backoff", "decide"]

# Upper bound on one idle wait, so a clock jump or another replica's enqueue is noticed.
MAX_IDLE = timedelta(seconds=60)
# The longest pause between tries to record an outcome while the store is away.
SETTLE_RETRY_CAP = 1.0  # seconds
# How long a claim lasts unless renewed: the heartbeat renews it every third of this.
LEASE = timedelta(seconds=20)
# After drain_once itself failed (store down...), wait this long before the next try.
ERROR_PAUSE = timedelta(seconds=5)
# How often the rows of an account stopped for want of a token are looked at again: after a
# new sign-in and a reload they go out within this (the look costs no network while stopped).
HOLD = timedelta(seconds=60)


def backoff(
    attempts: int, policy: OutboxConfig, *, jitter: float = 0.1, rand: Callable[[], float] = random.random
) -> timedelta:
    """Delay before the next try after `attempts` failed ones (0 for the first failure):
    retry_base * 2**attempts, capped at retry_max, then spread by ± jitter."""
    delay = doubling_delay(attempts + 1, base=policy.retry_base, cap=policy.retry_max)
    spread = 1.0 + jitter * (2.0 * rand() - 1.0)
    return timedelta(seconds=max(delay.total_seconds() * spread, 0.0))


@dataclass(frozen=True)
class Outcome:
    """What to record for one message: ``kind`` as in ``Settlement`` ("sent", "deferred",
    "held" or "dead")."""

    kind: SettlementKind
    error: str | None = None
    delivered: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    remaining: list[str] | None = None
    retry_at: datetime | None = None


def decide(
    item: OutboxItem,
    result: SendResult | BaseException,
    *,
    now: datetime,
    policy: OutboxConfig,
    rand: Callable[[], float] = random.random,
) -> Outcome:
    """Pure: one send's result (or error) -> the outcome to record."""
    if isinstance(result, OAuth2Error):  # the account's sign-in, not this message: wait for it
        return Outcome("held", error=_describe(result), retry_at=now + HOLD)
    if isinstance(result, SendResult):
        # A server's reply is kept on the row and shown: bounded, however long it was.
        delivered = list(result.accepted)
        refused = {rcpt: reply[:MAX_REPLY] for rcpt, reply in result.refused_permanent.items()}
        if not result.refused_temporary:
            if refused and not delivered and not item.delivered:  # nobody got it, nobody will
                return Outcome("dead", error=f"every recipient refused: {_replies(refused)}", refused=refused)
            return Outcome("sent", delivered=delivered, refused=refused)
        error = "; ".join(f"{rcpt}: {reply}" for rcpt, reply in sorted(result.refused_temporary.items()))
        remaining: list[str] | None = list(result.refused_temporary)
        transient = True
    else:
        delivered, refused, remaining = [], {}, None
        error = _describe(result)
        transient = is_transient(result)
    if not transient:
        return Outcome("dead", error=error, delivered=delivered, refused=refused)
    tries = item.attempts + 1
    if tries >= policy.max_attempts:
        return Outcome("dead", error=f"gave up after {tries} attempts: {error}", delivered=delivered, refused=refused)
    if now - item.created_at >= policy.max_age:
        return Outcome(
            "dead",
            error=f"gave up after {now - item.created_at} undelivered: {error}",
            delivered=delivered,
            refused=refused,
        )
    retry_at = now + backoff(item.attempts, policy, rand=rand)
    return Outcome(
        "deferred", error=error, delivered=delivered, refused=refused, remaining=remaining, retry_at=retry_at
    )


def _replies(refused: Mapping[str, str]) -> str:
    return "; ".join(f"{rcpt}: {reply}" for rcpt, reply in sorted(refused.items()))


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, PostroomError) else f"{type(exc).__name__}: {text}"


@dataclass
class DrainStats:
    sent: int = 0
    deferred: int = 0
    dead: int = 0
    held: int = 0

    @property
    def total(self) -> int:
        return self.sent + self.deferred + self.dead + self.held


ResultHook = Callable[[str, OutboxItem], None]
# (account, job or rule, recipients refused for good) — metrics
RefusedHook = Callable[[str, str, int], None]
# Suppress an item's refused recipients (``refusals.suppress_refused`` on the store): called in
# the store thread, with the row's result write.
SuppressHook = Callable[[OutboxItem, Mapping[str, str], datetime], object]


@dataclass
class _AccountQueue:
    """One account's claimed rows in a drain, shared by its connections."""

    account: str
    rows: deque[OutboxItem] = field(default_factory=deque)
    exhausted: bool = False  # nothing more due (or the account is unreachable): stop claiming
    claiming: asyncio.Future[None] | None = None  # the claim in progress, shared by the workers


class _Recorder:
    """Group commit: results that arrive while a write is running go into the next one.

    With N connections a result costs about 1/N of a transaction instead of one each (each
    commit is an fsync under synchronous=FULL). No timer: a lone result is written at once.
    The writing task is not a worker's, so cancelling a worker never cancels a write.
    """

    def __init__(self, write: Callable[[list[Settlement]], None], calls: StoreCalls):
        self._write = write
        self._calls = calls  # the store's threads, where the write runs
        self._pending: list[tuple[Settlement, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(self, settlement: Settlement) -> None:
        """Return once settlement is committed (raise what the write raised)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((settlement, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending())
        await asyncio.shield(done)

    async def _write_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._calls.run(self._write, [s for s, _ in batch])
            except Exception as exc:
                for _, done in batch:
                    if not done.cancelled():
                        done.set_exception(exc)
                        done.exception()  # marked retrieved: a cancelled waiter won't read it
            else:
                for _, done in batch:
                    if not done.cancelled():
                        done.set_result(None)


class OutboxSender:
    """Drains the outbox. One instance per process; `run()` is its long-lived task."""

    def __init__(
        self,
        outbox: OutboxStore,
        accounts: Mapping[str, AccountConfig],
        policy: OutboxConfig,
        *,
        lease: timedelta = LEASE,
        clock: Callable[[], datetime] = utcnow,
        on_result: ResultHook | None = None,
        logins: AccountLogins | None = None,
        handoff_limit: int | None = None,
        max_idle: timedelta = MAX_IDLE,
        on_refused: RefusedHook | None = None,
        suppress: SuppressHook | None = None,
        return_paths: ReturnPaths = unchanged,
    ):
        self.outbox = outbox
        self.on_refused = on_refused
        self.suppress = suppress
        self.return_paths = return_paths  # signed VERP: one transaction per recipient
        self.accounts = accounts
        self.logins = logins if logins is not None else AccountLogins()  # replaced on reload too
        self.policy = policy
        self.lease = lease
        # Replicas: a fire hands this many of its rows to this sender in memory, the rest wait
        # `queued` for any replica to claim (None: all, one process on SQLite).
        self.handoff_limit = handoff_limit
        self.max_idle = max_idle  # replicas look for rows queued or left by others this often
        self.clock = clock
        self.on_result = on_result
        self.connections_opened = 0  # SMTP connections opened so far (a counter to export)
        self._wake = asyncio.Event()
        self._warm: dict[str, list[SmtpConnection]] = {}  # opened by prewarm(), used by the next drain
        self._handed: dict[str, list[OutboxItem]] = {}  # submit()ted rows no drain has taken yet
        self._running = False  # run() is draining: rows handed over now will be sent
        self._stop: asyncio.Event | None = None  # run()'s stop: once set, no new row is started
        self._lost: set[int] = set()  # rows whose lease another replica took: not to be sent here
        # Rows whose outcome is being written: once it commits, the row is no longer `sending`,
        # so a heartbeat's renewal skips it before _settle takes it out of `unsettled`.
        self._recording: set[int] = set()

    async def prewarm(self, account: str) -> None:
        """Open the account's connections now (connect, STARTTLS, AUTH), for the next drain.

        `postroom send` calls this while the merge renders, so the handshakes overlap the
        rendering. A connection that fails here is dropped quietly: the drain connects
        again and records the error against the messages as usual."""
        cfg = self.accounts.get(account)
        if cfg is None or cfg.smtp is None:
            return
        conns = [self._connection(account, cfg.smtp) for _ in range(cfg.smtp.connections)]
        results = await asyncio.gather(*(c.connect() for c in conns), return_exceptions=True)
        for conn, result in zip(conns, results, strict=True):
            if result is None:
                self._warm.setdefault(account, []).append(conn)
            else:
                conn.abort()
                log.debug("prewarm connection failed", account=account, error=str(result))

    def _connection(self, account: str, smtp: SmtpConfig) -> SmtpConnection:
        return SmtpConnection(account, smtp, self.logins.credentials(account, smtp))

    async def close_idle(self, account: str | None = None) -> None:
        """Close connections prewarm() opened (for `account`, or all) that no drain has used."""
        if account is None:
            idle = [conn for conns in self._warm.values() for conn in conns]
            self._warm.clear()
        else:
            idle = self._warm.pop(account, [])
        for conn in idle:
            self.connections_opened += conn.connects
        await asyncio.gather(*(conn.close() for conn in idle))

    @property
    def accepts_handoff(self) -> bool:
        """Whether rows passed to submit() will be sent: run() is draining in this process."""
        return self._running

    def submit(self, items: list[OutboxItem]) -> None:
        """Send these rows, already stored and leased to this process (`enqueue_leased`).

        They skip the claim: the drain running now takes them when its queue for their
        account runs dry, or the next drain (woken now) starts with them. Loop thread only."""
        for item in items:
            self._handed.setdefault(item.account, []).append(item)
        self._wake.set()

    def _take_handed(self, account: str | None = None) -> list[OutboxItem]:
        if account is None:
            taken = [item for items in self._handed.values() for item in items]
            self._handed.clear()
            return taken
        return self._handed.pop(account, [])

    def wake(self) -> None:
        """New mail was enqueued: drain now instead of at the next due time (loop thread only)."""
        self._wake.set()

    # -- one pass ------------------------------------------------------------------------------
    async def drain_once(self) -> DrainStats:
        """Send everything due, batch_size rows per claim; settle each row (module docstring).

        An account's connections stay open across its batches: when its queue runs dry, a
        worker claims the account's next batch instead of ending the drain (a 1,000-row merge
        is then 4 logins, not 40). Results are written by a group commit (`_Recorder`).
        """
        handed = self._take_handed()
        try:
            claimed = await store_call(
                self.outbox.claim_due, now=self.clock(), limit=self.policy.batch_size, lease=self.lease
            )
        except BaseException:
            for item in handed:  # not ours to drop: the next drain takes them
                self._handed.setdefault(item.account, []).append(item)
            raise
        unsettled = {item.id: item for item in handed}
        # A handed row whose lease ran out may be claimed too: it is the same row, sent once.
        items = handed + [item for item in claimed if item.id not in unsettled]
        unsettled.update((item.id, item) for item in items)
        stats = DrainStats()
        if not items:
            return stats
        heartbeat = asyncio.create_task(self._heartbeat(unsettled), name="outbox lease heartbeat")
        try:
            return await self._drain(items, unsettled, stats)
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            self._lost.clear()

    async def _heartbeat(self, unsettled: dict[int, OutboxItem]) -> None:
        """Renew the leases of the rows this drain holds (claimed, handed, not settled yet)
        every third of the lease, until the drain ends (it cancels this)."""
        while True:  # at once first: handed rows were leased before this drain started
            ids = sorted(set(unsettled) | {item.id for items in self._handed.values() for item in items})
            try:
                renewed = await store_call(self.outbox.renew, ids, now=self.clock(), lease=self.lease)
            except Exception as exc:  # the store is down: the leases may run out, rows go again
                log.warning("could not renew the outbox leases", rows=len(ids), error=repr(exc))
            else:
                # Not renewed and not settled meanwhile: another replica took the row after its
                # lease ran out (this one stalled). Rows not started yet are left to it.
                lost = {i for i in ids if i not in renewed and i in unsettled and i not in self._recording}
                if lost:
                    log.warning(
                        "outbox leases ran out and were taken by another replica; leaving those rows to it",
                        rows=len(lost),
                    )
                    self._lost |= lost
            await asyncio.sleep(self.lease.total_seconds() / 3)

    async def _drain(self, items: list[OutboxItem], unsettled: dict[int, OutboxItem], stats: DrainStats) -> DrainStats:
        by_account: dict[str, _AccountQueue] = {}
        for item in items:
            by_account.setdefault(item.account, _AccountQueue(item.account)).rows.append(item)
        recorder = _Recorder(self._record_many, self.outbox.calls)
        try:
            async with asyncio.TaskGroup() as group:
                for account, queue in by_account.items():
                    group.create_task(self._drain_account(account, queue, unsettled, stats, recorder))
        except BaseException:
            # Cancelled (shutdown) or broken: rows not yet settled go back, due at once.
            # Shielded like arq's final bookkeeping, so it happens even as we unwind.
            await self._hand_back(by_account, unsettled)
            raise
        # Stopping: the workers finished what was on the wire and started nothing new.
        await self._hand_back(by_account, unsettled)
        return stats

    async def _hand_back(self, by_account: dict[str, _AccountQueue], unsettled: dict[int, OutboxItem]) -> None:
        """Release what this drain holds but did not settle; a claim still running is waited
        for first, so its rows are handed back too."""
        pending = [q.claiming for q in by_account.values() if q.claiming is not None]
        if pending:
            await asyncio.shield(asyncio.gather(*pending, return_exceptions=True))
        left = list(unsettled.values())
        if left:
            await asyncio.shield(store_call(self.outbox.release, left, now=self.clock()))
            log.info("outbox rows released", count=len(left))

    async def _drain_account(
        self,
        account: str,
        queue: _AccountQueue,
        unsettled: dict[int, OutboxItem],
        stats: DrainStats,
        recorder: _Recorder,
    ) -> None:
        cfg = self.accounts.get(account)
        smtp = cfg.smtp if cfg is not None else None
        if smtp is None:
            reason = f"account {account!r} is not configured for sending (no such account or no smtp:)"
            while queue.rows:
                await self._settle(queue.rows.popleft(), Outcome("dead", error=reason), unsettled, stats, recorder)
            return
        workers = min(smtp.connections, len(queue.rows))
        warm = self._warm.pop(account, [])
        conns = warm[:workers] + [self._connection(account, smtp) for _ in range(workers - len(warm))]
        for extra in warm[workers:]:
            self.connections_opened += extra.connects
            await extra.close()
        async with asyncio.TaskGroup() as group:
            for conn in conns:
                group.create_task(self._worker(conn, queue, unsettled, stats, recorder))

    async def _next(self, queue: _AccountQueue, unsettled: dict[int, OutboxItem]) -> OutboxItem | None:
        """The account's next row; claims its next batch when the queue ran dry (None: all done).

        The next claim starts in the background once the queue is half empty, so the
        connections rarely stand idle waiting for one (a claim is a transaction with a
        commit: tens of ms, i.e. dozens of messages)."""
        if self._stop is not None and self._stop.is_set():
            queue.exhausted = True  # stopping: rows not yet started are handed back
            return None
        handed = self._take_handed(queue.account) if self._handed else []
        for row in handed:  # submitted while this drain runs: sent by its connections
            unsettled[row.id] = row
        queue.rows.extend(handed)
        if self._lost:  # rows another replica took over (the heartbeat found): not sent here
            dropped = [row for row in queue.rows if row.id in self._lost]
            for row in dropped:
                queue.rows.remove(row)
                unsettled.pop(row.id, None)
            self._lost.difference_update(row.id for row in dropped)
        while not queue.rows:
            if queue.exhausted:
                return None
            claiming = self._claim(queue, unsettled)
            try:
                await asyncio.shield(claiming)  # a cancelled worker must not cancel the claim
            finally:
                if queue.claiming is claiming and claiming.done():
                    queue.claiming = None
        item = queue.rows.popleft()
        if len(queue.rows) < self.policy.batch_size // 2 and not queue.exhausted:
            self._claim(queue, unsettled)
        return item

    def _claim(self, queue: _AccountQueue, unsettled: dict[int, OutboxItem]) -> asyncio.Future[None]:
        """The account's claim in progress, started now if there is none."""
        finished = queue.claiming is not None and queue.claiming.done() and not queue.claiming.cancelled()
        if finished and queue.claiming.exception() is None:  # type: ignore[union-attr]
            queue.claiming = None  # a finished prefetch; a failed one is raised by its next waiter
        if queue.claiming is None:
            queue.claiming = asyncio.ensure_future(self._claim_more(queue, unsettled))
        return queue.claiming

    async def _claim_more(self, queue: _AccountQueue, unsettled: dict[int, OutboxItem]) -> None:
        items = await store_call(
            self.outbox.claim_due,
            now=self.clock(),
            limit=self.policy.batch_size,
            lease=self.lease,
            account=queue.account,
        )
        queue.exhausted = not items
        # A row this drain holds whose lease ran out before its turn (a long merge on a slow
        # server) is claimed again: it is already queued here, so it must not be queued twice.
        items = [item for item in items if item.id not in unsettled]
        for item in items:
            unsettled[item.id] = item
        queue.rows.extend(items)

    async def _worker(
        self,
        conn: SmtpConnection,
        queue: _AccountQueue,
        unsettled: dict[int, OutboxItem],
        stats: DrainStats,
        recorder: _Recorder,
    ) -> None:
        """Send rows one after another over one reused connection.

        A row's result is committed while the next row is being sent (a commit is an fsync:
        waiting for it before each send would halve throughput), but never more than one:
        at most two sent-but-unrecorded rows per connection if the process dies."""
        recording: asyncio.Future[None] | None = None
        try:
            while (item := await self._next(queue, unsettled)) is not None:
                try:
                    await conn.connect()
                except Exception as exc:
                    # The account can't be reached or logged in to: same verdict for all
                    # its waiting rows, taken from the queue so sibling workers stop too
                    # (and claim no more for it in this drain).
                    rows = [item, *queue.rows]
                    queue.rows.clear()
                    queue.exhausted = True
                    if recording is not None:
                        await recording
                    for row in rows:
                        await self._settle(row, self._decide(row, exc), unsettled, stats, recorder)
                    return
                try:
                    result: SendResult | BaseException = await send_each(conn, self.return_paths(item), item.raw)
                except PostroomError as exc:
                    result = exc
                except Exception as exc:  # a bug, not the server: kill this row, keep draining
                    log.exception("unexpected error sending", outbox_id=item.id)
                    result = exc
                if recording is not None:
                    await recording  # the previous row's result is committed (or this raises)
                recording = asyncio.ensure_future(
                    self._settle(item, self._decide(item, result), unsettled, stats, recorder)
                )
            if recording is not None:
                await recording
        except asyncio.CancelledError:
            conn.abort()  # no QUIT round trip while shutting down
            raise
        finally:
            if recording is not None and not recording.done():
                # A sent row's result is still being written: let it land (the write itself
                # is shielded in the recorder) before the drain hands unsettled rows back.
                await asyncio.wait([recording])
            await conn.close()
            self.connections_opened += conn.connects

    def _decide(self, item: OutboxItem, result: SendResult | BaseException) -> Outcome:
        return decide(item, result, now=self.clock(), policy=self.policy)

    async def _settle(
        self,
        item: OutboxItem,
        outcome: Outcome,
        unsettled: dict[int, OutboxItem],
        stats: DrainStats,
        recorder: _Recorder,
    ) -> None:
        """Write the outcome, then move on. The write is not cancelled with the worker, so a
        message that went out is recorded even on shutdown; the worker sends one more row
        while this one is committed, no further (see _worker).

        A store outage does not end the drain: the outcome is written again until the store
        answers. Meanwhile the row stays in ``unsettled`` (this drain's heartbeat renews its
        lease whenever the store answers), so it is never handed back nor left to run out
        and be sent again while this process lives."""
        settlement = self._settlement(item, outcome)
        waited = 0
        self._recording.add(item.id)
        try:
            while True:
                try:
                    await recorder.record(settlement)
                    break
                except StoreUnavailable as exc:
                    if waited == 0:
                        log.warning(
                            "outcome not recorded: the store is unavailable; "
                            "kept in memory and written when it answers",
                            outbox_id=item.id,
                            outcome=settlement.kind,
                            error=str(exc),
                        )
                    waited += 1
                    await asyncio.sleep(min(SETTLE_RETRY_CAP, 0.1 * 2**waited))
            if waited:
                log.info("outcome recorded after the store came back", outbox_id=item.id, tries=waited + 1)
            unsettled.pop(item.id, None)
        finally:
            self._recording.discard(item.id)
        setattr(stats, outcome.kind, getattr(stats, outcome.kind) + 1)
        fields = dict(outbox_id=item.id, account=item.account, message_id=item.message_id)
        if outcome.kind == "sent" and outcome.refused:  # told: someone did not get it
            log.warning(
                "message sent; some recipients refused",
                **fields,
                delivered=len(outcome.delivered),
                refused=dict(outcome.refused),
                see="postroom outbox",
            )
        elif outcome.kind == "sent":
            log.info("message sent", **fields, delivered=len(outcome.delivered))
        elif outcome.kind == "deferred":
            log.warning(
                "message deferred",
                **fields,
                retry_at=outcome.retry_at,
                error=outcome.error,
                remaining=outcome.remaining,
            )
        elif outcome.kind == "held":  # the account's one error line said why, and what to run
            log.info("message held until the account signs in again", **fields, retry_at=outcome.retry_at)
        else:
            log.error("message dead", **fields, error=outcome.error)
        if self.on_result is not None:
            try:
                self.on_result(outcome.kind, item)
            except Exception:  # a metrics hook must never stop delivery
                log.exception("on_result hook failed", outbox_id=item.id)
        if outcome.refused and self.on_refused is not None:
            try:
                self.on_refused(item.account, item.origin or "-", len(outcome.refused))
            except Exception:
                log.exception("on_refused hook failed", outbox_id=item.id)

    def _settlement(self, item: OutboxItem, outcome: Outcome) -> Settlement:
        kind = outcome.kind
        if kind in ("deferred", "held") and outcome.retry_at is None:
            kind = "dead"  # decide() always sets retry_at; never leave a row without a next try
        return Settlement(
            kind,
            item,
            self.clock(),
            delivered=outcome.delivered,
            refused=outcome.refused,
            error=outcome.error or ("" if kind == "deferred" else "unknown error"),
            retry_at=outcome.retry_at,
            remaining=outcome.remaining,
        )

    def _record_many(self, settlements: list[Settlement]) -> None:
        if self.suppress is not None:
            # Before the results: a crash between the two sends the row again, refused again,
            # and the suppression (recorded once per try) is not lost.
            for s in settlements:
                if s.refused:
                    self.suppress(s.item, s.refused, s.now)
        self.outbox.settle_many(settlements)

    # -- the loop ------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Drain until stop is set; between drains sleep until the next row is due or wake()."""
        self._running, self._stop = True, stop
        try:
            await self._run(stop)
        finally:
            self._running, self._stop = False, None
            left = self._take_handed()
            if left:  # handed over but never taken by a drain: due again at once
                await asyncio.shield(store_call(self.outbox.release, left, now=self.clock()))
                log.info("outbox rows released", count=len(left))

    async def _run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            try:
                stats = await self.drain_once()
            except Exception:
                log.exception("outbox drain failed; trying again shortly")
                await self._idle(stop, ERROR_PAUSE)
                continue
            if self._warm and not self._handed:
                # Prewarmed for rows a drain already took with its own connections: close them
                # rather than leave them to the server's idle timeout.
                await self.close_idle()
            if stats.total >= self.policy.batch_size:
                continue  # a full batch: more is probably due right now
            try:
                due = await store_call(self.outbox.next_due)
            except Exception:
                log.exception("outbox next_due failed")
                due = None
            await self._idle(stop, self._wait_for(due))

    def _wait_for(self, due: datetime | None) -> timedelta:
        if due is None:
            return self.max_idle
        return min(max(due - self.clock(), timedelta(0)), self.max_idle)

    async def _idle(self, stop: asyncio.Event, delay: timedelta) -> None:
        if delay <= timedelta(0) or stop.is_set() or self._wake.is_set():
            return
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waiters, timeout=delay.total_seconds(), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
