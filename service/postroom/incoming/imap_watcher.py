"""The IMAP watcher: one folder, its checkpoint, IDLE or polling.

A checkpoint (UIDVALIDITY, last UID) says what is new. Each cycle takes UIDs above it,
narrowed by the rules' SEARCH prefilter when every rule has one, fetches only what the rules
need, evaluates them, records an inbound row per message and hands batches to the handler.
The checkpoint then moves past every message looked at: one that failed is retried later by
its key from the inbound table and never blocks those behind it. After UIDVALIDITY changes,
messages whose Message-ID was already handled here are recorded done instead of re-run.
Two batches are in flight at once (``PIPELINE``): while the server works on one batch's FETCH
or MOVE, the other is parsed, evaluated and written to the store. The checkpoint still moves
batch by batch in UID order, so after a crash everything from the oldest unfinished batch on is
looked at again (the inbound rows and the action ledger keep that from repeating anything).
A batch whose FETCH breaks the connection (a BYE in the middle of it) is narrowed down to the
one message that does it, which is then retried with backoff and set aside (``suspects``).

No fetch at all when it can't change the outcome: if every rule's condition is one the
server's SEARCH decides exactly (``RuleSet.exact_search``) and every action the rules can plan
is one the handler does without the message (``kinds_without_message``: move, delete, flag,
unflag, mark_read), one SEARCH per rule IS the match set, and the matched UIDs go to the
handler with their planned actions and an unread message. Their inbound rows then have no
Message-ID, so after a UIDVALIDITY change they are not recognised as handled: moved or
deleted ones have left the folder anyway, flagged ones get the same flags again (idempotent).
(Copy is left out for that reason: a second copy would be a duplicate.)
"""

from __future__ import annotations

import asyncio
import bisect
import functools
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any

from postroom.clock import utcnow
from postroom.config.model import AccountConfig
from postroom.credentials import Credentials
from postroom.errors import ServerRejected
from postroom.incoming import bounces as bounce_intake
from postroom.incoming.balance import FolderBalance
from postroom.incoming.bounces import BounceIntake
from postroom.incoming.imap import HeaderFetch, ImapConnection
from postroom.incoming.mailbox import BatchHandler, InboundItem
from postroom.incoming.message import ParsedMessage
from postroom.incoming.rules import FetchNeeds, PlannedAction, RuleSet
from postroom.incoming.suspects import Suspects
from postroom.incoming.watch_lease import LEASE_TTL
from postroom.incoming.watch_loop import BATCH, Backoff, Entry, Watcher, WatcherHooks, WatchState
from postroom.retry import sleep_or_stop
from postroom.store.calls import store_call
from postroom.store.inbound import DONE, FINISHED, CheckpointWrite, InboundStore
from postroom.store.leases import WatchLeases

BODY_BATCH = 200  # when rules need whole messages: bounds the memory a batch holds
# Batches in flight at once. While one waits on the server (FETCH, MOVE) the other is parsed,
# evaluated and written to the store on the event loop's thread: a folder's first pass keeps
# both the connection and the store busy instead of taking turns. The connection's single
# worker thread runs the commands of both in the order they were asked for. (Not when rules
# need whole messages: BODY_BATCH bounds the memory of one batch, not of two.)
PIPELINE = 2


