"""The action executor: does what the rules planned, through the action ledger.

Each (message key, rule, action index) gets a ledger row: ``planned`` before the action runs,
``done`` after (with a reason when it was skipped on purpose). On the next batch a ``done``
row is never run again, and a ``planned`` (or ``failed``) one is "in doubt": the action may or
may not have happened before a crash. In-doubt IMAP actions are checked on the server first
(move/delete: is the UID gone from this folder? flag/unflag/mark_read: do the FLAGS show it?);
a copy can't be checked cheaply and is redone (at worst one duplicate copy). Mail actions
enqueue into the outbox with dedup_key = the action key and webhooks into the delivery queue
keyed by a webhook id derived from it, so redoing either can't send twice.

A batch runs in phases, each phase one ledger write before and one after, and IMAP actions
grouped by (kind, argument) into ONE server call with every UID (a 2,000-message batch = one UID MOVE):

1. forward / redirect / reply (need the raw message: one fetch_raw per SEND_CHUNK messages)
2. webhooks
3. copy
4. flag / unflag / mark_read
5. move / delete, last, because UIDs change after them. A message with several of these: the
   first one written runs; the later ones are recorded done as "skipped" (the message is no
   longer in this folder, so they are impossible), e.g. ``[move: A, delete]`` moves to A.

When one of a message's actions fails, its later phases wait for the next attempt (a move
must not carry away a message whose forward has not been stored yet). A transient failure
leaves the row ``failed`` to retry; a permanent one makes it ``dead`` with the reason and the
item is reported not done, not transient, so the watcher sets it aside.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import structlog

from postroom.action_kinds import ACTION_KINDS, PHASES, SEEN, WITHOUT_FETCH, Args, Kind, Phase
from postroom.auth.accounts import AccountLogins
from postroom.clock import utcnow
from postroom.config.model import AccountConfig, Config
from postroom.config.rules import (
    ActionConfig,
    CopyAction,
    CreateFolderAction,
    DeleteAction,
    FlagAction,
    ForwardAction,
    MarkReadAction,
    MoveAction,
    OtherAccount,
    RedirectAction,
    ReplyAction,
    SaveAction,
    SaveSpec,
    UnflagAction,
    VacationAction,
    WebhookAction,
    WebhookSpec,
)
from postroom.errors import PostroomError, TransientError, is_transient
from postroom.incoming.envelope import envelope_of
from postroom.mail.compose import make_message_id
from postroom.mail.templates import RenderedEmail, TemplateRenderer
from postroom.store.calls import store_call
from postroom.store.ledger import ActionId, FinishedAction, LedgerEntry, LedgerStore
from postroom.store.outbox import NewMessage, OutboxStore
from postroom.webhooks.delivery import WebhookRequest
from postroom.webhooks.signing import webhook_id_for

from ..action_kinds import MailboxOps
from .forward import forward_message, redirect_message
from .guards import answered, ledger_rule, send_refusal
from .local_save import Mbox, envelope_sender, save_id, save_maildir
from .mailbox import InboundItem, ItemOutcome, Settlement
from .message import ParsedMessage, message_parts
from .replies import compose_reply, reply_context, reply_to_address, vacation_text
from .rules import PlannedAction, RuleSet
from .transfer import Opener, already_there, imap_opener, marked, transfer_id

log = structlog.get_logger(__name__)

SEND_CHUNK = 200  # forwards/redirects/replies whose raw messages are held at once


class WebhookSink(Protocol):
    """The webhook delivery queue as the executor sees it (postroom.webhooks.delivery.WebhookQueue)."""

    async def submit(self, requests: Sequence[WebhookRequest]) -> int: ...


class ExecutorStore(Protocol):
    outbox: OutboxStore
    ledger: LedgerStore


@dataclass
class _Work:
    item: InboundItem
    action: PlannedAction
    entry: LedgerEntry | None  # the ledger row at the start of the batch; None if new

    @property
    def aid(self) -> ActionId:
        return (self.item.key, self.action.rule, self.action.index)

    @property
    def key(self) -> str:
        return self.action.key(self.item.key)

    @property
    def in_doubt(self) -> bool:
        return self.entry is not None and self.entry.status in ("planned", "failed")


#: An action's ledger status after a try (the ledger's ``status`` column holds these strings).
ResultStatus = Literal["done", "failed", "dead"]


#: Ledger statuses that are final: never run again.
_SETTLED: dict[str, ResultStatus] = {"done": "done", "dead": "dead"}


@dataclass
class _Result:
    status: ResultStatus
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def outcome(self) -> str:
        """What metrics count: done | skipped | failed | dead. A skip (a reply guard, a delete
        after a move) is recorded done so it is never retried, but nothing was done."""
        return "skipped" if self.status == "done" and "skipped" in self.detail else self.status


class _Phase:
    """Results of one phase, written to the ledger in one go."""

    def __init__(self) -> None:
        self.results: dict[ActionId, tuple[_Work, _Result]] = {}

    def done(self, work: _Work, **detail: Any) -> None:
        self.results[work.aid] = (work, _Result("done", detail))

    def failed(self, work: _Work, exc: BaseException | str) -> None:
        if isinstance(exc, str):
            self.results[work.aid] = (work, _Result("dead", error=exc))
            return
        status: ResultStatus = "failed" if is_transient(exc) else "dead"
        self.results[work.aid] = (work, _Result(status, error=f"{type(exc).__name__}: {exc}"))

    def fail_all(self, works: Iterable[_Work], exc: BaseException | str) -> None:
        for work in works:
            self.failed(work, exc)


@dataclass
class _SendBatch:
    account: str
    acct: AccountConfig
    now: datetime
    last_replies: dict[tuple[str, str], datetime]  # (rule, sender) -> last auto-reply

    @property
    def sender(self) -> str:
        return email.utils.formataddr((self.acct.name or "", self.acct.address))


class ActionExecutor:
    """Implements BatchHandler (postroom.incoming.mailbox)."""

    #: Actions done from the UID alone: a watcher may hand these over without fetching the
    #: message (``ParsedMessage.unread``). Not copy: see the watcher on UIDVALIDITY changes.
    kinds_without_message: frozenset[Kind] = WITHOUT_FETCH  # what the watcher may hand over unfetched

    def __init__(
        self,
        config: Config,
        ruleset: RuleSet,
        store: ExecutorStore,
        renderer: TemplateRenderer,
        webhooks: WebhookSink,
        *,
        clock: Callable[[], datetime] = utcnow,
        wake_sender: Callable[[], None] = lambda: None,
        dry_run: bool = False,
        on_action: Callable[[str, str], None] = lambda kind, result: None,
        open_account: Opener | None = None,
    ):
        self.config = config
        # sessions to the accounts a copy_to / move_to APPENDs into, opened per batch (by
        # default with the config's passwords: the daemon hands its AccountLogins' opener)
        self.open_account = open_account or imap_opener(config, AccountLogins().credentials)
        self.on_action = on_action  # (kind, done|skipped|failed|dead) — metrics
        self.ruleset = ruleset
        self.outbox = store.outbox
        self.ledger = store.ledger
        self.renderer = renderer
        self.webhooks = webhooks
        self.clock = clock
        self.wake_sender = wake_sender
        self.dry_run = dry_run

    #: ``handle_batch`` takes ``settle=``: the watcher commits the last phase's outcomes (see there)
    settles_with_batch = True

    async def handle_batch(
        self,
        account: str,
        folder: str,
        mailbox: MailboxOps | None,
        items: Sequence[InboundItem],
        *,
        settle: Settlement | None = None,
    ) -> dict[str, ItemOutcome]:
        """Run the items' planned actions phase by phase through the ledger. Each phase's
        actions are committed ``planned`` before their side effects run (a crash between leaves
        them in doubt: checked on the server or redone next time); their outcomes are committed
        with the next phase's plan, one transaction. The last phase's outcomes go to ``settle``
        when given, for the watcher to commit with the batch's inbound rows and checkpoint;
        without it (or when this raises) they are committed here."""
        logger = log.bind(account=account, folder=folder)
        if self.dry_run:
            for item in items:
                for action in item.planned:
                    logger.info(
                        f"would {action.kind}", key=item.key, uid=item.uid, rule=action.rule, params=action.params
                    )
            return {item.key: ItemOutcome(done=True, details={"dry_run": "nothing recorded"}) for item in items}
        acct = self.config.accounts[account]
        entries = await store_call(self.ledger.entries, [item.key for item in items])
        results: dict[ActionId, _Result] = {}
        for entry_id, entry in entries.items():
            settled = _SETTLED.get(entry.status)  # the ledger's column, read back
            if settled is not None:
                results[entry_id] = _Result(settled, entry.detail or {}, entry.error)
        # Items with a failure (this batch, or a dead action before): later phases wait.
        blocked: set[str] = {aid[0] for aid, entry in entries.items() if entry.status == "dead"}
        unrecorded: list[FinishedAction] = []  # outcomes of the phase before, not yet committed
        try:
            await self._phases(items, entries, results, blocked, unrecorded, acct, account, folder, mailbox)
        except Exception:
            await store_call(self.ledger.finish, unrecorded, now=self.clock())  # what did happen
            raise
        if settle is not None:
            settle.actions.extend(unrecorded)
        else:
            await store_call(self.ledger.finish, unrecorded, now=self.clock())
        return {item.key: _outcome(item, results) for item in items}

    async def _phases(
        self,
        items: Sequence[InboundItem],
        entries: dict[ActionId, LedgerEntry],
        results: dict[ActionId, _Result],
        blocked: set[str],
        unrecorded: list[FinishedAction],
        acct: AccountConfig,
        account: str,
        folder: str,
        mailbox: MailboxOps | None,
    ) -> None:
        logger = log.bind(account=account, folder=folder)
        for phase_of, kinds in PHASES:
            works = [
                _Work(item, action, entries.get((item.key, action.rule, action.index)))
                for item in items
                if item.key not in blocked
                for action in item.planned
                if action.kind in kinds
            ]
            todo = [w for w in works if w.aid not in results]
            skipped: list[tuple[ActionId, str]] = []  # planned and finished at once (never run)
            if phase_of is Phase.TERMINAL:
                todo, skipped = self._first_terminal(works, results, unrecorded)
            if not todo:
                if skipped:
                    await store_call(self.ledger.record, planned=skipped, finished=unrecorded[:], now=self.clock())
                    unrecorded.clear()
                continue
            phase = _Phase()
            # planned, and committed, before the side effect; with the phase before's outcomes
            await store_call(
                self.ledger.record,
                planned=[*skipped, *((w.aid, w.action.kind) for w in todo)],
                finished=unrecorded[:],
                now=self.clock(),
            )
            unrecorded.clear()
            await self._run_phase(phase_of, todo, phase, acct, account, folder, mailbox)
            unrecorded.extend((aid, r.status, r.detail or None, r.error) for aid, (_, r) in phase.results.items())
            for aid, (work, result) in phase.results.items():
                results[aid] = result
                self.on_action(work.action.kind, result.outcome)
                if result.status != "done":
                    blocked.add(work.item.key)
                    logger.warning(
                        "action failed", key=work.key, kind=work.action.kind, status=result.status, error=result.error
                    )

    def _first_terminal(
        self, works: list[_Work], results: dict[ActionId, _Result], unrecorded: list[FinishedAction]
    ) -> tuple[list[_Work], list[tuple[ActionId, str]]]:
        """Of each message's move/delete actions (in written order) the first runs; the later
        ones are impossible once it has, and are recorded done as skipped: planned and finished
        in the transaction that plans the first, since they never run. Returns the first ones
        to run and the skipped ones to plan."""
        by_item: dict[str, list[_Work]] = defaultdict(list)
        for work in works:  # already in rule order, then action order
            by_item[work.item.key].append(work)
        todo: list[_Work] = []
        skipped: list[_Work] = []
        for first, *later in by_item.values():
            if first.aid not in results:
                todo.append(first)
            skipped.extend(w for w in later if w.aid not in results)
        if skipped:
            finished: list[tuple[ActionId, str, dict[str, Any] | None, str | None]] = []
            for work in skipped:
                left_by = by_item[work.item.key][0].action
                detail = {
                    "skipped": f"the message already left the folder by {left_by.kind} ({left_by.rule}#{left_by.index})"
                }
                results[work.aid] = _Result("done", detail)
                finished.append((work.aid, "done", detail, None))
                self.on_action(work.action.kind, "skipped")
            unrecorded.extend(finished)
        return todo, [(w.aid, w.action.kind) for w in skipped]

    async def _run_phase(
        self,
        phase_of: Phase,
        todo: list[_Work],
        phase: _Phase,
        acct: AccountConfig,
        account: str,
        folder: str,
        mailbox: MailboxOps | None,
    ) -> None:
        if phase_of is Phase.SEND:
            await self._send(todo, phase, acct, account, mailbox)
        elif phase_of is Phase.SAVE:
            await self._save(todo, phase, mailbox)
        elif phase_of is Phase.WEBHOOK:
            await self._webhooks(todo, phase, account, folder, mailbox)
        elif mailbox is None:
            phase.fail_all(todo, f"{todo[0].action.kind} needs an IMAP folder; this is POP3")
        else:
            elsewhere = [w for w in todo if w.action.kind in _TRANSFERS]
            if elsewhere:
                await self._transfer(elsewhere, phase, mailbox, moving=phase_of is Phase.TERMINAL)
            here = [w for w in todo if w.action.kind not in _TRANSFERS]
            if here:
                await self._imap(here, phase, mailbox)

    # -- sending -------------------------------------------------------------------------

    async def _raws(self, todo: list[_Work], phase: _Phase, mailbox: MailboxOps | None) -> dict[str, bytes]:
        raws: dict[str, bytes] = {}
        missing: dict[int, list[_Work]] = defaultdict(list)
        for work in todo:
            raw = work.item.raw or work.item.message.raw
            if raw is not None:
                raws[work.item.key] = raw
            elif work.item.uid is not None and mailbox is not None:
                missing[work.item.uid].append(work)
            else:
                phase.failed(work, "the message's bytes are not available")
        if missing:
            try:
                fetched = await mailbox.fetch_raw(list(missing))  # type: ignore[union-attr]
            except Exception as exc:
                phase.fail_all((w for ws in missing.values() for w in ws), exc)
                return raws
            for uid, works in missing.items():
                if uid in fetched:
                    raws[works[0].item.key] = fetched[uid]
                else:
                    phase.fail_all(works, f"UID {uid} is no longer in the folder")
        return raws

    async def _send(
        self, todo: list[_Work], phase: _Phase, acct: AccountConfig, account: str, mailbox: MailboxOps | None
    ) -> None:
        # whole messages are fetched, composed and queued SEND_CHUNK at a time: a forward-all
        # rule over a big folder must not hold a whole batch of raw messages in memory
        for start in range(0, len(todo), SEND_CHUNK):
            await self._send_chunk(todo[start : start + SEND_CHUNK], phase, acct, account, mailbox)

    async def _send_chunk(
        self, todo: list[_Work], phase: _Phase, acct: AccountConfig, account: str, mailbox: MailboxOps | None
    ) -> None:
        raws = await self._raws(todo, phase, mailbox)
        now = self.clock()
        parsed = {key: ParsedMessage.from_bytes(raw, key=key) for key, raw in raws.items()}
        batch = _SendBatch(
            account,
            acct,
            now,
            await store_call(
                self.ledger.last_replies,
                account,
                [
                    pair
                    for w in todo
                    if w.item.key in parsed
                    and (pair := answered(w.action, parsed[w.item.key], acct.address)) is not None
                ],
            ),
        )
        queued: list[tuple[_Work, NewMessage]] = []
        for work in todo:
            if work.aid in phase.results:
                continue
            try:
                new = self._compose(work, parsed[work.item.key], raws[work.item.key], batch)
            except Exception as exc:
                phase.failed(work, exc)  # ours decide retry vs dead; anything else is dead
                continue
            if isinstance(new, str):
                phase.done(work, skipped=new)
                log.info("action skipped", key=work.key, kind=work.action.kind, reason=new)
            else:
                queued.append((work, new))
        if not queued:
            return
        try:
            await store_call(self.outbox.enqueue, [new for _, new in queued], now=now)
            # after the enqueue: a crash in between re-enqueues (deduplicated), never loses it
            await store_call(
                self.ledger.record_replies,
                account,
                [
                    (ledger_rule(w.action), new.recipients[0].lower())
                    for w, new in queued
                    if isinstance(w.action.action, ReplyAction | VacationAction)
                ],
                now=now,
            )
        except Exception as exc:
            phase.fail_all((w for w, _ in queued), _transient(exc))
            return
        for work, new in queued:
            phase.done(work, message_id=new.message_id, to=list(new.recipients))
        self.wake_sender()

    def _compose(self, work: _Work, msg: ParsedMessage, raw: bytes, batch: _SendBatch) -> NewMessage | str:
        """The message to enqueue, or the reason it is (rightly) not sent."""
        action, acct, now = work.action, batch.acct, batch.now
        message_id = make_message_id(acct.address.rsplit("@", 1)[1])
        common = dict(dedup_key=work.key, message_id=message_id, account=batch.account, origin=action.rule)
        reason = send_refusal(action, msg, acct.address, batch.last_replies.get, now)
        if reason:
            return reason
        match action.action:
            case ForwardAction(forward=spec):
                data = forward_message(
                    raw,
                    msg,
                    sender=batch.sender,
                    to=list(spec.to),
                    as_=spec.as_,
                    rule=action.rule,
                    message_id=message_id,
                    now=now,
                )
                return NewMessage(envelope_from=acct.address, recipients=list(spec.to), raw=data, **common)
            case RedirectAction(redirect=spec):
                data = redirect_message(raw, sender=acct.address, to=list(spec.to), message_id=message_id, now=now)
                return NewMessage(envelope_from=acct.address, recipients=list(spec.to), raw=data, **common)
            case ReplyAction(reply=spec):
                target = reply_to_address(msg) or ""  # send_refusal made sure there is one
                rendered = self.renderer.render(spec.template, reply_context(msg))
                data = compose_reply(rendered, msg, sender=batch.sender, to=target, message_id=message_id, now=now)
                batch.last_replies[(action.rule, target.lower())] = now  # a second mail in this batch: no
                return NewMessage(envelope_from="", recipients=[target], raw=data, **common)
            case VacationAction(vacation=spec):
                # answered at the envelope sender (RFC 5230 4.1), guarded as reply is (send_refusal)
                target = envelope_of(msg, acct.address).sender
                rendered = RenderedEmail(subject=spec.subject or "", text=vacation_text(spec), html=None)
                data = compose_reply(
                    rendered,
                    msg,
                    sender=spec.from_ or batch.sender,
                    to=target,
                    message_id=message_id,
                    now=now,
                    exact_subject=True,
                )
                batch.last_replies[(ledger_rule(action), target.lower())] = now
                return NewMessage(envelope_from="", recipients=[target], raw=data, **common)
        raise ValueError(f"{action.kind} is not sent")  # a gap between PHASES and these cases

    # -- local mailboxes -----------------------------------------------------------------

    async def _save(self, todo: list[_Work], phase: _Phase, mailbox: MailboxOps | None) -> None:
        """Maildir saves are idempotent by file name; mbox appends are recorded done one by one
        (``local_save``), so at most one per mbox is ever in doubt: the one at its tail."""
        for start in range(0, len(todo), SEND_CHUNK):
            chunk = todo[start : start + SEND_CHUNK]
            raws = await self._raws(chunk, phase, mailbox)
            mboxes: dict[str, list[_Work]] = defaultdict(list)
            for work in chunk:
                if work.aid in phase.results:
                    continue
                spec = _save_spec(work.action.action)
                if spec.mbox is not None:
                    mboxes[spec.mbox].append(work)
                    continue
                try:
                    detail = await asyncio.to_thread(
                        save_maildir,
                        _local_path(spec.maildir or ""),
                        raws[work.item.key],
                        unique=save_id(work.key),
                        now=self.clock(),
                        in_doubt=work.in_doubt,
                        follow_symlinks=bool(work.action.params.get("follow_symlinks")),
                    )
                except Exception as exc:
                    phase.failed(work, exc)
                else:
                    phase.done(work, **detail)
            for path, works in mboxes.items():
                try:
                    follow = any(w.action.params.get("follow_symlinks") for w in works)
                    await self._append_mbox(_local_path(path), works, raws, phase, follow=follow)
                except Exception as exc:
                    phase.fail_all((w for w in works if w.aid not in phase.results), exc)

    async def _append_mbox(
        self, path: Path, works: list[_Work], raws: dict[str, bytes], phase: _Phase, *, follow: bool
    ) -> None:
        box = Mbox(path, follow_symlinks=follow)
        await asyncio.to_thread(box.__enter__)
        try:
            doubtful = [w for w in works if w.in_doubt]
            found = None
            if doubtful:
                found = await asyncio.to_thread(
                    box.settle, [(envelope_sender(raws[w.item.key]), raws[w.item.key]) for w in doubtful]
                )
            # each recorded done now, not at the end of the phase: the next append hides this
            # one from the tail check, so it must not be left in doubt too
            if found is not None:
                await self._done_now(phase, doubtful[found], {"mbox": str(path), "verified": "already saved"})
            for work in works:
                if work.aid in phase.results:
                    continue
                raw = raws[work.item.key]
                detail = await asyncio.to_thread(box.append, raw, sender=envelope_sender(raw), now=self.clock())
                await self._done_now(phase, work, detail)
        finally:
            await asyncio.to_thread(box.__exit__)

    async def _done_now(self, phase: _Phase, work: _Work, detail: dict[str, Any]) -> None:
        phase.done(work, **detail)
        await store_call(self.ledger.finish, [(work.aid, "done", detail, None)], now=self.clock())

    # -- another account -----------------------------------------------------------------

    async def _transfer(self, todo: list[_Work], phase: _Phase, mailbox: MailboxOps, *, moving: bool) -> None:
        groups: dict[tuple[str, str], list[_Work]] = defaultdict(list)
        for work in todo:
            if work.item.uid is None:
                phase.failed(work, f"{work.action.kind} needs an IMAP UID")
                continue
            target = _other_account(work.action.action)
            groups[(target.account, target.folder)].append(work)
        for (account, folder), works in groups.items():
            try:
                await self._transfer_group(account, folder, works, phase, mailbox, moving=moving)
            except Exception as exc:
                phase.fail_all((w for w in works if w.aid not in phase.results), exc)

    async def _transfer_group(
        self, account: str, folder: str, works: list[_Work], phase: _Phase, mailbox: MailboxOps, *, moving: bool
    ) -> None:
        where = {"account": account, "folder": folder}
        uid_of = {w.aid: w.item.uid for w in works if w.item.uid is not None}
        if moving:  # the source goes only after the APPEND: an in-doubt UID that is gone was appended
            doubtful = {uid_of[w.aid] for w in works if w.in_doubt}
            gone = doubtful - await mailbox.existing_uids(doubtful) if doubtful else set()
            for work in works:
                if uid_of[work.aid] in gone:
                    phase.done(work, **where, verified="already moved")
        works = [w for w in works if w.aid not in phase.results]
        if not works:
            return
        raws = await self._raws(works, phase, mailbox)
        flags = await mailbox.flags([uid_of[w.aid] for w in works])
        dest = await self.open_account(account)
        appended: list[tuple[_Work, dict[str, Any]]] = []
        try:
            await dest.ensure_folder(folder)
            await dest.select(folder)
            for work in works:
                if work.aid in phase.results:
                    continue
                marker = transfer_id(work.key)
                if work.in_doubt and await already_there(dest, marker):
                    appended.append((work, {**where, "marker": marker, "verified": "already appended"}))
                    continue
                await dest.append(
                    folder,
                    marked(raws[work.item.key], marker),
                    sorted(flags.get(uid_of[work.aid], ())),
                    work.item.message.internal_date,
                )
                appended.append((work, {**where, "marker": marker}))
        finally:
            await dest.close()
            if moving and appended:
                # what reached the destination leaves the source, even when a later APPEND failed
                await mailbox.delete([uid_of[w.aid] for w, _ in appended])
            for work, detail in appended:
                phase.done(work, **detail)
        log.info("copied to another account", account=account, folder=folder, count=len(appended), moved=moving)

    # -- webhooks ------------------------------------------------------------------------

    async def _webhooks(
        self, todo: list[_Work], phase: _Phase, account: str, folder: str, mailbox: MailboxOps | None
    ) -> None:
        specs = {w.aid: _webhook_spec(w.action.action) for w in todo}
        with_content = [w for w in todo if specs[w.aid].include]
        raws = await self._raws(with_content, phase, mailbox) if with_content else {}
        todo = [w for w in todo if w.aid not in phase.results]
        requests = []
        for work in todo:
            spec = specs[work.aid]
            payload = webhook_payload(work.item, account, folder, work.action.rule)
            if spec.include:
                payload["content"] = webhook_content(raws[work.item.key], spec.include, spec.max_bytes)
            requests.append(WebhookRequest(work.key, work.action.rule, spec.url, payload))
        try:
            await self.webhooks.submit(requests)
        except Exception as exc:
            phase.fail_all(todo, _transient(exc))
            return
        for work in todo:  # stored for delivery, not yet delivered: the queue records that later
            phase.done(work, webhook="queued", webhook_id=webhook_id_for(work.key))

    # -- IMAP ----------------------------------------------------------------------------

    async def _imap(self, todo: list[_Work], phase: _Phase, mailbox: MailboxOps) -> None:
        groups: dict[tuple[Kind, Args], list[_Work]] = defaultdict(list)
        for work in todo:
            if work.item.uid is None:
                phase.failed(work, f"{work.action.kind} needs an IMAP UID")
                continue
            groups[_folder_args(work.action.action)].append(work)
        for (kind, args), works in groups.items():
            try:
                await self._imap_group(kind, args, works, phase, mailbox)
            except Exception as exc:
                phase.fail_all((w for w in works if w.aid not in phase.results), exc)

    async def _imap_group(self, kind: Kind, args: Args, works: list[_Work], phase: _Phase, mailbox: MailboxOps) -> None:
        spec = ACTION_KINDS[kind]
        if spec.call is None:
            raise ValueError(f"{kind} has no folder call")  # a gap in the ACTION_KINDS table
        doubtful = {w.item.uid for w in works if w.in_doubt and w.item.uid is not None}
        settled: set[int] = set()
        if doubtful and spec.check is not None:
            settled = await spec.check(mailbox, doubtful, args)
        uids = sorted({w.item.uid for w in works if w.item.uid is not None} - settled)
        if uids:
            await spec.call(mailbox, uids, args)
        log.info("imap action", kind=kind, args=list(args), uids=len(uids), verified=len(settled))
        for work in works:
            if work.item.uid in settled:
                phase.done(work, verified="already done on the server")
            else:
                phase.done(work)


def webhook_payload(item: InboundItem, account: str, folder: str, rule: str) -> dict[str, Any]:
    """The JSON body's message part (the queue adds ``type`` and ``timestamp``)."""
    msg = item.message
    return {
        "account": account,
        "folder": folder,
        "uid": item.uid,
        "uidl": item.uidl,
        "message_id": msg.message_id,
        "from": ", ".join(a.display for a in msg.from_),
        "to": [a.addr or a.display for a in msg.to],
        "subject": msg.subject,
        "date": msg.date.isoformat() if msg.date else None,
        "size": msg.size,
        "attachments": [a.filename or "" for a in msg.attachments()],
        "rule": rule,
    }


