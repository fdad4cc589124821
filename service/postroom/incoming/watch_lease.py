"""One replica per mailbox folder: a watcher works only while it holds the folder's lease.

Replicas on one PostgreSQL start the same watchers. Each watcher first claims its watch
(``postroom.store.leases``); the others stand by, trying again every few seconds, and take
over when the holder stops (it releases) or dies (its lease runs out, ``LEASE_TTL``).
The holder renews every third of the lease from the event loop; if a renewal finds the lease
taken, or the store stays unreachable until the lease may have run out, the watcher stops
between batches and goes back to standing by, so two replicas never work one folder for long.
(What one of them leaves half done is in the action ledger, as after a crash.)

With a ``FolderBalance`` (replicas on PostgreSQL) a watcher claims a free watch only while its
replica holds less than its share, and hands a held one over when the replica holds more:
after the session stops at its next safe point, the lease is released (``incoming.balance``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from postroom.clock import utcnow
from postroom.incoming.balance import REFRESH_SETTLING, FolderBalance
from postroom.retry import sleep_or_stop
from postroom.store.calls import store_call
from postroom.store.leases import WatchLeases

LEASE_TTL = 20.0  # seconds a claim lasts; a replica that died is replaced after at most this
# Seconds between a standby's claims: a folder released by a clean stop is taken within this
# (plus a claim); a lapsed lease is looked at as often.
STANDBY_RETRY = 2.0
# Seconds between a standby's tries while its watch is free but not yet its replica's to take
# (its share is full): taken past the share once free long enough (``incoming.balance``).
FREE_RETRY = 0.5
RELEASE_DEADLINE = 5.0  # seconds a stopping watcher waits to give its lease up


class WatchLease:
    def __init__(
        self,
        leases: WatchLeases,
        watch: str,
        log: Any,
        *,
        ttl: float = LEASE_TTL,
        clock: Callable[[], datetime] = utcnow,
        balance: FolderBalance | None = None,
    ):
        self.leases = leases
        self.balance = balance
        self._handing_over = False  # the session stops, then the lease is released
        self.watch = watch
        self.log = log
        self.ttl = ttl
        self.clock = clock
        self.held = False
        self.ended = asyncio.Event()  # work must stop now: asked to, or the lease is gone
        self._renewer: asyncio.Task[None] | None = None
        self._free_since: float | None = None  # monotonic: when a standby first saw it free

    async def acquire(self, stop: asyncio.Event, on_standby: Callable[[], None]) -> bool:
        """Hold the watch, standing by while another replica does. False when ``stop`` came
        first. Already held: True at once."""
        if self.held and not self.ended.is_set():
            return True
        handing_over, self._handing_over = self._handing_over, False
        self._drop()
        if handing_over:  # the session has stopped: now the watch goes to another replica
            try:
                await store_call(self.leases.release, self.watch)
            except Exception as exc:
                self.log.warning("could not release the watch lease; it runs out by itself", error=repr(exc))
        standing_by = False
        while not stop.is_set():
            if await self._take():
                if standing_by:
                    self.log.info("taking over the watch from the replica that held it")
                self.held = True
                self.ended = asyncio.Event()
                self._renewer = asyncio.create_task(self._renew(stop), name=f"lease {self.watch}")
                return True
            if not standing_by:
                holder = await self._holder()
                self.log.info("standing by: another replica watches this folder", holder=holder)
                standing_by = True
            on_standby()
            if self._free_since is not None:
                retry = FREE_RETRY
            elif self.balance is not None and self.balance.settling():
                retry = REFRESH_SETTLING  # its share may grow any moment: see it at once
            else:
                retry = STANDBY_RETRY
            await sleep_or_stop(stop, min(retry, self.ttl / 3))
        return False

    async def release(self) -> None:
        """Stop renewing and give the watch up (another replica may take it at once).

        Called as the watcher stops, which is when a stalled store is most likely: the write
        goes through a store thread, shielded from a second cancellation, and is waited for
        ``RELEASE_DEADLINE`` seconds at most; an unreleased lease runs out by itself."""
        was_held = self.held or self._handing_over
        self._drop()
        if was_held:
            try:
                await asyncio.wait_for(asyncio.shield(store_call(self.leases.release, self.watch)), RELEASE_DEADLINE)
            except Exception as exc:
                self.log.warning("could not release the watch lease; it runs out by itself", error=repr(exc))

    def _drop(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None
        self.held = False
        if self.balance is not None:
            self.balance.held.discard(self.watch)

    async def _take(self) -> bool | None:
        """Claim the watch if this replica may hold one more (always, without a balance)."""
        if self.balance is None:
            return await self._claim()
        async with self.balance.lock:
            beyond = False
            if not await self.balance.may_take_now():
                if not self.balance.may_take_beyond(await self._free_for()):
                    return False
                beyond = True
            claimed = await self._claim()
            if claimed:
                self.balance.held.add(self.watch)
                self._free_since = None
                if beyond:
                    self.balance.took_beyond()
                    self.log.info(
                        "taking a free watch past this replica's share: no replica under its share took it",
                        replicas=self.balance.alive,
                        share=self.balance.share,
                    )
            return claimed

    async def _free_for(self) -> float:
        """Seconds this standby has seen the watch held by nobody (0: held, or unknown)."""
        if self.balance is None or self.balance.settling():
            return 0.0  # a starting replica takes no more than its share
        try:
            free = await store_call(self.leases.free, self.watch, now=self.clock())
        except Exception:
            free = False  # the store could not say: as if held
        if not free:
            self._free_since = None
            return 0.0
        now = time.monotonic()
        if self._free_since is None:
            self._free_since = now
        return now - self._free_since

    async def _claim(self) -> bool | None:
        """Take or renew the lease: True, False (another replica holds it), or None when the
        store could not say (it is down: try again later). The store is asked off the event
        loop: a slow database must not stall every other watcher's IMAP traffic."""
        try:
            return await store_call(self.leases.claim, self.watch, now=self.clock(), ttl=timedelta(seconds=self.ttl))
        except Exception as exc:
            self.log.warning("could not claim or renew the watch lease", error=repr(exc))
            return None

    async def _holder(self) -> str | None:
        try:
            found = await store_call(self.leases.holder, self.watch)
        except Exception:
            return None
        return found[0] if found else None

    async def _renew(self, stop: asyncio.Event) -> None:
        surely_held_until = time.monotonic() + self.ttl
        try:
            while True:
                await sleep_or_stop(stop, self.ttl / 3)
                if stop.is_set():
                    return
                started = time.monotonic()
                renewed = await self._claim()
                if renewed and self.balance is not None and self.balance.should_hand_over(self.watch):
                    self.log.info(
                        "handing the watch over to balance the replicas",
                        replicas=self.balance.alive,
                        share=self.balance.share,
                    )
                    self._handing_over = True
                    self.held = False
                    return
                if renewed:
                    surely_held_until = started + self.ttl
                elif renewed is False or time.monotonic() + self.ttl / 3 >= surely_held_until:
                    self.log.warning(
                        "lost the watch lease; this replica stops watching the folder", holder=await self._holder()
                    )
                    self.held = False
                    return
        finally:
            self.ended.set()