class ImapWatcher(Watcher):
    kind = "imap"

    def __init__(
        self,
        account_name: str,
        account_cfg: AccountConfig,
        folder: str,
        ruleset: RuleSet,
        handler: BatchHandler,
        inbound: InboundStore,
        *,
        clock: Callable[[], datetime] = utcnow,
        dry_run: bool = False,
        batch_size: int = BATCH,
        idle_timeout: float | None = None,
        hooks: WatcherHooks | None = None,
        leases: WatchLeases | None = None,
        lease_ttl: float = LEASE_TTL,
        credentials: Credentials | None = None,
        balance: FolderBalance | None = None,
        bounces: BounceIntake | None = None,
    ):
        if account_cfg.imap is None:
            raise ValueError(f"account {account_name!r} has no imap: section")
        super().__init__(
            account_name,
            ruleset.for_folder(account_name, folder),
            handler,
            inbound,
            folder=folder,
            clock=clock,
            dry_run=dry_run,
            batch_size=batch_size,
            hooks=hooks,
            leases=leases,
            lease_ttl=lease_ttl,
            balance=balance,
            bounces=bounces,
        )
        self.cfg = account_cfg.imap
        self.credentials = credentials  # AccountLogins.credentials; None: no login
        self.idle_timeout = idle_timeout
        self._dry_seen = 0  # dry run: the checkpoint stays put, so remember what was shown
        self._suspects = Suspects()  # UIDs of batches whose FETCH broke the connection

    def _key(self, ident: int | str, uidvalidity: int | None = None) -> str:
        return f"{self.account}/{self.folder}/{uidvalidity}/{ident}"

    async def _session(self, stop: asyncio.Event, backoff: Backoff) -> None:
        conn = ImapConnection(self.account, self.cfg, self.credentials)
        waker = asyncio.create_task(stop.wait())
        waker.add_done_callback(lambda _: conn.wake())
        try:
            await conn.connect()
            use_idle = self.cfg.idle and conn.has("IDLE")
            self.waits_with = WatchState.IDLE if use_idle else WatchState.POLLING
            if not use_idle:
                self.log.info(
                    "polling",
                    every=self.cfg.poll_interval.total_seconds(),
                    why="idle disabled" if not self.cfg.idle else "server offers no IDLE",
                )
            while not stop.is_set():
                if not await self.cycle(conn, stop):
                    break  # stopping: the rest of the folder waits for the next start
                self._pass_done()
                # only now: a session that connects and then breaks off (a BYE in the middle of
                # a FETCH) every time must back off, not reconnect every second
                backoff.reset()
                if use_idle:
                    if await conn.news_since_select():
                        continue  # mail came during the pass: IDLE would not announce it again
                    if stop.is_set():
                        break  # before idle_wait, which clears a wake-up the stop already gave
                    await conn.idle_wait(self.idle_timeout or conn.idle_renew)
                else:
                    await sleep_or_stop(stop, self.cfg.poll_interval.total_seconds())
        finally:
            waker.cancel()
            await conn.close()

    async def cycle(self, conn: ImapConnection, stop: asyncio.Event | None = None) -> bool:
        """Select the folder and take in everything new since the checkpoint. Once ``stop``
        is set no further batch starts; the ones in flight finish. True when the whole folder
        was looked at."""
        state = await conn.select(self.folder)
        uidvalidity = state.uidvalidity
        checkpoint = await store_call(self.inbound.checkpoint, self.account, self.folder)
        start_from = checkpoint.start_from if checkpoint else self.cfg.start_from
        if checkpoint is None:
            everything = await conn.uids_from(1)
            if start_from == "new":
                self.log.info("first start: start_from=new, skipping existing messages", count=len(everything))
                await self._save(uidvalidity, max(everything, default=max(state.uidnext - 1, 0)), start_from)
                return True
            candidates = await conn.search_uids(["UNSEEN"]) if start_from == "unseen" else everything
            known = await self._exact_matches(conn, candidates)
            candidates = sorted(known) if known is not None else await self._prefilter(conn, candidates)
            self.log.info(
                f"first start: start_from={start_from}, taking in {len(candidates)} of {len(everything)} messages"
            )
            last = 0
        elif checkpoint.uidvalidity != uidvalidity:
            known = None
            everything = await conn.uids_from(1)
            candidates = await self._after_uidvalidity_change(conn, checkpoint.uidvalidity, uidvalidity, everything)
            last = 0
        else:
            last = max(checkpoint.last_uid, self._dry_seen)
            everything = await conn.uids_from(last + 1)
            known = await self._exact_matches(conn, everything)
            candidates = sorted(known) if known is not None else await self._prefilter(conn, everything)
        retries = (
            []
            if self.dry_run
            else [
                row.uid
                for row in await store_call(self.inbound.retry_candidates, self.account, self.folder, now=self.clock())
                if row.uidvalidity == uidvalidity and row.uid is not None
            ]
        )
        if retries:
            retries = sorted(await conn.existing_uids(retries))
        todo = sorted(set(candidates) | set(retries))
        whole = self.rules.needs().body
        size = min(self.batch_size, BODY_BATCH) if whole else self.batch_size
        depth = 1 if whole else PIPELINE  # whole messages: one batch's worth of memory at a time
        if self._one_batch(conn, known, retries):
            size = len(todo)
        if self._suspects.any_among(uidvalidity, todo):
            depth = 1  # the next FETCH to break off is then its own batch's, not one behind it
        broke: set[int] = set()  # first UIDs of batches whose own FETCH broke off
        in_flight: deque[tuple[list[int], asyncio.Task[None]]] = deque()
        fold = _CheckpointFold(self, uidvalidity, last, everything, start_from)
        stopped = False
        try:
            for batch in self._suspects.batches(uidvalidity, todo, size):
                if len(in_flight) == depth:
                    await self._settle(in_flight.popleft(), fold, broke)
                if stop is not None and stop.is_set():
                    stopped = True
                    break
                fold.started(batch)
                task = asyncio.create_task(self._process(conn, uidvalidity, batch, known or {}, broke, fold))
                in_flight.append((batch, task))
            while in_flight:
                await self._settle(in_flight.popleft(), fold, broke)
        except BaseException:
            # the batch behind a failed one stops at its next await; what it left planned in
            # the ledger is "in doubt" and checked on the server next time, like after a crash
            for _, task in in_flight:
                task.cancel()
            await asyncio.gather(*(task for _, task in in_flight), return_exceptions=True)
            raise
        if stopped:
            self.log.info("stopping: the rest of this pass waits for the next start")
            return False
        if fold.written < max([last, *everything]):
            await self._save(uidvalidity, max([last, *everything]), start_from)
        return True

    async def _settle(
        self, flight: tuple[list[int], asyncio.Task[None]], fold: _CheckpointFold, broke: set[int]
    ) -> None:
        """Wait for the oldest batch in flight, then move the checkpoint past it (unless it
        went in with the batch's rows, ``_CheckpointFold``). Batches are settled in order, so
        the checkpoint never passes a batch that is still running."""
        batch, task = flight
        reached = fold.reached(batch)
        try:
            await task
        except Exception as exc:
            # the oldest batch whose FETCH broke off is the one to blame (those behind it
            # only found the connection gone)
            if batch[0] in broke and await self._fetch_broke(fold.uidvalidity, batch, exc):
                await self._save(fold.uidvalidity, reached, fold.start_from)  # its failure is on its row now
            raise
        if fold.written < reached:
            await self._save(fold.uidvalidity, reached, fold.start_from)
            fold.written = reached

    async def _fetch_broke(self, uidvalidity: int, batch: list[int], exc: Exception) -> bool:
        """Narrow a broken FETCH down (``suspects``); a single message is the culprit and has
        the failure counted on its inbound row. True when that row was written."""
        size = self._suspects.broke(uidvalidity, batch)
        if len(batch) > 1:
            self.log.warning(
                "a FETCH broke off; fetching its messages in smaller batches",
                count=len(batch),
                next_batch=size,
                error=repr(exc),
            )
            return False
        key = self._key(batch[0], uidvalidity)
        return await self._unfetchable(key, dict(uidvalidity=uidvalidity, uid=batch[0]), exc)

    async def _save(self, uidvalidity: int, last_uid: int, start_from: str) -> None:
        if self.dry_run:
            self._dry_seen = max(self._dry_seen, last_uid)
            return
        await store_call(
            self.inbound.set_checkpoint,
            self.account,
            self.folder,
            uidvalidity=uidvalidity,
            last_uid=last_uid,
            start_from=start_from,
            now=self.clock(),
        )

    async def _prefilter(self, conn: ImapConnection, new_uids: list[int]) -> list[int]:
        if not new_uids:
            return []
        if self.bounces is not None:
            return new_uids  # a bounce report matches no rule's SEARCH, yet must be looked at
        criteria = self.rules.search_criteria(now=self.clock())
        if criteria is None:
            return new_uids
        try:
            found = await conn.search_uids(["UID", f"{new_uids[0]}:{new_uids[-1]}", *criteria])
        except ServerRejected as exc:
            # only an optimisation: a server that dislikes the criteria gets every message fetched
            self.log.warning("SEARCH prefilter refused; evaluating every new message", error=str(exc))
            return new_uids
        wanted = set(new_uids)
        return [uid for uid in found if uid in wanted]

    def _message_free(self) -> bool:
        """Every action the rules can plan is one the handler does without the message (and
        this is no dry run, which logs subjects)."""
        without_message: frozenset[str] = getattr(self.handler, "kinds_without_message", frozenset())
        return (
            not self.dry_run
            and self.bounces is None
            and bool(len(self.rules))
            and self.rules.action_kinds() <= without_message
        )

    def _exact_rules(self) -> list[tuple[str, list[Any]]] | None:
        """The per-rule SEARCH criteria when SEARCH alone can decide (module docstring)."""
        return self.rules.exact_search(now=self.clock()) if self._message_free() else None

    async def _exact_matches(self, conn: ImapConnection, new_uids: list[int]) -> dict[int, list[PlannedAction]] | None:
        """uid -> planned actions of the messages among ``new_uids`` that the rules match, from
        one SEARCH per rule; None when the rules (or the server) need messages fetched."""
        per_rule = self._exact_rules()
        if per_rule is None:
            return None
        if not new_uids:
            return {}
        wanted = set(new_uids)
        matched: dict[int, set[str]] = {}
        # one rule over more than a batch: its result saved on the server as ``$`` (SEARCHRES),
        # so the pass can act on all of it in one command (cycle: ``_one_batch``)
        search = conn.search_saved if len(per_rule) == 1 and self._saves_search(conn, new_uids) else conn.search_uids
        for name, criteria in per_rule:
            try:
                found = await search(["UID", f"{new_uids[0]}:{new_uids[-1]}", *criteria])
            except ServerRejected as exc:
                self.log.warning("SEARCH refused; fetching and evaluating instead", error=str(exc))
                return None
            for uid in found:
                if uid in wanted:
                    matched.setdefault(uid, set()).add(name)
        plans: dict[frozenset[str], list[PlannedAction]] = {}
        known = {}
        for uid, names in matched.items():
            names_key = frozenset(names)
            if names_key not in plans:
                plans[names_key] = self.rules.plan_for(names)
            if plans[names_key]:
                known[uid] = plans[names_key]
        self.log.info("rules decided by SEARCH alone; nothing fetched", matched=len(known), of=len(new_uids))
        return known

    def _saves_search(self, conn: ImapConnection, new_uids: list[int]) -> bool:
        return conn.has("SEARCHRES") and len(new_uids) > self.batch_size

    @staticmethod
    def _one_batch(conn: ImapConnection, known: dict[int, list[PlannedAction]] | None, retries: list[int]) -> bool:
        """The whole pass as one batch: SEARCH decided it, ``$`` holds exactly the matches and
        each gets the same actions (one rule), so the handler's MOVE (or STORE) of all of them
        is one ``UID MOVE $``. The ledger plans all of them before it and records them after,
        as for any batch; after a crash they are in doubt and checked on the server
        (``action_kinds``: moved ones are gone), in chunked commands."""
        return known is not None and bool(known) and not retries and conn.saved_is(known.keys())

    async def _unfetched(
        self, uidvalidity: int, known: dict[int, list[PlannedAction]], uids: list[int]
    ) -> tuple[list[InboundItem], dict[str, dict[str, Any]]]:
        """Items for messages SEARCH matched: no fetch, no parse; finished ones are left out."""
        keyed = {self._key(uid, uidvalidity): uid for uid in uids}
        rows = {
            key: dict(account=self.account, folder=self.folder, message_id=None, uidvalidity=uidvalidity, uid=uid)
            for key, uid in keyed.items()
        }
        existing = await store_call(self.inbound.statuses, list(rows))
        items = [
            InboundItem(key=key, message=ParsedMessage.unread(key), planned=known[uid], uid=uid)
            for key, uid in keyed.items()
            if existing.get(key) not in FINISHED
        ]
        return items, rows

    async def _after_uidvalidity_change(
        self, conn: ImapConnection, old: int, new: int, everything: list[int]
    ) -> list[int]:
        """New UIDs for the same folder: messages handled before (same Message-ID) are done."""
        message_ids = await conn.message_ids(everything) if everything else {}
        seen = await store_call(self.inbound.seen_message_ids, self.account, self.folder, list(message_ids.values()))
        already = [uid for uid, mid in message_ids.items() if mid and mid in seen]
        self.log.warning(
            "UIDVALIDITY changed: the server renumbered the folder",
            old=old,
            new=new,
            messages=len(everything),
            already_handled=len(already),
        )
        if not self.dry_run and already:
            now = self.clock()
            rows = {
                self._key(uid, new): dict(
                    account=self.account, folder=self.folder, uidvalidity=new, uid=uid, message_id=message_ids[uid]
                )
                for uid in already
            }
            existing = await store_call(self.inbound.statuses, list(rows))
            reason = f"handled before under UIDVALIDITY {old} (same Message-ID)"
            await store_call(
                self.inbound.finish_many,
                [(key, DONE, reason) for key in rows if key not in existing],
                now=now,
                rows=rows,
            )
        return [uid for uid in everything if uid not in set(already)]

    async def _process(
        self,
        conn: ImapConnection,
        uidvalidity: int,
        uids: list[int],
        known: dict[int, list[PlannedAction]],
        broke: set[int],
        fold: _CheckpointFold,
    ) -> None:
        batch = uids
        unfetched = [uid for uid in uids if uid in known]
        uids = [uid for uid in uids if uid not in known]  # retries: fetched and evaluated
        if unfetched:
            items, rows = await self._unfetched(uidvalidity, known, unfetched)
            await self._hand_over(conn, items, rows, checkpoint=fold.offer(batch) if not uids else _no_checkpoint)
        if uids:
            await self._fetched(conn, uidvalidity, batch, uids, broke, fold)
        fold.finished(batch)

    async def _fetched(
        self,
        conn: ImapConnection,
        uidvalidity: int,
        batch: list[int],
        uids: list[int],
        broke: set[int],
        fold: _CheckpointFold,
    ) -> None:
        batch_start = batch[0]
        needs = self.rules.needs(rules_only=self._message_free())
        if self.bounces is not None:
            needs = needs.merge(FetchNeeds(header_fields=frozenset(bounce_intake.HEADER_FIELDS)))
        try:
            fetched = await conn.fetch_headers(
                uids,
                needs.header_fields,
                bodystructure=needs.bodystructure,
                whole=needs.body,
                internal_date=needs.internal_date,
                flags=False,
            )
        except Exception:
            broke.add(batch_start)
            raise
        self._suspects.cleared(uidvalidity, uids)
        entries = [
            Entry(
                key,
                functools.partial(_parsed, row, key),
                dict(uidvalidity=uidvalidity, uid=uid),
                dict(uid=uid, raw=row.raw),
            )
            for uid in uids
            if (row := fetched.get(uid)) is not None  # absent: expunged meanwhile, nothing to do
            for key in [self._key(uid, uidvalidity)]
        ]

        async def whole(candidates: list[Entry]) -> dict[str, bytes]:
            have = {e.key: e.ident["raw"] for e in candidates if e.ident["raw"] is not None}
            by_uid = {e.ident["uid"]: e.key for e in candidates if e.key not in have}
            fetched_raw = await conn.fetch_raw(list(by_uid)) if by_uid else {}
            return {**have, **{by_uid[uid]: raw for uid, raw in fetched_raw.items() if uid in by_uid}}

        entries = await self._take_bounces(entries, whole)
        items, rows, finished = await self._evaluate(entries)
        await self._hand_over(conn, items, rows, finished, checkpoint=fold.offer(batch))


