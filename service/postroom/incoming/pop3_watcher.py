"""The POP3 watcher: one maildrop, polled.

UIDL says what is new (not yet in the inbound table). With ``delete_after`` a message is
DELEted only once its outcome is done; QUIT commits the deletions. A message whose RETR breaks
the connection has that counted on its row: retried with backoff, then set aside, so the
maildrop is not stuck behind it. The backoff between sessions is reset only after a whole
poll went through.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from datetime import datetime

from postroom.clock import utcnow
from postroom.config.model import AccountConfig
from postroom.credentials import Credentials
from postroom.incoming.balance import FolderBalance
from postroom.incoming.bounces import BounceIntake
from postroom.incoming.imap_wire import chunks
from postroom.incoming.mailbox import BatchHandler
from postroom.incoming.message import ParsedMessage
from postroom.incoming.pop3 import Pop3Connection
from postroom.incoming.rules import RuleSet
from postroom.incoming.watch_lease import LEASE_TTL
from postroom.incoming.watch_loop import BATCH, Backoff, Entry, Watcher, WatcherHooks
from postroom.retry import sleep_or_stop
from postroom.store.calls import store_call
from postroom.store.inbound import DONE, SKIPPED, InboundStore
from postroom.store.leases import WatchLeases

POP3_FOLDER = "INBOX"  # a maildrop has no folders; rules and rows name it INBOX


class Pop3Watcher(Watcher):
    kind = "pop3"

    def __init__(
        self,
        account_name: str,
        account_cfg: AccountConfig,
        ruleset: RuleSet,
        handler: BatchHandler,
        inbound: InboundStore,
        *,
        clock: Callable[[], datetime] = utcnow,
        dry_run: bool = False,
        batch_size: int = BATCH,
        hooks: WatcherHooks | None = None,
        leases: WatchLeases | None = None,
        lease_ttl: float = LEASE_TTL,
        credentials: Credentials | None = None,
        balance: FolderBalance | None = None,
        bounces: BounceIntake | None = None,
    ):
        if account_cfg.pop3 is None:
            raise ValueError(f"account {account_name!r} has no pop3: section")
        super().__init__(
            account_name,
            ruleset.for_account(account_name),
            handler,
            inbound,
            folder=POP3_FOLDER,
            clock=clock,
            dry_run=dry_run,
            batch_size=batch_size,
            hooks=hooks,
            leases=leases,
            lease_ttl=lease_ttl,
            balance=balance,
            bounces=bounces,
        )
        self.cfg = account_cfg.pop3
        self.credentials = credentials  # AccountLogins.credentials; None: no login

    def watch_name(self) -> str:
        return f"{self.account}/pop3"

    def _key(self, ident: int | str, uidvalidity: int | None = None) -> str:
        return f"{self.account}/pop3/{ident}"

    async def _session(self, stop: asyncio.Event, backoff: Backoff) -> None:
        await self.poll_once()
        self._pass_done()
        backoff.reset()
        await sleep_or_stop(stop, self.cfg.poll_interval.total_seconds())

    async def poll_once(self) -> None:
        """One POP3 session: take in new messages, DELE done ones (delete_after), QUIT."""
        conn = Pop3Connection(self.account, self.cfg, self.credentials)
        try:
            await conn.connect()  # inside: a connect that failed or was cut is closed too
            listing = await conn.uidl()
            checkpoint = await store_call(self.inbound.checkpoint, self.account, "pop3")
            if checkpoint is None and not await self._first_start(listing):
                await conn.quit()
                return
            known = await store_call(self.inbound.known_uidls, self.account)
            retry = {
                r.uidl
                for r in await store_call(self.inbound.retry_candidates, self.account, self.folder, now=self.clock())
            }
            # new messages before retries: a retry whose RETR breaks the connection again then
            # costs only itself, not the new mail behind it
            new = sorted((num, uidl) for uidl, num in listing.items() if uidl not in known)
            new += sorted((num, uidl) for uidl, num in listing.items() if uidl in known and uidl in retry)
            for batch in chunks(range(len(new)), self.batch_size):
                await self._take_in(conn, [new[i] for i in batch])
            if self.cfg.delete_after and not self.dry_run:
                done = await store_call(self.inbound.uidls_with_status, self.account, DONE)
                doomed = sorted(num for uidl, num in listing.items() if uidl in done)
                for num in doomed:
                    await conn.dele(num)
                if doomed:
                    self.log.info("deleting handled messages from the maildrop", count=len(doomed))
        except BaseException:
            await conn.close()  # no QUIT: nothing marked for deletion is committed
            raise
        await conn.quit()

    async def _first_start(self, listing: dict[str, int]) -> bool:
        """True to take in what is there (start_from all); for `new` remember it as skipped."""
        start_from = self.cfg.start_from
        self.log.info(
            f"first start: start_from={start_from}",
            messages=len(listing),
            skipping=len(listing) if start_from == "new" else 0,
        )
        if self.dry_run:
            return start_from == "all"
        if start_from == "new":
            await self.inbound.calls.run(self._skip_all, list(listing), now=self.clock())
        await store_call(
            self.inbound.set_checkpoint,
            self.account,
            "pop3",
            uidvalidity=0,
            last_uid=0,
            start_from=start_from,
            now=self.clock(),
        )
        return start_from == "all"

    def _skip_all(self, uidls: list[str], *, now: datetime) -> None:
        """Store side of a first start with start_from new: every message there is skipped."""
        for uidl in uidls:
            key = self._key(uidl)
            if self.inbound.begin(key, account=self.account, folder=self.folder, now=now, uidl=uidl) is None:
                self.inbound.finish(key, SKIPPED, now=now, error="first start: start_from=new")

    async def _take_in(self, conn: Pop3Connection, batch: list[tuple[int, str]]) -> None:
        entries: list[Entry] = []
        for num, uidl in batch:
            key = self._key(uidl)
            try:
                raw = await conn.retr(num)
            except Exception as exc:
                # the connection broke on this message: what came before it is handled, this
                # one is counted (retried with backoff, then set aside), and the next poll
                # goes on past it instead of stopping at it every time
                await self._hand_over(None, *await self._evaluate(await self._take_bounces(entries, _whole)))
                await self._unfetchable(key, dict(uidl=uidl), exc)
                raise
            entries.append(
                Entry(
                    key,
                    functools.partial(ParsedMessage.from_bytes, raw, key=key),
                    dict(uidl=uidl),
                    dict(uidl=uidl, raw=raw),
                )
            )
        entries = await self._take_bounces(entries, _whole)
        await self._hand_over(None, *await self._evaluate(entries))


async def _whole(entries: list[Entry]) -> dict[str, bytes]:
    """POP3 entries hold the whole message already."""
    return {e.key: e.ident["raw"] for e in entries}
