"""The loop every mailbox watcher shares: one task per (account, folder) that finds new mail
and hands it to the executor.

Each watcher owns its own connection, so one account's trouble never stalls another's.
Transient failures reconnect with exponential backoff; permanent ones (credentials, TLS) are
logged loudly and retried slowly, since a human may fix them while we run. With replicas only
the holder of a watch's lease works it (``watch_lease``); stopping ends the session at the
next batch boundary.

What is protocol-specific (what counts as new, how it is fetched, the checkpoint) lives in
``imap_watcher`` and ``pop3_watcher``: a watcher subclass runs one connected ``_session`` and
builds ``Entry`` rows; ``_evaluate`` and ``_hand_over`` here record and hand them over.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

import structlog

from postroom.action_kinds import MailboxOps
from postroom.clock import utcnow
from postroom.errors import OAuth2Error, PermanentError, is_transient
from postroom.incoming.balance import FolderBalance
from postroom.incoming.bounces import Bounce, BounceIntake
from postroom.incoming.mailbox import BatchHandler, InboundItem, ItemOutcome, Settlement
from postroom.incoming.message import ParsedMessage
from postroom.incoming.rules import RuleSet
from postroom.incoming.watch_lease import LEASE_TTL, WatchLease
from postroom.retry import sleep_or_stop
from postroom.store.calls import store_call
from postroom.store.inbound import (
    DONE,
    FAILED,
    FINISHED,
    SET_ASIDE,
    CheckpointWrite,
    InboundStore,
)
from postroom.store.leases import WatchLeases

log = structlog.get_logger(__name__)

BATCH = 2000  # messages per batch when only headers are fetched (one FETCH/MOVE chunk each)
BACKOFF_START = 1.0
BACKOFF_CAP = 300.0  # transient trouble: 1 s, 2 s, 4 s … 5 min
PERMANENT_RETRY = 900.0  # bad password, untrusted certificate: try again every 15 min


class Backoff:
    def __init__(self) -> None:
        self.delay = BACKOFF_START

    def after(self, exc: BaseException) -> float:
        if isinstance(exc, PermanentError):
            return PERMANENT_RETRY
        delay, self.delay = self.delay, min(BACKOFF_CAP, self.delay * 2)
        return delay

    def reset(self) -> None:
        self.delay = BACKOFF_START


def _outcome_status(outcome: ItemOutcome | None) -> tuple[str, str | None]:
    if outcome is None:
        return FAILED, "the handler returned no outcome for this message"
    if outcome.done:
        return DONE, None
    return (FAILED if outcome.transient else SET_ASIDE), outcome.error


def _ready(msg: ParsedMessage) -> Callable[[], ParsedMessage]:
    return lambda: msg


def _candidates(intake: BounceIntake, entries: Sequence[Entry]) -> tuple[dict[str, ParsedMessage], list[Entry]]:
    """Each entry's parsed message, and the entries whose headers look like a bounce report
    (blocking: message-sized work). One that does not parse is left out (`_evaluate` reports it)."""
    parsed: dict[str, ParsedMessage] = {}
    maybe: list[Entry] = []
    for entry in entries:
        try:
            msg = parsed[entry.key] = entry.build()
        except Exception:  # unreadable: _evaluate reports it
            continue
        if intake.candidate(msg):
            maybe.append(entry._replace(build=_ready(msg)))
    return parsed, maybe


class Entry(NamedTuple):
    """One fetched message on its way to evaluation (a tuple: thousands per pass)."""

    key: str
    build: Callable[[], ParsedMessage]
    begin: dict[str, Any]  # the inbound row's identity: uidvalidity + uid, or uidl
    ident: dict[str, Any]  # InboundItem fields: uid or uidl, raw


@dataclass(frozen=True)
class WatcherHooks:
    """Callbacks for metrics; the daemon passes them in so this module imports no metrics."""

    processed: Callable[[str, str, str], None] = lambda account, folder, result: None
    ok: Callable[[str, str, datetime], None] = lambda account, folder, at: None


class WatchState(StrEnum):
    """What a watcher is doing now, as the console shows it."""

    STARTING = "starting"
    IDLE = "IDLE"
    POLLING = "polling"
    STANDING_BY = "standing by"  # another replica holds this watch's lease
    FAILING = "failing"


class Watcher:
    """What IMAP and POP3 watchers share: the reconnect loop, evaluating, handing over."""

    kind = ""
    waits_with = WatchState.POLLING  # what a finished pass waits in (IMAP: IDLE when the server has it)

    def __init__(
        self,
        account_name: str,
        ruleset: RuleSet,
        handler: BatchHandler,
        inbound: InboundStore,
        *,
        folder: str,
        clock: Callable[[], datetime] = utcnow,
        dry_run: bool = False,
        batch_size: int = BATCH,
        hooks: WatcherHooks | None = None,
        leases: WatchLeases | None = None,
        lease_ttl: float = LEASE_TTL,
        balance: FolderBalance | None = None,
        bounces: BounceIntake | None = None,
    ):
        self.hooks = hooks or WatcherHooks()
        # This folder is the account's bounce folder: bounce reports for our mail are taken
        # out of each batch before the rules (postroom.incoming.bounces). Not in a dry run.
        self.bounces = bounces if not dry_run else None
        self.ready = False  # set after the first full pass over the folder (for /readyz)
        # For the console: read from the loop, written only by this watcher's task.
        self.state = WatchState.STARTING
        self.last_ok: datetime | None = None
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None
        self.account = account_name
        self.folder = folder
        self.rules = ruleset
        self.handler = handler
        self.inbound = inbound
        self.clock = clock
        self.dry_run = dry_run
        self.batch_size = batch_size
        self.log = log.bind(account=account_name, folder=folder, via=self.kind)
        # replicas: only the holder of this watch's lease works it (postroom.incoming.watch_lease)
        self.lease = (
            WatchLease(leases, self.watch_name(), self.log, ttl=lease_ttl, clock=clock, balance=balance)
            if leases
            else None
        )

    def watch_name(self) -> str:
        return f"{self.account}/{self.folder}"

    async def run(self, stop: asyncio.Event) -> None:
        backoff = Backoff()
        try:
            while not stop.is_set():
                working = stop
                if self.lease is not None:
                    if not await self.lease.acquire(stop, on_standby=self._standing_by):
                        break
                    working = self.lease.ended  # set on stop, and when the lease is lost
                try:
                    await self._session(working, backoff)
                    continue
                except asyncio.CancelledError:
                    raise
                except OAuth2Error as exc:
                    self._failed(exc)
                    # The account has stopped (auth/accounts.py logged the one error that says
                    # what to run); a reload or restart after the new sign-in starts it again.
                    self.log.info("watcher waits for the account to sign in again", reason=exc.error)
                    delay = backoff.after(exc)
                except PermanentError as exc:
                    self._failed(exc)
                    self.log.error(
                        "watcher cannot work; fix the account settings", error=str(exc), retry_in=PERMANENT_RETRY
                    )
                    delay = backoff.after(exc)
                except Exception as exc:
                    self._failed(exc)
                    delay = backoff.after(exc)
                    if is_transient(exc):
                        self.log.warning("watcher connection trouble; reconnecting", error=str(exc), retry_in=delay)
                    else:
                        self.log.exception("watcher cycle failed; reconnecting", retry_in=delay)
                await sleep_or_stop(working, delay)
        finally:
            if self.lease is not None:
                await self.lease.release()

    def _failed(self, exc: BaseException) -> None:
        self.state = WatchState.FAILING
        self.last_error = (str(exc) or type(exc).__name__)[:500]
        self.last_error_at = self.clock()

    def _standing_by(self) -> None:
        """Another replica works this folder: this watcher is healthy, just not the one."""
        self.ready = True
        self.state = WatchState.STANDING_BY
        self.hooks.ok(self.account, self.folder, self.clock())

    async def _session(self, stop: asyncio.Event, backoff: Backoff) -> None:
        raise NotImplementedError

    def _pass_done(self) -> None:
        """A full pass over the folder succeeded."""
        self.ready = True
        self.state = self.waits_with
        self.last_ok = self.clock()
        self.hooks.ok(self.account, self.folder, self.last_ok)

    def _key(self, ident: int | str, uidvalidity: int | None = None) -> str:
        raise NotImplementedError

    async def _unfetchable(self, key: str, begin: dict[str, Any], exc: Exception) -> bool:
        """Fetching this one message broke the connection: count it on its inbound row (so the
        count survives restarts) as a failure, retried with backoff and set aside after
        ``max_attempts``, so the rest of the folder is not stuck behind it. True when written."""
        if self.dry_run:
            return False
        row = dict(account=self.account, folder=self.folder, message_id=None, **begin)
        why = f"fetch: the connection broke on this message: {exc!r}"
        finished = await store_call(self.inbound.finish_many, [(key, FAILED, why)], now=self.clock(), rows={key: row})
        stored = finished[key]
        self.hooks.processed(self.account, self.folder, stored)
        if stored == SET_ASIDE:
            self.log.error("message set aside: fetching it breaks the connection every time", key=key, error=repr(exc))
        else:
            self.log.warning(
                "fetching this message breaks the connection; retried later, the rest go on", key=key, error=repr(exc)
            )
        return True

    async def _take_bounces(
        self, entries: Sequence[Entry], fetch_raw: Callable[[list[Entry]], Awaitable[dict[str, bytes]]]
    ) -> list[Entry]:
        """The entries left for the rules once bounce reports for our mail are consumed: those
        are recorded (``BounceIntake.consume``) and their inbound rows finished as done here,
        so no rule acts on them. ``fetch_raw`` reads candidates whole (key -> bytes)."""
        intake = self.bounces
        if intake is None or not entries:
            return list(entries)
        # Headers (or whole messages, when a rule reads the body) are parsed and looked at off
        # the loop: anyone can write them.
        parsed, maybe = await asyncio.to_thread(_candidates, intake, entries)
        # Parsed once: the rules reuse it.
        entries = [e._replace(build=_ready(parsed[e.key])) if e.key in parsed else e for e in entries]
        if maybe:
            existing = await store_call(self.inbound.statuses, [e.key for e in maybe])
            maybe = [e for e in maybe if existing.get(e.key) not in FINISHED]
        if not maybe:
            return entries
        raws = await fetch_raw(maybe)
        todo: list[tuple[Entry, Bounce]] = []
        for e in maybe:
            if e.key in raws:  # parsed in the intake's own threads, within its time budget
                bounce = await intake.read(e.key, raws[e.key])
                if bounce is not None:
                    todo.append((e, bounce))
        consumed = await self.inbound.calls.run(self._consume, intake, todo, parsed) if todo else {}
        if consumed:
            rows = {
                e.key: dict(account=self.account, folder=self.folder, message_id=parsed[e.key].message_id, **e.begin)
                for e, _ in todo
                if e.key in consumed
            }
            await store_call(
                self.inbound.finish_many,
                [(key, DONE, reason) for key, reason in consumed.items()],
                now=self.clock(),
                rows=rows,
            )
            for _key in consumed:
                self.hooks.processed(self.account, self.folder, "bounce")
        return [e for e in entries if e.key not in consumed]

    @staticmethod
    def _consume(
        intake: BounceIntake, todo: list[tuple[Entry, Bounce]], parsed: dict[str, ParsedMessage]
    ) -> dict[str, str]:
        # A store error raises: the batch is taken again (never handed to the rules instead).
        consumed: dict[str, str] = {}
        for entry, bounce in todo:
            reason = intake.consume(entry.key, parsed[entry.key], bounce)
            if reason is not None:
                consumed[entry.key] = reason
        return consumed

    async def _evaluate(
        self, entries: Sequence[Entry]
    ) -> tuple[list[InboundItem], dict[str, dict[str, Any]], list[tuple[str, str, str | None]]]:
        """Parse and evaluate a batch into items for the handler, with one store read for what
        was finished before. Returns the items, every entry's inbound row identity and the rows
        finished without the handler (no rule matched, failed here), for ``_hand_over`` to
        commit with the items' outcomes; with no items they are committed here (and not returned). Messages
        finished before, and everything in a dry run, are not handed over. (No ``pending`` row
        is written first: nothing reads one, a crash re-fetches from the checkpoint anyway, and
        on a big folder that write was a tenth of the pass.)"""
        now = self.clock()
        parsed: dict[str, ParsedMessage] = {}
        finished: list[tuple[str, str, str | None]] = []
        unreadable: list[tuple[str, str, str | None]] = []
        for entry in entries:
            try:
                parsed[entry.key] = entry.build()
            except Exception as exc:
                self.log.exception("message failed before its actions", key=entry.key)
                unreadable.append((entry.key, FAILED, f"evaluate: {exc!r}"))
        rows = {
            e.key: dict(
                account=self.account,
                folder=self.folder,
                message_id=parsed[e.key].message_id if e.key in parsed else None,
                **e.begin,
            )
            for e in entries
        }
        existing = {} if self.dry_run else await store_call(self.inbound.statuses, list(rows))
        finished.extend(row for row in unreadable if existing.get(row[0]) not in FINISHED)
        items: list[InboundItem] = []
        for entry in entries:
            msg = parsed.get(entry.key)
            if msg is None or existing.get(entry.key) in FINISHED:
                continue
            try:
                planned = self.rules.evaluate(msg, now=now)
            except Exception as exc:
                self.log.exception("message failed before its actions", key=entry.key)
                finished.append((entry.key, FAILED, f"evaluate: {exc!r}"))
                continue
            if self.dry_run:
                for action in planned:
                    self.log.info(
                        f"would {action.kind}",
                        key=entry.key,
                        rule=action.rule,
                        params=action.params,
                        subject=msg.subject,
                    )
                if not planned:
                    self.log.info("would do nothing: no rule matches", key=entry.key, subject=msg.subject)
            elif not planned:
                finished.append((entry.key, DONE, None))
                self.hooks.processed(self.account, self.folder, "no_match")
            else:
                items.append(InboundItem(key=entry.key, message=msg, planned=planned, **entry.ident))
        if not self.dry_run and not items:
            await store_call(self.inbound.finish_many, finished, now=self.clock(), rows=rows)
            finished = []
        return items, rows, finished

    async def _hand_over(
        self,
        mailbox: MailboxOps | None,
        items: Sequence[InboundItem],
        rows: dict[str, dict[str, Any]],
        finished: Sequence[tuple[str, str, str | None]] = (),
        checkpoint: Callable[[], CheckpointWrite | None] = lambda: None,
    ) -> dict[str, str]:
        """handle_batch, then finish each row. A batch that raises is retried item by item so
        one poisonous message fails alone. Returns key -> stored status.

        One transaction at the end: the items' rows, the rows ``_evaluate`` finished without
        the handler, the handler's last ledger outcomes (``Settlement``) and ``checkpoint()``
        when it gives one."""
        if not items:
            if finished:
                await store_call(self.inbound.finish_many, finished, now=self.clock(), rows=rows)
            return {}
        settle = Settlement() if getattr(self.handler, "settles_with_batch", False) else None
        try:
            if settle is not None:
                outcomes = await self.handler.handle_batch(  # type: ignore[call-arg]
                    self.account, self.folder, mailbox, items, settle=settle
                )
            else:
                outcomes = await self.handler.handle_batch(self.account, self.folder, mailbox, items)
        except Exception as exc:
            if finished:
                await store_call(self.inbound.finish_many, finished, now=self.clock(), rows=rows)
                finished = ()
            if len(items) == 1:
                self.log.error("handler failed for message", key=items[0].key, error=repr(exc))
                outcomes = {
                    items[0].key: ItemOutcome(
                        done=False, error=f"handler: {exc!r}", transient=not isinstance(exc, PermanentError)
                    )
                }
            else:
                self.log.warning(
                    "handler failed for a batch; handing items over one by one", count=len(items), error=repr(exc)
                )
                stored: dict[str, str] = {}
                for item in items:
                    stored.update(await self._hand_over(mailbox, [item], rows))
                return stored
        results = [(item.key, *_outcome_status(outcomes.get(item.key))) for item in items]
        stored = await store_call(
            self.inbound.finish_many,
            [*finished, *results],
            now=self.clock(),
            rows=rows,
            actions=settle.actions if settle is not None else (),
            checkpoint=checkpoint(),
        )
        for key, _status, error in results:
            self.hooks.processed(self.account, self.folder, stored[key])
            if stored[key] != DONE:
                self.log.warning("message not done", key=key, status=stored[key], error=error)
        return stored