def webhook_content(raw: bytes, include: Sequence[str], max_bytes: int) -> dict[str, Any]:
    """The ``content`` of a webhook with ``include``: the parts asked for, in the order text,
    html, attachments (each), raw, as long as they fit in ``max_bytes`` (counted as encoded in
    the JSON body). What does not fit is left out and listed under ``omitted`` with its size,
    and ``truncated`` is true: the receiver knows, and can fetch the message itself."""
    parts = message_parts(raw)
    candidates: list[tuple[str, Any, dict[str, Any]]] = []  # (key, value, what to list if omitted)
    if "text" in include and parts.text is not None:
        candidates.append(("text", parts.text, {"part": "text", "size": len(parts.text.encode())}))
    if "html" in include and parts.html is not None:
        candidates.append(("html", parts.html, {"part": "html", "size": len(parts.html.encode())}))
    if "attachments" in include:
        for filename, content_type, data in parts.attachments:
            about = {"filename": filename, "content_type": content_type, "size": len(data)}
            candidates.append(
                (
                    "attachments",
                    {**about, "content_base64": base64.b64encode(data).decode()},
                    {"part": "attachment", **about},
                )
            )
    if "raw" in include:
        candidates.append(("raw_base64", base64.b64encode(raw).decode(), {"part": "raw", "size": len(raw)}))
    content: dict[str, Any] = {"attachments": []} if "attachments" in include else {}
    omitted: list[dict[str, Any]] = []
    used = 0
    for key, value, about in candidates:
        cost = len(json.dumps(value))
        if used + cost > max_bytes:
            omitted.append(about)
            continue
        used += cost
        if key == "attachments":
            content["attachments"].append(value)
        else:
            content[key] = value
    content["truncated"] = bool(omitted)
    if omitted:
        content.update(omitted=omitted, max_bytes=max_bytes)
    return content


