"""A script's decision (``interpret.Outcome``) as the executor's planned actions: the same
typed ``PlannedAction``s YAML rules produce, so there is one executor.

After delivery the message already sits in the watched folder, so:

- keep (and the implicit keep, and fileinto the watched folder) leaves it there: nothing to
  do but its flags;
- fileinto elsewhere is a copy when the message also stays, else the last such folder is a
  move (copies first, then the flags, then the move: IMAP carries the flags along); with
  ``:create`` the folder is created first when it is missing;
- a message neither kept nor filed anywhere (discard, or redirect without :copy) is deleted;
- redirect is redirect, vacation is vacation (with the guards the YAML reply has).

A difference from delivery-time Sieve: IMAP copies carry the flags the message has when it is
copied, so per-folder flags (``fileinto :flags`` differing between two folders) come out as
the flags of the folder the message ends in; the differential test names it.
"""

from __future__ import annotations

from postroom.config.rules import (
    ActionConfig,
    CopyAction,
    CreateFolderAction,
    DeleteAction,
    FlagAction,
    MoveAction,
    RedirectAction,
    RedirectSpec,
    VacationAction,
    VacationSpec,
)
from postroom.incoming.rules import PlannedAction

from .interpret import INBOX, Discard, Outcome, Redirect, Vacation


def planned_actions(outcome: Outcome, *, rule: str, folder: str) -> list[PlannedAction]:
    """``rule`` names the script in the ledger (its idempotency key); ``folder`` is the one
    the message is in."""
    here = {folder, INBOX} if folder.upper() == INBOX else {folder}
    stores = outcome.stores()
    kept = [s for s in stores if s.folder in here or s.folder.upper() == INBOX]
    elsewhere = [s for s in stores if s not in kept]
    actions: list[ActionConfig] = []
    for redirect in (a for a in outcome.actions if isinstance(a, Redirect)):
        actions.append(RedirectAction(redirect=RedirectSpec(to=[redirect.address])))
    for vacation in (a for a in outcome.actions if isinstance(a, Vacation)):
        actions.append(VacationAction(vacation=_vacation_spec(vacation)))
    last = None if kept or not elsewhere else elsewhere[-1]
    for store in elsewhere:
        if store.create:
            actions.append(CreateFolderAction(create_folder=store.folder))
    for store in elsewhere:
        if store is not last:
            actions.append(CopyAction(copy=store.folder))
    final = kept[-1] if kept else last
    if final is not None and final.flags:
        actions.append(FlagAction(flag=list(final.flags)))
    if last is not None:
        actions.append(MoveAction(move=last.folder))
    elif not kept and (any(isinstance(a, Discard) for a in outcome.actions) or not stores):
        actions.append(DeleteAction(delete=True))
    return [PlannedAction(rule, i, action) for i, action in enumerate(actions)]


def _vacation_spec(vacation: Vacation) -> VacationSpec:
    return VacationSpec(
        reason=vacation.reason,
        seconds=vacation.seconds,
        handle=vacation.handle,
        subject=vacation.subject,
        addresses=list(vacation.addresses),
        mime=vacation.mime,
        **({"from": vacation.from_} if vacation.from_ is not None else {}),
    )
