"""The envelope of a delivered message, read from the headers the delivering server wrote:
what Sieve's ``envelope`` test sees, and where the guards and actions send a reply or a
bounce (the sender)."""

from __future__ import annotations

import email.utils
from dataclasses import dataclass

from postroom.incoming.message import ParsedMessage


@dataclass(frozen=True)
class Envelope:
    """What ``envelope`` tests see, read from the delivered message (``envelope_of``)."""

    sender: str  # "" for the null sender
    recipient: str


def envelope_of(msg: ParsedMessage, account_address: str) -> Envelope:
    """The envelope after delivery, from the headers the delivering server wrote: the sender
    from ``Return-Path`` (else the From address), the recipient from ``Delivered-To`` (else
    ``X-Original-To``, else the account's address)."""
    sender = _first_address(msg.first("Return-Path"))
    if sender is None:
        sender = msg.from_[0].addr if msg.from_ else ""
    recipient = _first_address(msg.first("Delivered-To")) or _first_address(msg.first("X-Original-To"))
    return Envelope(sender, recipient or account_address)


def _first_address(value: str) -> str | None:
    if not value.strip():
        return None
    pairs = email.utils.getaddresses([value])
    return pairs[0][1] if pairs and pairs[0][1] else ("" if value.strip() == "<>" else None)
