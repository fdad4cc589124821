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
from ..outgoing.shown import held_next_step, message_state, refused_line, refused_replies, signed_out_step
from ..redact import shown_url
from ..schedule.fires import jobs_overview
from ..store.calls import store_call
from ..store.outbox import WAITING, OutboxItem
from ..store.runs import RunRecord
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
    failed_runs: list[RunRecord] = field(default_factory=list)  # recent, and each job's last if failed
    refused: int = 0  # messages sent with some recipients refused

    @property
    def total(self) -> int:
        return (
            self.dead_letters
            + self.set_aside
            + self.dead_webhooks
            + len(self.failing_accounts)
            + len(self.failed_runs)
            + self.refused
        )


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
    waits_for: str = ""  # held: who must act before it is tried again


@dataclass
class Replica:
    name: str
    this: bool
    holds: list[str] = field(default_factory=list)


def failing_accounts(view: DaemonView) -> dict[str, str]:
    """Accounts whose login (or connection) fails now, with the last error."""
    failing = {w.account: w.last_error or "failing" for w in view.watchers() if w.state is WatchState.FAILING}
    for account in view.signed_out():
        failing[account] = signed_out_step(account)
    return dict(sorted(failing.items()))


def failed_runs(recent: list[RunRecord], last: dict[str, RunRecord], jobs: set[str]) -> list[RunRecord]:
    """Runs that need a person: the recent failed ones, and each configured job's last run if
    it failed (however long ago), once each, newest first."""
    picked = {r.id: r for r in recent if r.state == "failed"}
    picked.update((r.id, r) for name, r in last.items() if r.state == "failed" and name in jobs)
    return sorted(picked.values(), key=lambda r: r.id, reverse=True)


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
            "recent_runs": store.runs.recent_runs(limit=RECENT_RUNS),
            "last_runs": store.runs.last_runs(),
            "refused": store.outbox.refused_count(),
        }

    got = await view.store.calls.run(read)
    config = view.config()
    attention = Attention(
        dead_letters=got["outbox"].get("dead", 0),
        set_aside=got["set_aside"],
        dead_webhooks=got["webhooks"].get("dead", 0),
        failing_accounts=failing_accounts(view),
        failed_runs=failed_runs(got["recent_runs"], got["last_runs"], set(config.jobs)),
        refused=got["refused"],
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

    def read() -> tuple[dict[str, int], list[OutboxItem], list[OutboxItem], list[OutboxItem]]:
        return (
            outbox.counts(),
            outbox.list(statuses=list(WAITING), limit=LIST_LIMIT),
            outbox.list(statuses=["dead"], limit=LIST_LIMIT),
            outbox.with_refused(limit=LIST_LIMIT),
        )

    counts, waiting, dead, refused = await view.store.calls.run(read)
    return {
        "counts": counts,
        "waiting": [_message_row(i) for i in waiting],
        "dead": [_message_row(i) for i in dead],
        "refused": [_refused_row(i) for i in refused],
    }


def _message_row(item: OutboxItem) -> MessageRow:
    to = item.recipients or list(item.refused)
    status = message_state(item)
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
        waits_for=held_next_step(item.account) if status == "held" else "",
    )


def _refused_row(item: OutboxItem) -> dict[str, Any]:
    return {
        "id": item.id,
        "account": item.account,
        "origin": item.origin or "-",
        "subject": _subject(item.raw),
        "delivered": ", ".join(item.delivered) or "-",
        "refused": refused_line(len(item.refused)),
        "replies": refused_replies(item),
    }


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

    marks, aside = await view.store.calls.run(read)
    # A signed-out account's watcher may sit in IDLE on a session opened before its token was
    # revoked: the row says what the account needs, not what the session last did.
    signed_out = set(view.signed_out())
    rows = [
        {"w": w, "checkpoint": mark, "signed_out": signed_out_step(w.account) if w.account in signed_out else None}
        for w, mark in zip(watchers, marks, strict=True)
    ]
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

    counts, pending, dead = await view.store.calls.run(read)

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
