"""Bounce reports for tests: Postfix's real DSN from the lab, re-addressed to a signed VERP
return path (or to anything else, for the forgeries)."""

from __future__ import annotations

from pathlib import Path

from postroom.mail.verp import return_path

# Postfix 3.7's own DSN, captured in the lab: a merge row to nobody@dead.example.test, which
# the lab routes to the error(8) transport after accepting it (tests/lab/config.py).
POSTFIX = Path(__file__).parents[1] / "data" / "dsn" / "postfix-error-5.1.1.eml"
OLD_RETURN_PATH = b"alice+bounce-0123456789abcdef0123456789abcdef@example.test"  # the old scheme's
DEAD = "nobody@dead.example.test"
KEY = b"k" * 32


def postfix_dsn(
    delivered_to: str | None = None,
    *,
    to: str | None = None,
    names: str = DEAD,
) -> bytes:
    """The lab's DSN delivered to ``delivered_to`` (its Delivered-To, Received ``for``, the
    return path in its report), with ``To:`` set to ``to`` (default: the same) and naming
    ``names`` as the recipient that failed."""
    raw = POSTFIX.read_bytes()
    if to is not None:
        raw = raw.replace(b"\nTo: " + OLD_RETURN_PATH, b"\nTo: " + to.encode(), 1)
    if delivered_to is not None:
        raw = raw.replace(OLD_RETURN_PATH, delivered_to.encode())
    return raw.replace(DEAD.encode(), names.encode())


def signed(outbox_id: int, recipient: str = DEAD, *, key: bytes = KEY, address: str = "alice@example.test") -> str:
    """The VERP return path the sender uses for ``recipient`` of outbox row ``outbox_id``."""
    return return_path(key, address, "+", outbox_id, recipient)
