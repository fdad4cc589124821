"""Finding the one message whose FETCH breaks the connection.

Some servers drop the connection, or say BYE, in the middle of a FETCH when they reach a
message they cannot serve (a damaged file, a crashing parser). The whole batch fails with it,
and the next connection fetches the same batch again: the folder is stuck behind that message
and the watcher reconnects for ever. Which message it is, the failure does not say. So the
UIDs of a batch whose FETCH broke off are fetched in batches a tenth the size next time, down
to one message at a time; a message that breaks its FETCH alone is the culprit. The watcher
counts that failure on the message's inbound row (in the store, so the count survives a
restart), moves the checkpoint past it so the rest of the folder proceeds, retries it with the
inbound table's backoff and sets it aside after ``max_attempts``.

The suspicion itself is kept in memory only: after a restart it takes a few more reconnects
(with the watcher's growing backoff) to narrow the batch down again, none of them counted
against any message.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

SPLIT = 10  # a failed batch's UIDs go in batches this many times smaller next time


class Suspects:
    """uid -> the batch size to fetch it in, for UIDs of batches whose FETCH broke off."""

    def __init__(self) -> None:
        self._uidvalidity: int | None = None
        self._size: dict[int, int] = {}

    def _for(self, uidvalidity: int) -> dict[int, int]:
        if uidvalidity != self._uidvalidity:  # renumbered: old suspicions name other messages
            self._uidvalidity, self._size = uidvalidity, {}
        return self._size

    def any_among(self, uidvalidity: int, uids: Iterable[int]) -> bool:
        size = self._for(uidvalidity)
        return bool(size) and any(uid in size for uid in uids)

    def batches(self, uidvalidity: int, uids: Sequence[int], size: int) -> list[list[int]]:
        """``uids`` (sorted) in batches of ``size``, suspects in the smaller ones they were given."""
        smaller = self._for(uidvalidity)
        out: list[list[int]] = []
        current: list[int] = []
        current_size = size
        for uid in uids:
            wanted = smaller.get(uid, size)
            if current and (wanted != current_size or len(current) >= current_size):
                out.append(current)
                current = []
            current_size = wanted
            current.append(uid)
        if current:
            out.append(current)
        return out

    def broke(self, uidvalidity: int, batch: Sequence[int]) -> int:
        """A batch's FETCH broke off: its UIDs are fetched in smaller batches from now on.
        Returns the new size (1: ``batch`` was a single message, the culprit)."""
        size = max(1, len(batch) // SPLIT)
        self._for(uidvalidity).update(dict.fromkeys(batch, size))
        return size

    def cleared(self, uidvalidity: int, uids: Iterable[int]) -> None:
        """These were fetched: no longer suspect."""
        size = self._for(uidvalidity)
        if size:
            for uid in uids:
                size.pop(uid, None)
