"""How tests log in to a server: as the daemon does, with the credentials ``AccountLogins``
builds from the server's config (the edges never read a password from the config)."""

from __future__ import annotations

from postroom.auth.accounts import AccountLogins
from postroom.config.model import ServerConfig
from postroom.credentials import Credentials


def login(server: ServerConfig | None, account: str = "test") -> Credentials | None:
    """The config's password login for ``server`` (None: it takes us without one)."""
    if server is None:
        raise ValueError("no such server in the account's config")
    return AccountLogins().credentials(account, server)
