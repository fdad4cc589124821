"""What each console page shows, gathered from the daemon: pure shaping of what was read.

Each page has one ``*_page`` coroutine: the in-memory parts (config, watchers, next fires)
are read on the loop, everything from the store in one store thread (``store_call``, as every
store call from async code).
Nothing here shows a secret: webhook URLs go through ``shown_url``, errors are the servers'
own replies, and no message body is shown (subjects and addresses are).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..clock import utcnow
from ..incoming.watch_loop import WatchState
from ..mail.parse import decode_header_value, parse_headers
from ..redact import shown_url
from ..schedules import jobs_overview
from ..store.calls import store_call
from ..store.outbox import OutboxItem
from .source import DaemonView

LIST_LIMIT = 200  # rows per table: the console is for looking, the CLI for bulk work
RECENT_RUNS = 30
MAX_HEAD_BYTES = 64 * 1024  # of a stored message read for its Subject


@dataclass(frozen=True)
class Attention:
    """The counts that need a person, with where to go about each."""

    dead_letters: int
    set_aside: int
    dead_webhooks: int
    failing_accounts: dict[str, str]  # account -> why

    @property
    def total(self) -> int:
        return self.dead_letters + self.set_aside + self.dead_webhooks + len(self.failing_accounts)


@dataclass(frozen=True)
class MessageRow:
    id: int
    account: str
    origin: str
    to: str
    subject: str
    status: str
    attempts: int
    next_try: datetime | None
    reply: str


@dataclass
class Replica:
    name: str
    this: bool
    holds: list[str] = field(default_factory=list)


def failing_accounts(view: DaemonView) -> dict[str, str]:
    """Accounts whose login (or connection) fails now, with the last error."""
    failing = {w.account: w.last_error or "failing" for w in view.watchers() if w.state is WatchState.FAILING}
    for account in view.signed_out():
        failing[account] = f"signed out: run `postroom auth login {account}`, then reload"
    return dict(sorted(failing.items()))


async def overview_page(view: DaemonView) -> dict[str, Any]:
    store = view.store

    def read() -> dict[str, Any]:
        now = utcnow()
        shared = store.engine.dialect.name != "sqlite"
        return {
            "outbox": store.outbox.counts(),
            "set_aside": len(store.inbound.set_aside()),
            "webhooks": store.ledger.webhook_counts(),
            "leases": store.leases.all(now=now) if shared else None,
            "backend": store.engine.dialect.name,
        }

    got = await store_call(read)
    config = view.config()
    attention = Attention(
        dead_letters=got["outbox"].get("dead", 0),
        set_aside=got["set_aside"],
        dead_webhooks=got["webhooks"].get("dead", 0),
        failing_accounts=failing_accounts(view),
    )
    return {
        "attention": attention,
        "config_path": str(view.config_path()),
        "loaded_at": view.loaded_at(),
        "reload": view.last_reload(),
        "counts": {
            "accounts": len(config.accounts),
            "jobs": len(config.jobs),
            "rules": len(config.rules),
            "watchers": len(view.watchers()),
        },
        "outbox": got["outbox"],
        "webhooks": got["webhooks"],
        "replicas": _replicas(view, got["leases"]),
        "backend": got["backend"],
        "dry_run": view.dry_run,
    }


def _replicas(view: DaemonView, leases: list[tuple[str, str]] | None) -> list[Replica]:
    me = Replica(view.instance, this=True)
    if leases is None:  # SQLite: one process, it holds every watch
        me.holds = sorted(w.watch_name() for w in view.watchers())
        return [me]
    replicas = {me.name: me}
    for watch, owner in leases:
        replicas.setdefault(owner, Replica(owner, this=False)).holds.append(watch)
    return sorted(replicas.values(), key=lambda r: (not r.this, r.name))


async def jobs_page(view: DaemonView) -> dict[str, Any]:
    runs = await store_call(view.store.runs.recent_runs, limit=RECENT_RUNS)
    config = view.config()
    upcoming = view.next_fires()
    jobs = []
    for job in jobs_overview(config, now=utcnow()):
        fire = upcoming.get(job.name, job.next_fire) if not view.dry_run else job.next_fire
        last = next((r for r in runs if r.job_id == job.name), None)
        jobs.append({"job": job, "next_fire": fire, "account": config.jobs[job.name].account, "last": last})
    return {"jobs": jobs, "runs": runs}


async def job_preview(view: DaemonView, name: str) -> dict[str, Any]:
    built = await view.build_job(name)
    shown = [
        {"to": ", ".join(m.recipients), "subject": _subject(m.raw), "size": len(m.raw)}
        for m in built.messages[:LIST_LIMIT]
    ]
    return {
        "name": name,
        "skipped": built.skipped,
        "total": len(built.messages),
        "messages": shown,
        "account": view.config().jobs[name].account,
    }


async def outbox_page(view: DaemonView) -> dict[str, Any]:
    outbox = view.store.outbox

    def read() -> tuple[dict[str, int], list[OutboxItem], list[OutboxItem]]:
        return (
            outbox.counts(),
            outbox.list(statuses=["queued", "sending"], limit=LIST_LIMIT),
            outbox.list(statuses=["dead"], limit=LIST_LIMIT),
        )

    counts, waiting, dead = await store_call(read)
    return {"counts": counts, "waiting": [_message_row(i) for i in waiting], "dead": [_message_row(i) for i in dead]}


def _message_row(item: OutboxItem) -> MessageRow:
    to = item.recipients or list(item.refused)
    status = "deferred" if item.status == "queued" and item.attempts else item.status
    return MessageRow(
        id=item.id,
        account=item.account,
        origin=item.origin or "-",
        to=", ".join(to) or "-",
        subject=_subject(item.raw),
        status=status,
        attempts=item.attempts,
        next_try=item.next_attempt_at if item.status == "queued" else None,
        reply=item.last_error or "",
    )


def _subject(raw: bytes) -> str:
    head = raw[:MAX_HEAD_BYTES].split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    try:
        return decode_header_value(parse_headers(head).get("Subject", "")) or "(no subject)"
    except Exception:  # a header the parser cannot read is still a row to show
        return "(unreadable subject)"


async def mailboxes_page(view: DaemonView) -> dict[str, Any]:
    watchers = list(view.watchers())
    inbound = view.store.inbound

    def read() -> tuple[list[Any], list[Any]]:
        marks = [inbound.checkpoint(w.account, w.folder) for w in watchers]
        return marks, inbound.set_aside()[:LIST_LIMIT]

    marks, aside = await store_call(read)
    rows = [{"w": w, "checkpoint": mark} for w, mark in zip(watchers, marks, strict=True)]
    states = Counter(str(w.state) for w in watchers)
    return {"watchers": rows, "set_aside": aside, "states": states, "failing": failing_accounts(view)}


async def webhooks_page(view: DaemonView) -> dict[str, Any]:
    ledger = view.store.ledger

    def read() -> tuple[dict[str, int], list[Any], list[Any]]:
        return (
            ledger.webhook_counts(),
            ledger.webhooks(statuses=["queued", "sending"], limit=LIST_LIMIT),
            ledger.webhooks(statuses=["dead"], limit=LIST_LIMIT),
        )

    counts, pending, dead = await store_call(read)

    def row(d: Any) -> dict[str, Any]:
        return {
            "id": d.webhook_id,
            "rule": d.rule,
            "url": shown_url(d.url),
            "attempts": d.attempts,
            "next_try": d.next_attempt_at if d.status == "queued" else None,
            "answer": d.last_error or "",
            "status": d.status,
        }

    return {"counts": counts, "pending": [row(d) for d in pending], "dead": [row(d) for d in dead]}
