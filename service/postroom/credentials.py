"""How postroom logs in to a mail server: one seam for every protocol.

A server config gives a ``Credentials`` (``ServerConfig.credentials()``); each edge (SMTP,
IMAP, POP3) asks it for the user name, the mechanism and the secret, and logs in by one table
of mechanism -> login call. Today the only mechanism is a password; OAuth2 (XOAUTH2 /
OAUTHBEARER with a token from a token provider) will be another ``Credentials`` whose
``secret()`` fetches a fresh token, plus one row in each edge's table.

The secret is asked for on the event loop, just before each login (a token may have expired
since the last one), never kept on the connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import SecretStr

# The SASL mechanisms postroom can log in with, by the name each edge's login table uses.
Mechanism = Literal["password"]


class Credentials(Protocol):
    """Who to log in as, how, and (asked for at each login) with what secret."""

    @property
    def username(self) -> str: ...

    @property
    def mechanism(self) -> Mechanism: ...

    async def secret(self) -> str:
        """The secret for one login: a password, later an access token."""
        ...


@dataclass(frozen=True)
class PasswordCredentials:
    """A user name and a password from the config (LOGIN / USER+PASS / AUTH PLAIN or LOGIN)."""

    username: str
    password: SecretStr
    mechanism: Mechanism = "password"

    async def secret(self) -> str:
        return self.password.get_secret_value()