def _local_path(value: str) -> Path:
    return Path(value).expanduser()


_TRANSFERS = frozenset({Kind.COPY_TO, Kind.MOVE_TO})


def _folder_args(action: ActionConfig) -> tuple[Kind, Args]:
    """The kind whose call and check serve a folder action, and its arguments: actions with
    the same pair are done in one server call (``mark_read`` is ``flag \\Seen``, so one STORE
    serves both)."""
    match action:
        case MoveAction(move=str(folder)):
            return Kind.MOVE, (folder,)
        case CopyAction(copy_=str(folder)):
            return Kind.COPY, (folder,)
        case CreateFolderAction(create_folder=folder):
            return Kind.CREATE_FOLDER, (folder,)
        case FlagAction(flag=flags):
            return Kind.FLAG, tuple(flags)
        case UnflagAction(unflag=flags):
            return Kind.UNFLAG, tuple(flags)
        case MarkReadAction():
            return Kind.FLAG, (SEEN,)
        case DeleteAction():
            return Kind.DELETE, ()
    raise ValueError(f"{action.kind} is not done on the folder")  # a gap between PHASES and these cases


def _other_account(action: ActionConfig) -> OtherAccount:
    match action:
        case MoveAction(move=OtherAccount() as target) | CopyAction(copy_=OtherAccount() as target):
            return target
    raise ValueError(f"{action.kind} does not go to another account")


