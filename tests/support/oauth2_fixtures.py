"""OAuth2 fixtures: the OAuth2 lab (Dovecot + Postfix + token server), and a bare token server."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

import pytest

from tests.lab import LabPorts
from tests.lab.mail_lab import running_lab
from tests.lab.oauth2 import OAuth2Lab
from tests.lab.token_server import DEFAULT_LIFETIME, TokenServer
from tests.support.workers import lab_port_offset

# Its own ports, next to the password lab's: a wrong password costs the OAuth2 lab an
# introspection, and a token-server outage turns its password failures temporary.
OAUTH2_LAB_OFFSET = lab_port_offset() + 100
BARE_TOKEN_SERVER_PORT = LabPorts().offset(OAUTH2_LAB_OFFSET).oauth2 + 1


@pytest.fixture(scope="session")
def oauth2_lab_session() -> Iterator[OAuth2Lab]:
    if shutil.which("dovecot") is None or shutil.which("postfix") is None:
        pytest.fail("the OAuth2 lab needs dovecot and postfix; run `bash deploy/setup.sh` as root", pytrace=False)
    with running_lab(lambda root: OAuth2Lab(root, LabPorts().offset(OAUTH2_LAB_OFFSET)), "postroom-oauth2-lab-") as lab:
        yield lab


@pytest.fixture
def oauth2_lab(oauth2_lab_session: OAuth2Lab) -> OAuth2Lab:
    """The session OAuth2 lab, all three servers up, token server knobs back to normal."""
    lab = oauth2_lab_session
    lab.start()
    authority = lab.authority
    authority.fault, authority.rotate, authority.access_lifetime = None, False, DEFAULT_LIFETIME
    return lab


@pytest.fixture
def token_server() -> Iterator[TokenServer]:
    """A token server of its own for one test (fresh state), without mail servers."""
    with TokenServer(BARE_TOKEN_SERVER_PORT) as server:
        yield server


@dataclass
class MemoryKeeper:
    """A keeper in memory: what the provider loads and saves, for tests without a store."""

    token: str | None
    saved: list[str] = field(default_factory=list)
    stale_first: str | None = None  # load() hands this out once (another replica's old read)

    async def load(self) -> str | None:
        if self.stale_first is not None:
            stale, self.stale_first = self.stale_first, None
            return stale
        return self.token

    async def save(self, refresh_token: str, now: datetime) -> None:
        self.token = refresh_token
        self.saved.append(refresh_token)
