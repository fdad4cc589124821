"""A job sent now, outside the daemon (`postroom send JOB`): one manual run, its messages sent
by a sender of its own (a small daemon for one job), waited for until each has an outcome.

What to say about it is the caller's: ``queued`` is told of the run's messages once they are
in the outbox (before they are sent), and ``SentNow`` holds the outcome. A running daemon needs
none of this for its own "run now" (the console's): its sender is always draining, so it only
hands the run's rows over (``JobRunner.run_now``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..auth.accounts import AccountLogins
from ..clock import utcnow
from ..config import Config, Settings
from ..mail.templates import TemplateRenderer
from ..store import Store
from ..store.calls import store_call
from ..store.outbox import OutboxItem
from .envelopes import given_verp_key, signed_return_paths
from .jobs import BuiltRun, JobRunner
from .refusals import suppressing
from .sender import OutboxSender
from .shown import message_state


@dataclass(frozen=True)
class SentNow:
    """What one `send` of a job got out."""

    job: str
    total: int = 0  # messages the run queued
    skipped: str | None = None  # why nothing was sent (skip_if_empty)
    counts: Counter[str] = field(default_factory=Counter)  # message state (sent, deferred, dead, held) -> how many
    refused: int = 0  # recipients the servers refused


async def send_now(
    settings: Settings,
    cfg: Config,
    renderer: TemplateRenderer,
    store: Store,
    logins: AccountLogins,
    job: str,
    *,
    to: Sequence[str] | None,
    queued: Callable[[BuiltRun], None],
) -> SentNow:
    """Run ``job`` once (recorded as a manual run) and send its messages here; returns when
    each has an outcome or the outbox has nothing more due. ``to`` replaces the recipients."""
    sender: OutboxSender | None = None
    warming: asyncio.Task[None] | None = None
    try:
        runner = JobRunner(cfg, renderer, store)
        wanted: set[str] = set()
        outcomes: dict[str, str] = {}  # message_id -> its latest result in this process

        def seen(kind: str, item: OutboxItem) -> None:
            if item.message_id in wanted:
                outcomes[item.message_id] = kind

        refused = Counter[str]()
        verp_key = await store_call(store.bounces.verp_key, given_verp_key(settings), now=utcnow())
        sender = OutboxSender(
            store.outbox,
            cfg.accounts,
            cfg.outbox,
            on_result=seen,
            logins=logins,
            on_refused=lambda account, origin, n: refused.update({"recipients": n}),
            suppress=suppressing(store.bounces),
            return_paths=signed_return_paths(verp_key),
        )
        # The SMTP handshakes (TCP, STARTTLS, AUTH per connection) overlap the rendering.
        warming = asyncio.create_task(sender.prewarm(cfg.jobs[job].account))
        built = await runner.run_now(job, key_prefix=f"manual:{job}:{uuid.uuid4().hex}", to_override=to)
        await warming
        if built.skipped:
            return SentNow(job, skipped=built.skipped)
        queued(built)
        total = len(built.messages)
        # The whole merge in one claim (up to 5,000 rows; the messages are in memory already):
        # each claim is a transaction scanning for due rows, ten cost a 1,000-row merge ~0.5 s.
        sender.policy = cfg.outbox.model_copy(update={"batch_size": max(cfg.outbox.batch_size, min(total, 5000))})
        wanted.update(m.message_id for m in built.messages)
        del built  # its raw bytes are in the store now
        while True:
            stats = await sender.drain_once()
            if len(outcomes) >= total or stats.total == 0:
                break
        counts = Counter(outcomes.values())
        if len(outcomes) < total:  # some rows went out elsewhere (a running daemon): ask the store
            items = await store_call(store.outbox.by_message_ids, wanted)
            counts = Counter(message_state(i) for i in items)
        return SentNow(job, total=total, counts=counts, refused=refused["recipients"])
    finally:
        if warming is not None:
            warming.cancel()
            await asyncio.gather(warming, return_exceptions=True)
        if sender is not None:
            await sender.close_idle()  # prewarmed connections no drain used (failed/skipped run)