def _no_checkpoint() -> CheckpointWrite | None:
    return None


class _CheckpointFold:
    """A batch's checkpoint in the same transaction as its rows and ledger outcomes, when that
    is safe: every batch started before it has finished (they settle in UID order, and the
    checkpoint must never pass one still running or failed). Otherwise ``_settle`` writes it
    on its own, as before. ``written`` is the highest ``last_uid`` written this cycle."""

    def __init__(self, watcher: ImapWatcher, uidvalidity: int, last: int, everything: list[int], start_from: str):
        self.watcher = watcher
        self.uidvalidity = uidvalidity
        self.last = last
        self.everything = everything
        self.start_from = start_from
        self.written = -1
        self._running: list[int] = []  # first UIDs of batches started and not finished, oldest first

    def reached(self, batch: list[int]) -> int:
        """Everything up to this batch's end was looked at: skipped by the prefilter or handled."""
        end = bisect.bisect_right(self.everything, batch[-1])
        return max(self.last, self.everything[end - 1] if end else 0)

    def started(self, batch: list[int]) -> None:
        self._running.append(batch[0])

    def finished(self, batch: list[int]) -> None:
        """Only on success: a batch that raised stays "running", so none behind it folds."""
        self._running.remove(batch[0])

    def offer(self, batch: list[int]) -> Callable[[], CheckpointWrite | None]:
        def checkpoint() -> CheckpointWrite | None:  # asked just before the batch's last write
            if self.watcher.dry_run or not self._running or self._running[0] != batch[0]:
                return None
            reached = self.reached(batch)
            if reached <= self.written:
                return None
            self.written = reached  # only raised: a failed write leaves the checkpoint behind
            w = self.watcher
            return CheckpointWrite(w.account, w.folder, self.uidvalidity, reached, self.start_from)

        return checkpoint


def _parsed(row: HeaderFetch, key: str) -> ParsedMessage:
    if row.raw is not None:
        return ParsedMessage.from_bytes(row.raw, key=key, internal_date=row.internal_date, flags=tuple(row.flags))
    return ParsedMessage.from_headers(
        row.header_bytes,
        key=key,
        size=row.size,
        internal_date=row.internal_date,
        flags=tuple(row.flags),
        attachments=row.attachments,
    )
