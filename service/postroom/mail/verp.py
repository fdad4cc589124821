"""VERP return paths: a per-recipient envelope sender that a bounce can be checked against.

A job message of an account with ``verp: true`` is queued with the *marker* envelope sender
``alice+bounce-@example.test`` (`marker`). When the sender sends it, each recipient gets a
transaction of its own with the return path ``alice+bounce-<outbox id>-<mac>@example.test``
(`envelopes`), where ``<mac>`` is an HMAC over (outbox id, recipient) with a key kept in the
store (or ``POSTROOM_VERP_KEY``). A bounce comes back to that address, so the address it was
delivered to names the outbox row *and* the one recipient the token was made for, and nobody
can make a valid one without the key: not from the Message-ID, not from another recipient's
return path (each recipient sees only their own).

Tokens of the old scheme (the Message-ID's random part) do not verify: a bounce to one is
left to the rules like any other unverified report. A row queued before the change with an
old-scheme envelope sender is signed anew when it is sent.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parseaddr

TAG = "bounce-"
DELIMITERS = "+-="
MAC_CHARS = 24  # hex digits of HMAC-SHA256 kept: 96 bits, and the local part stays short
MAX_ID_DIGITS = 18


@dataclass(frozen=True)
class Token:
    """What a VERP address carries: the outbox row and the MAC for one of its recipients."""

    outbox_id: int
    mac: str


def marker(address: str, delimiter: str = "+") -> str:
    """The envelope sender a job queues for an account with VERP: the sender signs it per
    recipient (`envelopes`)."""
    local, _, domain = address.rpartition("@")
    if not local:
        return address
    return f"{local}{delimiter}{TAG}@{domain}"


def mac(key: bytes, outbox_id: int, recipient: str) -> str:
    """The token's MAC for ``recipient`` (any form, ``Name <a@b>`` too) of outbox row ``outbox_id``."""
    message = f"{outbox_id}\n{bare(recipient)}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:MAC_CHARS]


def bare(recipient: str) -> str:
    return parseaddr(recipient)[1].strip().lower()


def return_path(key: bytes, base: str, delimiter: str, outbox_id: int, recipient: str) -> str:
    """``base`` (the account's address) with the signed token for ``recipient``."""
    local, _, domain = base.rpartition("@")
    return f"{local}{delimiter}{TAG}{outbox_id}-{mac(key, outbox_id, recipient)}@{domain}"


def envelopes(key: bytes, envelope_from: str, outbox_id: int, recipients: Sequence[str]) -> list[tuple[str, list[str]]]:
    """(envelope sender, recipients) per SMTP transaction: one per recipient with its own
    signed return path when ``envelope_from`` is a VERP marker (or an old-scheme return path),
    else one for all, unchanged."""
    split = _split_marker(envelope_from)
    if split is None:
        return [(envelope_from, list(recipients))]
    base, delimiter = split
    return [(return_path(key, base, delimiter, outbox_id, r), [r]) for r in recipients]


def _split_marker(envelope_from: str) -> tuple[str, str] | None:
    """(the account's address, the delimiter) of a marker or old-scheme VERP sender."""
    local, _, domain = envelope_from.rpartition("@")
    at = local.rfind(TAG)
    if at < 2 or local[at - 1] not in DELIMITERS:
        return None
    rest = local[at + len(TAG) :]
    if rest and not (16 <= len(rest) <= 64 and all(c in "0123456789abcdef" for c in rest)):
        return None  # not ours: a token of neither scheme
    return f"{local[: at - 1]}@{domain}", local[at - 1]


def token_from(recipient: str, address: str, delimiter: str = "+") -> Token | None:
    """The token in ``recipient`` if it is a VERP address of ``address`` (unverified: see
    `verify`); else None."""
    local, _, domain = address.lower().rpartition("@")
    r_local, _, r_domain = recipient.strip().strip("<>").lower().rpartition("@")
    prefix = f"{local}{delimiter}{TAG}"
    if r_domain != domain or not r_local.startswith(prefix):
        return None
    ident, dash, signature = r_local[len(prefix) :].partition("-")
    if (
        not dash
        or not ident.isascii()
        or not ident.isdigit()
        or len(ident) > MAX_ID_DIGITS
        or len(signature) != MAC_CHARS
        or not all(c in "0123456789abcdef" for c in signature)
    ):
        return None
    return Token(int(ident), signature)


def verify(key: bytes, token: Token, recipient: str) -> bool:
    """Whether ``token`` was made for ``recipient`` (in constant time)."""
    return hmac.compare_digest(token.mac, mac(key, token.outbox_id, recipient))
