"""A job run: load its data, render one message (or one per row), store them in the outbox.

Building is all-or-nothing: if any row's message is refused (template error, CR/LF in a
subject, two addresses in one `to` entry), nothing of that run is enqueued and the run fails
naming the row — half a mail merge is worse than none, and the fix is in the data or template.

Enqueueing is idempotent per (job, fire time, row): a fire re-run after a crash adds only
what is missing, so every recipient gets the message once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from email.utils import formataddr, parseaddr
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from ..clock import utcnow
from ..config import Config, JobConfig
from ..errors import DataSourceError, MessageRefused, PostroomError, StoreUnavailable
from ..fire_lease import holding_fire
from ..mail.compose import compose_bytes, make_message_id, validate_address
from ..mail.headers import list_unsubscribe_headers, list_unsubscribe_problem
from ..mail.locale_filters import rendering_locale
from ..mail.templates import TemplateRenderer
from ..mail.verp import marker
from ..schedule.fires import RETRY
from ..store import NewMessage, Store
from ..store.calls import store_call
from .attachments import is_per_message, message_attachments, static_attachments
from .job_context import ROW, job_context
from .sender import OutboxSender
from .sources import load_data

log = structlog.get_logger(__name__)

LOGGED_SUPPRESSED = 50  # addresses a run's "suppressed recipients" line names (the count is whole)
# Rows rendered per step of a streamed build: its messages (raw bytes) are what is held at once.
CHUNK_ROWS = 500


@dataclass
class BuiltRun:
    job: str
    messages: list[NewMessage] = field(default_factory=list)
    skipped: str | None = None  # why nothing is sent (skip_if_empty)
    suppressed: int = 0  # recipients left out: on the account's suppression list (hard bounces)


@dataclass
class BuiltChunk:
    """One step of a streamed build: the messages of some rows, in row order."""

    messages: list[NewMessage]
    first: int  # the index (0-based) of its first message in the run
    total: int  # messages the whole run makes


class JobRunner:
    def __init__(
        self,
        config: Config,
        renderer: TemplateRenderer,
        store: Store | None,
        *,
        wake_sender: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = utcnow,
        on_run: Callable[[str, str, float], None] = lambda job, status, seconds: None,
        sender: OutboxSender | None = None,
        on_suppressed: Callable[[str, str, int], None] = lambda job, account, count: None,
    ):
        self.on_run = on_run  # (job, status, seconds) — metrics
        self.on_suppressed = on_suppressed  # (job, account, recipients left out) — metrics
        # The daemon's sender: a run's messages are stored already leased to it and handed
        # over in memory (no claim reading them back), its connections opened while rendering.
        self.sender = sender
        self.config = config
        self.renderer = renderer
        self._store = store  # None: this runner only builds (`send --dry-run` opens no store)
        self.wake_sender = wake_sender
        self.clock = clock

    # -- building (pure apart from loading data) ---------------------------------------------
    async def build(
        self,
        job_id: str,
        *,
        key_prefix: str,
        now: datetime,
        fire_time: datetime | None = None,
        to_override: Sequence[str] | None = None,
    ) -> BuiltRun:
        job = self._job(job_id)
        data = await load_data(job.data)
        if job.skip_if_empty and not data.get(job.skip_if_empty):
            return BuiltRun(job=job_id, skipped=f"{job.skip_if_empty} has no rows")
        # Rendering hundreds of rows is CPU work: keep the event loop free for IDLE and HTTP.
        messages = await asyncio.to_thread(
            self.render_messages,
            job_id,
            job,
            data,
            key_prefix=key_prefix,
            now=now,
            fire_time=fire_time,
            to_override=to_override,
        )
        return BuiltRun(job=job_id, messages=messages)

    async def build_chunks(
        self,
        job_id: str,
        *,
        key_prefix: str,
        now: datetime,
        to_override: Sequence[str] | None = None,
        chunk_rows: int = CHUNK_ROWS,
    ) -> tuple[str | None, AsyncIterator[BuiltChunk]]:
        """The run's messages a chunk of rows at a time, for a consumer that writes them out
        as they come (`send --dry-run`): (why nothing is sent, or None; the chunks). Only a
        chunk's messages are held at once, not the whole merge's (100k rows: 340 MiB)."""
        job = self._job(job_id)
        data = await load_data(job.data)
        if job.skip_if_empty and not data.get(job.skip_if_empty):
            return f"{job.skip_if_empty} has no rows", _no_chunks()
        total = len(data[job.for_each]) if job.for_each and isinstance(data.get(job.for_each), list) else 1

        async def chunks() -> AsyncIterator[BuiltChunk]:
            for first in range(0, total, chunk_rows):
                messages = await asyncio.to_thread(
                    self.render_messages,
                    job_id,
                    job,
                    data,
                    key_prefix=key_prefix,
                    now=now,
                    fire_time=None,
                    to_override=to_override,
                    rows=range(first, min(first + chunk_rows, total)),
                )
                yield BuiltChunk(messages=messages, first=first, total=total)

        return None, chunks()

    def render_messages(
        self,
        job_id: str,
        job: JobConfig,
        data: Mapping[str, Any],
        *,
        key_prefix: str,
        now: datetime,
        fire_time: datetime | None,
        to_override: Sequence[str] | None,
        only_row: int | None = None,
        rows: range | None = None,
    ) -> list[NewMessage]:
        """The run's messages; ``only_row``: just that row's (`postroom preview` shows one);
        ``rows``: those rows' (a streamed build's chunk)."""
        with rendering_locale(self.config.job_locale(job)):  # for money, number and date filters
            return self._render_rows(
                job_id,
                job,
                data,
                key_prefix=key_prefix,
                now=now,
                fire_time=fire_time,
                to_override=to_override,
                only_row=only_row,
                wanted=rows,
            )

    def _render_rows(
        self,
        job_id: str,
        job: JobConfig,
        data: Mapping[str, Any],
        *,
        key_prefix: str,
        now: datetime,
        fire_time: datetime | None,
        to_override: Sequence[str] | None,
        only_row: int | None,
        wanted: range | None = None,
    ) -> list[NewMessage]:
        account = self.config.accounts[job.account]
        tz = ZoneInfo(self.config.job_timezone(job))
        local_now = now.astimezone(tz)
        base = job_context(data, job_id, local_now, (fire_time or now).astimezone(tz))
        if job.for_each:
            rows = data[job.for_each]
            if not isinstance(rows, list):
                raise DataSourceError("for_each needs a list of rows", source=job.for_each)
        else:
            rows = [None]
        sender = formataddr((account.name, account.address)) if account.name else account.address
        verp = account.bounces if account.bounces is not None and account.bounces.verp else None
        domain = account.address.rpartition("@")[2].strip(">").strip() or "localhost"
        shared = static_attachments(job.attachments, data)
        per_message = any(is_per_message(att) for att in job.attachments)
        folder = self.config.attachments_dir or Path(".")
        out: list[NewMessage] = []
        for i in wanted if wanted is not None else range(len(rows)):
            row = rows[i]
            if only_row is not None and i != only_row:
                continue
            context = {**base, ROW: row} if job.for_each else base
            where = f"jobs.{job_id}" + (f" row {i}" if job.for_each else "")
            try:
                rendered = self.renderer.render(job.template, context)
                to = self._recipients(job.to, context, f"{where}.to") if to_override is None else list(to_override)
                cc = self._recipients(job.cc, context, f"{where}.cc") if to_override is None else []
                bcc = self._recipients(job.bcc, context, f"{where}.bcc") if to_override is None else []
                reply_to = self._rendered(job.reply_to, context, f"{where}.reply_to")
                attachments = shared
                if per_message:
                    attachments = shared + message_attachments(
                        job.attachments, data, folder, partial(self._render_in, context), where=where
                    )
                message_id = make_message_id(domain)
                raw = compose_bytes(
                    sender=sender,
                    to=to,
                    cc=cc,
                    subject=rendered.subject,
                    text=rendered.text,
                    html=rendered.html,
                    message_id=message_id,
                    date=now,
                    reply_to=reply_to or None,
                    attachments=attachments,
                    extra_headers=self._extra_headers(job, context, where),
                )
            except MessageRefused as exc:
                raise MessageRefused(f"{where}: {exc}") from exc
            except DataSourceError as exc:  # a per-row attachment file that isn't there
                raise DataSourceError(f"{where}: {exc}", source=exc.source) from exc
            # With VERP the sender signs a return path per recipient when it sends (mail.verp).
            envelope_from = account.address if verp is None else marker(account.address, verp.delimiter)
            out.append(
                NewMessage(
                    dedup_key=f"{key_prefix}:{i}",
                    message_id=message_id,
                    account=job.account,
                    envelope_from=envelope_from,
                    recipients=[*to, *cc, *bcc],
                    raw=raw,
                    origin=job_id,
                )
            )
        return out

    def _render_in(self, context: Mapping[str, Any], source: str, what: str) -> str:
        return self.renderer.render_string(source, context, what=what)

    def _rendered(self, value: str | None, context: Mapping[str, Any], what: str) -> str | None:
        """A config value that may be a template, rendered for this message (stripped)."""
        if value is None or "{" not in value:
            return value
        return self._render_in(context, value, what).strip()

    def _extra_headers(self, job: JobConfig, context: Mapping[str, Any], where: str) -> dict[str, str]:
        """The job's ``headers:`` and List-Unsubscribe, rendered for this message. An empty
        value leaves its header out (as a row without a cc address has no Cc)."""
        out: dict[str, str] = {}
        for name, value in job.headers.items():
            rendered = self._rendered(value, context, f"{where}.headers.{name}")
            if rendered:
                out[name] = rendered
        unsubscribe = job.list_unsubscribe
        if unsubscribe is not None:
            url = self._rendered(unsubscribe.url, context, f"{where}.list_unsubscribe.url") or None
            mailto = self._rendered(unsubscribe.mailto, context, f"{where}.list_unsubscribe.mailto") or None
            problem = list_unsubscribe_problem(url, mailto, one_click=unsubscribe.one_click)
            if problem is not None:
                raise MessageRefused(problem)
            out.update(list_unsubscribe_headers(url, mailto, one_click=unsubscribe.one_click))
        return out

    def _recipients(self, entries: Sequence[str], context: Mapping[str, Any], what: str) -> list[str]:
        out = []
        for j, entry in enumerate(entries):
            value = entry
            if "{" in entry:
                value = self.renderer.render_string(entry, context, what=f"{what}[{j}]").strip()
            if not value:
                continue  # a row without an address is skipped for that field, like an empty cc
            out.append(validate_address(value, what=f"{what}[{j}]"))
        return out

    def _job(self, job_id: str) -> JobConfig:
        try:
            return self.config.jobs[job_id]
        except KeyError:
            known = ", ".join(sorted(self.config.jobs)) or "none"
            raise PostroomError(f"no job named {job_id!r}; jobs: {known}") from None

    # -- running ---------------------------------------------------------------------------
    @property
    def store(self) -> Store:
        if self._store is None:
            raise PostroomError("this job runner was made without a store; it can build, not run")
        return self._store

    async def _leave_out_suppressed(self, built: BuiltRun, bound: Any) -> BuiltRun:
        """The run without the account's suppressed addresses (hard bounces): a message keeps
        its other recipients (its headers unchanged), one left with none is not queued. Each
        address left out is logged and counted; `postroom suppressions` lists them."""
        account = self.config.jobs[built.job].account
        suppressed = await store_call(self.store.bounces.suppressed, account)
        if not suppressed:
            return built
        kept: list[NewMessage] = []
        left_out: list[str] = []
        for message in built.messages:
            rest = [r for r in message.recipients if parseaddr(r)[1].lower() not in suppressed]
            left_out.extend(r for r in message.recipients if r not in rest)
            if rest:
                kept.append(message if len(rest) == len(message.recipients) else replace(message, recipients=rest))
        if not left_out:
            return built
        self.on_suppressed(built.job, account, len(left_out))
        bound.warning(
            "suppressed recipients left out of the run",
            account=account,
            count=len(left_out),
            recipients=left_out[:LOGGED_SUPPRESSED],
            messages_dropped=len(built.messages) - len(kept),
            see="postroom suppressions",
        )
        return replace(built, messages=kept, suppressed=len(left_out))

    async def run_fire(self, job_id: str, fire_time: datetime, trigger: str) -> None:
        """The scheduler's callback: claim the fire, build, enqueue, record. Never raises."""
        runs = self.store.runs
        now = self.clock()
        claimed = await store_call(runs.claim_fire, job_id, fire_time, now=now, again=trigger == RETRY)
        if not claimed:
            log.info("fire already claimed", job=job_id, fire_time=fire_time.isoformat())
            return
        key = f"job:{job_id}:{fire_time.astimezone(ZoneInfo('UTC')).strftime('%Y%m%dT%H%M%SZ')}"
        async with holding_fire(runs, job_id, fire_time, clock=self.clock):
            stored = await store_call(runs.stored_messages, key)
            if stored:  # a try that died after storing them: record what is there, no new render
                await self._record_stored(job_id, fire_time, trigger, now=now, messages=stored)
                return
            await self._run(job_id, key_prefix=key, fire_time=fire_time, trigger=trigger, now=now, claim=True)

    async def _record_stored(
        self, job_id: str, fire_time: datetime, trigger: str, *, now: datetime, messages: int
    ) -> None:
        """A fire taken over whose messages an earlier try stored: they are sent (claimed from
        the outbox like any queued row); this run only records the fire done."""
        runs = self.store.runs
        log.info(
            "fire resumed from its stored messages", job=job_id, fire_time=fire_time.isoformat(), messages=messages
        )
        run_id = await store_call(runs.start_run, job_id, fire_time=fire_time, trigger=trigger, now=now)
        done_at = self.clock()
        await store_call(runs.finish_run, run_id, now=done_at, status="done", messages=messages)
        await store_call(runs.finish_fire, job_id, fire_time, now=done_at, status="done")
        self.wake_sender()

    async def run_now(self, job_id: str, *, key_prefix: str, to_override: Sequence[str] | None = None) -> BuiltRun:
        """A manual run (`postroom send`): recorded as a run, no fire claim."""
        return await self._run(
            job_id,
            key_prefix=key_prefix,
            fire_time=None,
            trigger="manual",
            now=self.clock(),
            claim=False,
            to_override=to_override,
        )

    async def _run(
        self,
        job_id: str,
        *,
        key_prefix: str,
        fire_time: datetime | None,
        trigger: str,
        now: datetime,
        claim: bool,
        to_override: Sequence[str] | None = None,
    ) -> BuiltRun:
        runs = self.store.runs
        run_id = await store_call(runs.start_run, job_id, fire_time=fire_time, trigger=trigger, now=now)
        bound = log.bind(job=job_id, trigger=trigger, fire_time=fire_time.isoformat() if fire_time else None)
        status, detail, built, store_lost = "failed", None, BuiltRun(job=job_id), False
        sender = self.sender if self.sender is not None and self.sender.accepts_handoff else None
        account = self.config.jobs[job_id].account if job_id in self.config.jobs else None
        warming = asyncio.create_task(sender.prewarm(account)) if sender and account else None
        try:
            built = await self.build(
                job_id, key_prefix=key_prefix, now=now, fire_time=fire_time, to_override=to_override
            )
            if not built.skipped:
                built = await self._leave_out_suppressed(built, bound)
            if built.skipped:
                status, detail = "skipped", built.skipped
                bound.info("job skipped", reason=built.skipped)
            elif sender is not None:
                items = await store_call(
                    self.store.outbox.enqueue_leased,
                    built.messages,
                    now=self.clock(),
                    lease=sender.lease,
                    keep=sender.handoff_limit,
                    run_id=run_id,
                )
                status = "done"
                bound.info("job run queued mail", messages=len(built.messages), new=len(items))
                if warming is not None:
                    await warming
                    warming = None
                sender.submit(items)
                self.wake_sender()  # rows of an earlier try of this fire (not handed) are claimed
            else:
                added = await store_call(self.store.outbox.enqueue, built.messages, now=self.clock(), run_id=run_id)
                status = "done"
                bound.info("job run queued mail", messages=len(built.messages), new=added)
                self.wake_sender()
        except StoreUnavailable:
            if claim:
                # Nothing is recorded (the store is away): the fire stays claimed by us and
                # `running`, the scheduler tries it again, and the outbox's dedup keeps a
                # second try from queueing what the first one did.
                store_lost = True
            raise
        except PostroomError as exc:
            detail = str(exc)
            bound.error("job run failed", error=detail)
            if not claim:
                raise
        except Exception as exc:  # a bug must not kill the scheduler; record it
            detail = f"{type(exc).__name__}: {exc}"
            bound.exception("job run crashed", error=detail)
            if not claim:
                raise
        finally:
            if warming is not None:  # nothing handed over: don't leave idle connections open
                warming.cancel()
                await asyncio.gather(warming, return_exceptions=True)
                await sender.close_idle(account)  # type: ignore[union-attr]
            done_at = self.clock()
            self.on_run(job_id, status, (done_at - now).total_seconds())
            if not store_lost:
                await store_call(
                    runs.finish_run, run_id, now=done_at, status=status, messages=len(built.messages), error=detail
                )
                if claim and fire_time is not None:
                    await store_call(runs.finish_fire, job_id, fire_time, now=done_at, status=status, detail=detail)
        return built


async def _no_chunks() -> AsyncIterator[BuiltChunk]:
    return
    yield  # an async generator that makes nothing
