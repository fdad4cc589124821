"""Every kind of rule action, in one table: what the config check and the executor need to know.

For each kind: the executor phase it runs in, whether it needs IMAP (a POP3 maildrop can't
move or flag) or an SMTP account (it sends mail), whether it may run on a message never fetched
(if every planned kind may, an IMAP watcher decides rules by SEARCH alone and fetches nothing),
and, for the kinds done on an IMAP folder, how actions are grouped into one server
call, how an action left in doubt by a crash is checked on the server, and the call itself.
Adding an action is one entry here plus, if it acts on the folder, one ``MailboxOps`` method
(and its schema in ``config.rules``). A kind here is what the executor runs: the YAML key,
except ``copy_to``/``move_to``, a ``copy``/``move`` to another account
(``config.rules._Action.planned_kind``).

Pure data: the calls are written against ``MailboxOps``, imported for type checking only, so
the config layer can read this table without importing the incoming edge.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from postroom.incoming.mailbox import MailboxOps

SEEN = "\\Seen"


class Phase(IntEnum):
    """The executor's phases, in the order they run. UIDs change after TERMINAL, so it is last;
    sending goes first so a forward is stored before a move carries the message away."""

    SEND = 1  # forward / redirect / reply: need the raw message
    SAVE = 2  # into a local Maildir / mbox: needs the raw message
    WEBHOOK = 3
    COPY = 4  # copy, and copy_to (APPEND to another account)
    FLAG = 5
    TERMINAL = 6  # the message leaves the folder: the first such action of a message runs


Args = tuple[str, ...]
# (the kind whose call and check serve the group, its arguments): one server call per group
GroupKey = Callable[[Mapping[str, Any]], tuple[str, Args]]
FolderCall = Callable[["MailboxOps", list[int], Args], Awaitable[None]]
# which of these in-doubt UIDs the server already shows done
DoneCheck = Callable[["MailboxOps", Collection[int], Args], Awaitable[set[int]]]


@dataclass(frozen=True)
class ActionKind:
    name: str
    phase: Phase | None  # None: not executed (``stop`` only steers evaluation)
    imap_only: bool = False
    sends: bool = False
    # needs nothing of the message, and doing it again after a UIDVALIDITY change (when the
    # unfetched message is not recognised as handled) is harmless
    without_fetch: bool = False
    group: GroupKey | None = None  # folder kinds only
    call: FolderCall | None = None
    check: DoneCheck | None = None  # None: redone when in doubt
    written_as: str | None = None  # the action key in the config, when it is not ``name``

    @property
    def key(self) -> str:
        return self.written_as or self.name


async def _gone(box: MailboxOps, uids: Collection[int], args: Args) -> set[int]:
    return set(uids) - await box.existing_uids(uids)


async def _flags_set(box: MailboxOps, uids: Collection[int], args: Args) -> set[int]:
    wanted = {f.lower() for f in args}
    return {uid for uid, has in (await box.flags(uids)).items() if wanted <= {f.lower() for f in has}}


async def _flags_clear(box: MailboxOps, uids: Collection[int], args: Args) -> set[int]:
    wanted = {f.lower() for f in args}
    return {uid for uid, has in (await box.flags(uids)).items() if not wanted & {f.lower() for f in has}}


def _by_folder(kind: str) -> GroupKey:
    return lambda params: (kind, (params["folder"],))


def _by_flags(kind: str) -> GroupKey:
    return lambda params: (kind, tuple(params["flags"]))


ACTION_KINDS: dict[str, ActionKind] = {
    kind.name: kind
    for kind in [
        ActionKind("forward", Phase.SEND, sends=True),
        ActionKind("redirect", Phase.SEND, sends=True),
        ActionKind("reply", Phase.SEND, sends=True),
        ActionKind("save", Phase.SAVE),  # checked on disk when in doubt (postroom.incoming.local_save)
        ActionKind("webhook", Phase.WEBHOOK),
        # a copy can't be checked cheaply: redone when in doubt (at worst one duplicate copy);
        # not without_fetch, since a second copy after a UIDVALIDITY change would be a duplicate
        ActionKind(
            "copy",
            Phase.COPY,
            imap_only=True,
            group=_by_folder("copy"),
            call=lambda box, uids, args: box.copy(uids, args[0]),
        ),
        ActionKind(
            "flag",
            Phase.FLAG,
            imap_only=True,
            without_fetch=True,
            group=_by_flags("flag"),
            call=lambda box, uids, args: box.add_flags(uids, list(args)),
            check=_flags_set,
        ),
        ActionKind(
            "unflag",
            Phase.FLAG,
            imap_only=True,
            without_fetch=True,
            group=_by_flags("unflag"),
            call=lambda box, uids, args: box.remove_flags(uids, list(args)),
            check=_flags_clear,
        ),
        # grouped with flag: \Seen, so one STORE serves both
        ActionKind("mark_read", Phase.FLAG, imap_only=True, without_fetch=True, group=lambda params: ("flag", (SEEN,))),
        ActionKind(
            "move",
            Phase.TERMINAL,
            imap_only=True,
            without_fetch=True,
            group=_by_folder("move"),
            call=lambda box, uids, args: box.move(uids, args[0]),
            check=_gone,
        ),
        ActionKind(
            "delete",
            Phase.TERMINAL,
            imap_only=True,
            without_fetch=True,
            group=lambda params: ("delete", ()),
            call=lambda box, uids, args: box.delete(uids),
            check=_gone,
        ),
        # to another account: APPEND there with an X-Postroom-Id marker, searched for when in doubt
        # (postroom.incoming.transfer); move_to then deletes from this folder. Never without_fetch:
        # after a UIDVALIDITY change the marker differs, so a second APPEND would be a duplicate
        ActionKind("copy_to", Phase.COPY, imap_only=True, written_as="copy"),
        ActionKind("move_to", Phase.TERMINAL, imap_only=True, written_as="move"),
        ActionKind("stop", None),
    ]
}

IMAP_ONLY: frozenset[str] = frozenset(k.name for k in ACTION_KINDS.values() if k.imap_only)
SENDING: frozenset[str] = frozenset(k.name for k in ACTION_KINDS.values() if k.sends)
WITHOUT_FETCH: frozenset[str] = frozenset(k.name for k in ACTION_KINDS.values() if k.without_fetch)
# the executed kinds of each phase, phases in order
PHASES: tuple[tuple[Phase, frozenset[str]], ...] = tuple(
    (phase, frozenset(k.name for k in ACTION_KINDS.values() if k.phase is phase)) for phase in Phase
)
