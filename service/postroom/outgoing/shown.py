"""What postroom tells a person about outgoing mail: the words `postroom outbox`, `postroom
jobs`, `postroom send` and the console share, so each state reads the same everywhere (and
the README's "When outgoing mail goes wrong" quotes them; a test holds it to that).

Pure: an outbox row or a run in, text out.
"""

from __future__ import annotations

from postroom.store.outbox import OutboxItem
from postroom.store.runs import RunRecord

__all__ = [
    "held_next_step",
    "message_state",
    "refused_line",
    "refused_replies",
    "run_outcome",
    "signed_out_step",
]


def message_state(item: OutboxItem) -> str:
    """queued | deferred (tried before, waiting to try again) | held | sending | sent | dead …"""
    if item.status == "queued" and item.attempts:
        return "deferred"
    return item.status


def signed_out_step(account: str) -> str:
    """A signed-out OAuth2 account's next step."""
    return f"signed out: run `postroom auth login {account}`, then reload"


def held_next_step(account: str) -> str:
    """Where a held message's next try would be: it waits for a person, not for a time."""
    return f"held until {account} signs in again (`postroom auth login {account}`)"


def refused_line(recipients: int) -> str:
    return f"{recipients} recipient{'' if recipients == 1 else 's'} refused by the server"


def refused_replies(item: OutboxItem) -> str:
    """Each refused recipient with the server's reply: "bob@x: 550 5.1.1 …; carol@x: …"."""
    return "; ".join(f"{rcpt}: {reply}" for rcpt, reply in sorted(item.refused.items()))


def run_outcome(run: RunRecord) -> str:
    """A run's outcome in one cell: "failed (dead 3)", "done (sent 2, refused 1)", "skipped"."""
    counts = run.outcome.describe()
    return f"{run.state} ({counts})" if counts else run.state
