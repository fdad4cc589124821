"""``copy``/``move`` to another account: APPEND into its IMAP folder (then, for a move, delete
from the folder the message came from).

The appended copy carries one header more than the original, ``X-Postroom-Id: <id>``, derived
from the action's key. It is what makes a retry safe: when the ledger row is in doubt (a crash
after the APPEND but before ``done`` was written) the destination is searched for that header
first, and a message found there is not appended again. A move deletes the source only after
the APPEND (or the search) succeeded, so an in-doubt move whose source UID is already gone was
appended before: nothing is lost and nothing is appended twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from postroom.config.model import Config, ServerConfig
from postroom.credentials import Credentials

from .imap import ImapConnection

MARKER = "X-Postroom-Id"


class Destination(Protocol):
    """Another account's IMAP session, as the executor uses it (``ImapConnection``)."""

    async def ensure_folder(self, folder: str) -> None: ...
    async def select(self, folder: str) -> Any: ...
    async def search_uids(self, criteria: list[Any] | str) -> list[int]: ...
    async def append(self, folder: str, raw: bytes, flags: Sequence[str], when: datetime | None) -> None: ...
    async def close(self) -> None: ...


#: account name -> a connected session to it
Opener = Callable[[str], Awaitable[Destination]]
CredentialsFor = Callable[[str, ServerConfig], Credentials | None]


def transfer_id(action_key: str) -> str:
    """The marker value for one action, stable across retries (an atom: SEARCH takes it as is)."""
    return "pr-" + hashlib.sha256(action_key.encode("utf-8")).hexdigest()[:32]


def marked(raw: bytes, marker: str) -> bytes:
    """``raw`` with the marker header first, in the message's own line ending."""
    eol = b"\r\n" if b"\r\n" in raw[:4096] or not raw else b"\n"
    return f"{MARKER}: {marker}".encode() + eol + raw


async def already_there(dest: Destination, marker: str) -> bool:
    return bool(await dest.search_uids(["HEADER", MARKER, marker]))


def imap_opener(config: Config, credentials: CredentialsFor) -> Opener:
    """Opens a session to an account of ``config`` (validated to have ``imap:``), logged in
    with what ``credentials`` (``AccountLogins.credentials``) gives for it."""

    async def open_account(name: str) -> Destination:
        cfg = config.accounts[name].imap
        if cfg is None:  # the config check refuses this; a gap there must not pass silently
            raise ValueError(f"account {name!r} has no imap: section")
        conn = ImapConnection(name, cfg, credentials(name, cfg))
        await conn.connect()
        return conn

    return open_account
