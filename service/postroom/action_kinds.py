"""Every kind of rule action, in one table: what the config check and the executor need to know.

For each kind: the executor phase it runs in, whether it needs IMAP (a POP3 maildrop can't
move or flag) or an SMTP account (it sends mail), whether it may run on a message never fetched
(if every planned kind may, an IMAP watcher decides rules by SEARCH alone and fetches nothing),
and, for the kinds done on an IMAP folder, how actions are grouped into one server
call, how an action left in doubt by a crash is checked on the server, and the call itself.
A kind here is what the executor runs: the YAML key, except ``copy_to``/``move_to``, a
``copy``/``move`` to another account (``config.rules._Action.planned_kind``).

Adding a kind of action (the recipe; Sieve's ``vacation`` was added this way):

1. one ``Kind`` member and one ``ActionKind`` row below (its phase, what it needs);
2. one member of the config union (``config.rules``: a ``_Action`` subclass, registered in
   ``ACTION_MODELS`` and ``ActionConfig``), which is also what ``PlannedAction.action`` holds;
3. one ``case`` in the executor (``incoming.actions``) for its phase - and, when it acts on
   the folder, one ``MailboxOps`` method and a ``case`` in ``incoming.actions._folder_args``.

Strings appear only where the ledger stores a kind (its ``kind`` column): ``Kind`` is a
``StrEnum``, so its members are those strings.

Pure data: the calls are written against ``MailboxOps``, the protocol of what the executor may
do to a folder, which lives here beside them, so the config layer reads this table without
importing the incoming edge, and the incoming edge implements the protocol from here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Protocol


class MailboxOps(Protocol):
    """What the executor may do to the folder a batch came from (IMAP). All calls batch UIDs.

    Implementations run on the connection's own thread; callers `await` them.
    """

    account: str
    folder: str
    uidvalidity: int

    async def fetch_raw(self, uids: Collection[int]) -> dict[int, bytes]: ...
    async def existing_uids(self, uids: Collection[int]) -> set[int]: ...
    async def flags(self, uids: Collection[int]) -> dict[int, frozenset[str]]: ...
    async def move(self, uids: Collection[int], folder: str) -> None: ...  # UID MOVE, or COPY + UID EXPUNGE
    async def copy(self, uids: Collection[int], folder: str) -> None: ...
    async def ensure_folder(self, folder: str) -> None: ...  # CREATE unless it exists
    async def add_flags(self, uids: Collection[int], flags: Sequence[str]) -> None: ...
    async def remove_flags(self, uids: Collection[int], flags: Sequence[str]) -> None: ...
    async def delete(self, uids: Collection[int]) -> None: ...  # \Deleted + UID EXPUNGE of just these


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


class Kind(StrEnum):
    """Every kind the executor runs; the value is what the ledger's ``kind`` column holds."""

    FORWARD = "forward"
    REDIRECT = "redirect"
    REPLY = "reply"
    VACATION = "vacation"
    SAVE = "save"
    WEBHOOK = "webhook"
    COPY = "copy"
    CREATE_FOLDER = "create_folder"
    FLAG = "flag"
    UNFLAG = "unflag"
    MARK_READ = "mark_read"
    MOVE = "move"
    DELETE = "delete"
    COPY_TO = "copy_to"
    MOVE_TO = "move_to"
    STOP = "stop"


Args = tuple[str, ...]
FolderCall = Callable[["MailboxOps", list[int], Args], Awaitable[None]]
# which of these in-doubt UIDs the server already shows done
DoneCheck = Callable[["MailboxOps", Collection[int], Args], Awaitable[set[int]]]


@dataclass(frozen=True)
class ActionKind:
    name: Kind
    phase: Phase | None  # None: not executed (``stop`` only steers evaluation)
    imap_only: bool = False
    sends: bool = False
    # needs nothing of the message, and doing it again after a UIDVALIDITY change (when the
    # unfetched message is not recognised as handled) is harmless
    without_fetch: bool = False
    call: FolderCall | None = None  # folder kinds only
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


ACTION_KINDS: dict[Kind, ActionKind] = {
    kind.name: kind
    for kind in [
        ActionKind(Kind.FORWARD, Phase.SEND, sends=True),
        ActionKind(Kind.REDIRECT, Phase.SEND, sends=True),
        ActionKind(Kind.REPLY, Phase.SEND, sends=True),
        ActionKind(Kind.VACATION, Phase.SEND, sends=True),  # Sieve's (RFC 5230), or YAML's
        ActionKind(Kind.SAVE, Phase.SAVE),  # checked on disk when in doubt (postroom.incoming.local_save)
        ActionKind(Kind.WEBHOOK, Phase.WEBHOOK),
        # a copy can't be checked cheaply: redone when in doubt (at worst one duplicate copy);
        # not without_fetch, since a second copy after a UIDVALIDITY change would be a duplicate
        ActionKind(
            Kind.COPY,
            Phase.COPY,
            imap_only=True,
            call=lambda box, uids, args: box.copy(uids, args[0]),
        ),
        # Sieve's fileinto :create; planned before the copy or move into that folder. Creating a
        # folder that exists is nothing, so it is redone when in doubt and needs no message
        ActionKind(
            Kind.CREATE_FOLDER,
            Phase.COPY,
            imap_only=True,
            without_fetch=True,
            call=lambda box, uids, args: box.ensure_folder(args[0]),
        ),
        ActionKind(
            Kind.FLAG,
            Phase.FLAG,
            imap_only=True,
            without_fetch=True,
            call=lambda box, uids, args: box.add_flags(uids, list(args)),
            check=_flags_set,
        ),
        ActionKind(
            Kind.UNFLAG,
            Phase.FLAG,
            imap_only=True,
            without_fetch=True,
            call=lambda box, uids, args: box.remove_flags(uids, list(args)),
            check=_flags_clear,
        ),
        # done as flag: \Seen (incoming.actions._folder_args), so one STORE serves both
        ActionKind(Kind.MARK_READ, Phase.FLAG, imap_only=True, without_fetch=True),
        ActionKind(
            Kind.MOVE,
            Phase.TERMINAL,
            imap_only=True,
            without_fetch=True,
            call=lambda box, uids, args: box.move(uids, args[0]),
            check=_gone,
        ),
        ActionKind(
            Kind.DELETE,
            Phase.TERMINAL,
            imap_only=True,
            without_fetch=True,
            call=lambda box, uids, args: box.delete(uids),
            check=_gone,
        ),
        # to another account: APPEND there with an X-Postroom-Id marker, searched for when in doubt
        # (postroom.incoming.transfer); move_to then deletes from this folder. Never without_fetch:
        # after a UIDVALIDITY change the marker differs, so a second APPEND would be a duplicate
        ActionKind(Kind.COPY_TO, Phase.COPY, imap_only=True, written_as="copy"),
        ActionKind(Kind.MOVE_TO, Phase.TERMINAL, imap_only=True, written_as="move"),
        ActionKind(Kind.STOP, None),
    ]
}

IMAP_ONLY: frozenset[Kind] = frozenset(k.name for k in ACTION_KINDS.values() if k.imap_only)
SENDING: frozenset[Kind] = frozenset(k.name for k in ACTION_KINDS.values() if k.sends)
WITHOUT_FETCH: frozenset[Kind] = frozenset(k.name for k in ACTION_KINDS.values() if k.without_fetch)
# the executed kinds of each phase, phases in order
PHASES: tuple[tuple[Phase, frozenset[Kind]], ...] = tuple(
    (phase, frozenset(k.name for k in ACTION_KINDS.values() if k.phase is phase)) for phase in Phase
)
