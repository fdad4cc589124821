"""Folders shared out evenly among the replicas alive.

Every replica runs the same config, so each starts a watcher (standing by or working) for all
M watches (IMAP folders and POP3 maildrops). With N replicas alive (heartbeat rows,
``store.replicas``) each should hold at most ceil(M / N). One ``FolderBalance`` per daemon
(per config generation) counts the watches this replica holds and answers two questions:

- may a standing-by watcher claim a free watch? Only while this replica holds fewer than its
  share (checked and claimed under one lock, so two of its watchers can't both take the last
  place);
- should a working watcher hand its watch over? When this replica holds more than its share
  (a replica joined), the watches past the share in name order do, each at a safe point: its
  session stops between batches, then the lease is released, and a replica below its share
  claims it at its next standby try. Every message's actions are in the ledger, so a folder
  changing hands handles no message twice.

A dead replica's row runs out with its leases: the others then count one fewer, their share
grows, and they claim its watches as the leases run out.
"""

from __future__ import annotations

import asyncio
import math


class FolderBalance:
    def __init__(self, watches: int, *, alive: int = 1):
        self.watches = watches  # M: every replica starts the same watchers
        self.alive = max(alive, 1)  # N: set by the daemon's replica heartbeat
        self.held: set[str] = set()  # watches this replica holds now
        self.lock = asyncio.Lock()  # a claim and its count are one step

    @property
    def share(self) -> int:
        return max(1, math.ceil(self.watches / max(self.alive, 1)))

    def may_take(self) -> bool:
        return len(self.held) < self.share

    def should_hand_over(self, watch: str) -> bool:
        """This replica holds more than its share and ``watch`` is one past it (name order,
        so every watcher of this replica agrees which ones go)."""
        share = self.share
        return len(self.held) > share and watch in sorted(self.held)[share:]