def _save_spec(action: ActionConfig) -> SaveSpec:
    match action:
        case SaveAction(save=spec):
            return spec
    raise ValueError(f"{action.kind} is not a save")


def _webhook_spec(action: ActionConfig) -> WebhookSpec:
    match action:
        case WebhookAction(webhook=spec):
            return spec
    raise ValueError(f"{action.kind} is not a webhook")


def _transient(exc: BaseException) -> BaseException:
    """Store errors (database locked, connection lost) count as transient."""
    if isinstance(exc, PostroomError):
        return exc
    wrapped = TransientError(f"{type(exc).__name__}: {exc}")
    wrapped.__cause__ = exc
    return wrapped


def _outcome(item: InboundItem, results: dict[ActionId, _Result]) -> ItemOutcome:
    details: dict[str, str] = {}
    dead: list[str] = []
    pending: list[str] = []
    for action in item.planned:
        result = results.get((item.key, action.rule, action.index))
        name = f"{action.rule}#{action.index}:{action.kind}"
        if result is None:
            details[name] = "waiting"
            pending.append(name)
        elif result.status == "done":
            details[name] = str(result.detail.get("skipped") or "done")
        else:
            details[name] = f"{result.status}: {result.error}"
            (dead if result.status == "dead" else pending).append(f"{name}: {result.error}")
    if dead:
        return ItemOutcome(done=False, error="; ".join(dead), transient=False, details=details)
    if pending:
        return ItemOutcome(done=False, error="; ".join(pending), transient=True, details=details)
    return ItemOutcome(done=True, details=details)
