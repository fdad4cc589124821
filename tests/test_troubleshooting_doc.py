"""The README's "When something goes wrong" table says what postroom shows for each failure: each
row's shown message is produced here by the real code path (the lab's Dovecot for TLS and
logins, the real sign-in proof, store lookup, vault, config loader and HTTP listener) and must
contain the row's text. A row without a driver here, or a driver without its row, fails too."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from postroom.auth.signin import Obtained, prove_mailbox, wrong_mailbox
from postroom.auth.vault import TokenVault
from postroom.bootstrap import no_store_here
from postroom.config import load_config
from postroom.config.model import AccountConfig, ImapConfig
from postroom.config.settings import Settings
from postroom.credentials import OAuth2Credentials
from postroom.errors import PostroomError
from postroom.http import HttpServer
from postroom.incoming.imap import ImapConnection
from postroom.metrics import Metrics

from tests.lab.mail_lab import MailLab
from tests.lab.oauth2 import OAuth2Lab
from tests.support.logins import login

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SECTION = "## When something goes wrong"


def table_rows() -> dict[str, str]:
    """What happened → what postroom shows, from the section's first table."""
    text = README.read_text()
    section = text[text.index(SECTION) :]
    section = section[: re.search(r"\n#{2,3} ", section[len(SECTION) :]).start() + len(SECTION)]  # type: ignore[union-attr]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) == 3 and not set(cells[0]) <= {"-"} and cells[0] != "What happened":
            rows[cells[0]] = _code(cells[1])
    return rows


def _code(cell: str) -> str:
    double = re.fullmatch(r"``\s?(.*?)\s?``", cell)
    if double:
        return double.group(1)
    single = re.fullmatch(r"`([^`]*)`", cell)
    assert single, f"the shown message must be a code span: {cell!r}"
    return single.group(1)


async def _failure(action: Awaitable[object]) -> str:
    try:
        await action
    except PostroomError as exc:
        return str(exc)
    raise AssertionError("no failure")


async def _imap(config: ImapConfig, credentials: object = None) -> str:
    connection = ImapConnection("alice", config, credentials or login(config))  # type: ignore[arg-type]
    try:
        return await _failure(connection.connect())
    finally:
        await connection.close()


class FixedToken:
    def __init__(self, token: str):
        self.value = token

    async def token(self, *, refused: str | None = None) -> str:
        return self.value


ACCOUNT = AccountConfig.model_validate(
    {
        "address": "alice@example.org",
        "oauth2": {"provider": "generic", "token_url": "http://127.0.0.1:1/token", "client_id": "c"},
        "imap": {"host": "127.0.0.1", "port": 1, "username": "alice@example.org", "auth": "xoauth2"},
    }
)


async def ready() -> tuple[bool, dict[str, str]]:
    return True, {}


class Quiet:
    def tell(self, text: str) -> None:
        pass


def drivers(lab: MailLab, oauth2_lab: OAuth2Lab, tmp_path: Path) -> dict[str, Callable[[], Awaitable[str]]]:
    alice = {"username": lab.address("alice"), "password": lab.password("alice")}

    async def tls_on_starttls_port() -> str:
        return await _imap(
            ImapConfig(host="127.0.0.1", port=lab.ports.imap, security="tls", ca_file=lab.ca_file, **alice)
        )

    async def untrusted() -> str:
        return await _imap(ImapConfig(host="127.0.0.1", port=lab.ports.imaps, security="tls", **alice))

    async def wrong_password() -> str:
        config = ImapConfig(
            host="127.0.0.1", port=lab.ports.imaps, ca_file=lab.ca_file, username=alice["username"], password="nope"
        )
        message = await _imap(config)
        assert "b'" not in message and 'b"' not in message, message  # the reply as text
        return message

    async def refused_token() -> str:
        bobs = oauth2_lab.access_token("bob")
        config = ImapConfig(
            host="127.0.0.1",
            port=oauth2_lab.ports.imaps,
            ca_file=oauth2_lab.ca_file,
            username="alice@example.test",
            auth="xoauth2",
        )
        credentials = OAuth2Credentials("alice@example.test", "xoauth2", FixedToken(bobs))
        message = await _imap(config, credentials)
        assert "postroom auth login alice" in message
        return message

    async def wrong_user() -> str:
        return await _failure(prove_mailbox("alice", ACCOUNT, Obtained("r", "a", "bob@example.org"), "a", Quiet()))  # type: ignore[arg-type]

    async def another_mailbox() -> str:
        return str(wrong_mailbox("alice", "alice@example.org", None, "imap refused it"))

    async def no_store() -> str:
        return no_store_here(Settings(state_dir=tmp_path / "elsewhere"))

    async def wrong_key() -> str:
        sealed = TokenVault([Fernet.generate_key().decode()]).seal("a refresh token")
        return await _failure(
            asyncio.to_thread(TokenVault([Fernet.generate_key().decode()]).open, sealed, account="alice")
        )

    async def no_key() -> str:
        return await _failure(asyncio.to_thread(TokenVault.from_secrets, lambda name: None))

    async def missing_secret() -> str:
        config = tmp_path / "postroom.yaml"
        config.write_text(
            "accounts:\n  me:\n    address: me@example.org\n    smtp: {host: mail.example.org, username: me,"
            ' password: "${MAIL_PASSWORD}"}\n'
        )
        return await _failure(asyncio.to_thread(load_config, Settings(config=config), environ={}))

    async def busy_port() -> str:
        first = HttpServer("127.0.0.1:0", registry=Metrics().registry, readiness=ready)
        host, port = await first.start() or ("", 0)
        try:
            second = HttpServer(f"{host}:{port}", registry=Metrics().registry, readiness=ready)
            return await _failure(second.start())
        finally:
            await first.stop()

    return {
        "`security: tls` on a STARTTLS port (587, 143, 110)": tls_on_starttls_port,
        "The server's certificate is not trusted": untrusted,
        "A password login is refused": wrong_password,
        "An OAuth2 token is refused by the mail server": refused_token,
        "Signed in as the wrong user": wrong_user,
        "The token of another mailbox (no id token to tell who)": another_mailbox,
        "A command run with another state directory than the daemon's": no_store,
        "`POSTROOM_TOKEN_KEY` is not the one the token was stored with": wrong_key,
        "No `POSTROOM_TOKEN_KEY` at all": no_key,
        "A secret's file is missing": missing_secret,
        "The HTTP port is taken": busy_port,
    }


async def test_each_rows_message_is_what_the_code_says(
    lab: MailLab, oauth2_lab: OAuth2Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)  # the lab's CA is trusted only where named
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    rows = table_rows()
    driven = drivers(lab, oauth2_lab, tmp_path)
    assert set(rows) == set(driven)
    differ = []
    for happened, shown in rows.items():
        said = await driven[happened]()
        if shown not in said:
            differ.append(f"{happened}: the README says {shown!r}, postroom says {said!r}")
    assert not differ, "\n".join(differ)
