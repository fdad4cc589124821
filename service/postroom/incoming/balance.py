"""Folders shared out evenly among the replicas alive.

Every replica runs the same config, so each starts a watcher (standing by or working) for all
M watches (IMAP folders and POP3 maildrops). With N replicas alive (heartbeat rows,
``store.replicas``) the shares are M // N each, and the first M % N replicas in name order
hold one more: 7 folders on 3 replicas are 3/2/2, never 3/3/1. One ``FolderBalance`` per
daemon (per config generation) counts the watches this replica holds and answers:

- may a standing-by watcher claim a free watch? Only while this replica holds fewer than its
  share (checked and claimed under one lock, so two of its watchers can't both take the last
  place). A replica just started that counts no other yet holds at most one until the
  replica count has settled (no change for ``SETTLE_QUIET`` seconds, asked at least every
  ``REFRESH_EVERY``) or a lease has passed; one that counts others takes its share at once:
  replicas started together then share the folders from the first second, instead of the
  first one up taking all and handing them over later. When the share says no, the
  replica count is asked again (``refresh``, at most every ``REFRESH_EVERY``): a replica that
  stopped cleanly has left, and its released folders are taken within seconds, not at the
  next heartbeat.
- should a working watcher hand its watch over? When this replica holds more than its share
  (a replica joined), the watches past the share in name order do, each at a safe point: its
  session stops between batches, then the lease is released, and a replica below its share
  claims it at its next standby try. Every message's actions are in the ledger, so a folder
  changing hands handles no message twice.

A replica counts as alive while its heartbeat is fresh (``store.replicas.members``): a killed
one stops counting within two thirds of a lease, and the others' shares grow to take its
watches as their leases run out.

Until then a killed replica still has a share it will never take. A watch nobody holds for
``BEYOND_SHARE_AFTER`` seconds (a live replica under its share takes a free watch at its next
standby try, sooner than that) is therefore taken by a settled replica even past its share
(``may_take_beyond``): a folder released by a clean stop while a killed replica still counts
is watched within seconds, not once the dead one stops counting. It is not handed back while
the replicas alive stay the same (the one whose share it is may be that dead one), for at most
``beyond_hold`` seconds (a lease, by when a dead replica has stopped counting): after that, or
once the replicas change, the usual shares apply again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

REFRESH_EVERY = 1.0  # seconds: how often a standby blocked by its share asks for the count
# ... and while the count settles (a replica just started): one that started first, alone,
# sees the replicas started with it within this and takes its share then, not seconds later.
REFRESH_SETTLING = 0.25
SETTLE_QUIET = 2.0  # seconds without a change in the replica count: it has settled
# Seconds a watch has been seen free, no replica under its share taking it, before a replica
# at its share takes it: a standby's try (2 s) plus a refresh of the count (1 s).
BEYOND_SHARE_AFTER = 3.0


class FolderBalance:
    def __init__(
        self,
        watches: int,
        *,
        me: str = "",
        members: Sequence[str] = (),
        settled: bool = True,
        refresh: Callable[[], Awaitable[Sequence[str] | None]] | None = None,
        settle_max: float = 20.0,
        beyond_hold: float = 20.0,
    ):
        self.watches = watches  # M: every replica starts the same watchers
        self.me = me
        self.alive = 1  # N: set from the heartbeat's members
        self.rank = 0  # this replica's place among them, in name order
        self.settled = settled  # the replica count has settled since this replica started
        self.held: set[str] = set()  # watches this replica holds now
        self.lock = asyncio.Lock()  # a claim and its count are one step
        self._refresh = refresh
        self._refreshed = 0.0
        self._changed = time.monotonic()  # when the replica count last changed
        self._settle_by = time.monotonic() + settle_max  # settled by then whatever the count does
        self.names: tuple[str, ...] = ()  # the replicas alive, in name order
        self._left = False  # the last change of the count was a replica leaving
        self.beyond_hold = beyond_hold
        # (the replicas alive, when) a watch was last taken past the share: kept while they stay
        self._beyond: tuple[tuple[str, ...], float] | None = None
        self.members(members or [me])

    def members(self, alive: Sequence[str]) -> None:
        """The replicas alive now (this one included, if its own heartbeat landed)."""
        names = sorted(set(alive))
        if max(len(names), 1) != self.alive:
            self._changed = time.monotonic()
            # Folders free past the shares after a replica left (released by a clean stop)
            # may be a dead one's share; after one joined they are a starting one's.
            self._left = max(len(names), 1) < self.alive
        self.alive = max(len(names), 1)
        self.rank = names.index(self.me) if self.me in names else len(names)
        self.names = tuple(names)

    @property
    def share(self) -> int:
        base, extra = divmod(self.watches, self.alive)
        return max(1, base + (1 if self.rank < extra else 0))

    def settling(self) -> bool:
        if not self.settled:
            now = time.monotonic()
            self.settled = now - self._changed >= SETTLE_QUIET or now >= self._settle_by
        return not self.settled

    def may_take(self) -> bool:
        """Below the share; while the count settles, below one when this replica has seen no
        other yet (more may be starting), below the share when it has."""
        limit = self.share if self.alive > 1 or not self.settling() else 1
        return len(self.held) < limit

    async def may_take_now(self) -> bool:
        """``may_take``, asking for the replica count again first when it says no or the count
        is still settling (rate-limited)."""
        every = REFRESH_SETTLING if self.settling() else REFRESH_EVERY
        due = time.monotonic() - self._refreshed >= every
        if self._refresh is None or not due or (self.may_take() and not self.settling()):
            return self.may_take()
        self._refreshed = time.monotonic()
        alive = await self._refresh()
        if alive is not None:
            self.members(alive)
        return self.may_take()

    def may_take_beyond(self, free_for: float) -> bool:
        """May a watch seen free for ``free_for`` seconds be taken although this replica holds
        its share? Yes once settled, after a replica left (not when one joined: a starting
        replica takes its share after its count settles) and once the watch has waited
        ``BEYOND_SHARE_AFTER``: no live replica under its share took it (the one whose share it
        is may be dead, still counted).
        Call ``took_beyond`` when it is taken."""
        return self._left and not self.settling() and free_for >= BEYOND_SHARE_AFTER

    def took_beyond(self) -> None:
        self._beyond = (self.names, time.monotonic())

    def _keeps_beyond(self) -> bool:
        """A watch taken past the share is kept: the replicas alive are the same as then, for
        at most ``beyond_hold`` seconds."""
        if self._beyond is None:
            return False
        names, since = self._beyond
        if names == self.names and time.monotonic() - since < self.beyond_hold:
            return True
        self._beyond = None
        return False

    def should_hand_over(self, watch: str) -> bool:
        """This replica holds more than its share and ``watch`` is one past it (name order,
        so every watcher of this replica agrees which ones go); not while it keeps watches
        taken past its share (``may_take_beyond``)."""
        share = self.share
        return len(self.held) > share and watch in sorted(self.held)[share:] and not self._keeps_beyond()
