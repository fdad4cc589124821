"""Watchers: one task per (account, folder) that finds new mail and hands it to the executor.

The loop they share (reconnect, backoff, leases, stop, evaluating and handing over) is
``watch_loop``; what each protocol counts as new and how it fetches is ``imap_watcher``
(checkpoint by UID, SEARCH prefilter, IDLE) and ``pop3_watcher`` (UIDL, delete_after).
"""

from postroom.incoming.imap_watcher import ImapWatcher
from postroom.incoming.pop3_watcher import Pop3Watcher
from postroom.incoming.watch_loop import Watcher, WatcherHooks

__all__ = ["ImapWatcher", "Pop3Watcher", "Watcher", "WatcherHooks"]
