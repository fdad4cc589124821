"""postroom's own SMTP, IMAP and POP3 edges logging in with OAuth2 against the real OAuth2 lab
(Dovecot + Postfix + token server): XOAUTH2 and OAUTHBEARER everywhere, POP3's two-step form,
a refused token renewed once, a revoked refresh token stopping only its account, an outage
of the token endpoint staying transient, and `postroom check` logging in with tokens."""

from __future__ import annotations

import asyncio
import poplib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from postroom.auth.accounts import REFRESH_OK, REFRESH_REVOKED, REFRESH_TRANSIENT, AccountLogins, AccountTokens
from postroom.auth.sasl import Mechanism
from postroom.auth.tokens import OAuth2Client, TokenProvider
from postroom.config.model import ImapConfig, OAuth2Config, Pop3Config, ServerConfig, SmtpConfig
from postroom.config.providers import Grant, ProviderName
from postroom.credentials import OAuth2Credentials
from postroom.errors import AuthError, ServerConnectError, TokenRevoked, is_transient
from postroom.incoming.imap import ImapConnection
from postroom.incoming.pop3 import Pop3Connection, sasl_login
from postroom.outgoing.smtp import SmtpConnection
from pydantic import SecretStr

from tests.lab.oauth2 import OAuth2Lab
from tests.support.daemon import ROOT, run_cli
from tests.support.oauth2_fixtures import MemoryKeeper

MECHANISMS: list[Any] = ["xoauth2", "oauthbearer"]
SECRET = "maillab-secret"


def _settings(lab: OAuth2Lab) -> OAuth2Config:
    return OAuth2Config(
        provider=ProviderName.GENERIC,
        token_url=lab.token_server.token_url,
        client_id="maillab",
        client_secret=SecretStr(SECRET),
        scopes=["mail"],
    )


class Refreshes:
    """The refresh hook, recording what the daemon's metrics would count."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, account: str, result: str, expires_at: datetime | None) -> None:
        self.seen.append((account, result))

    def results(self) -> list[str]:
        return [result for _account, result in self.seen]


def _tokens(lab: OAuth2Lab, user: str = "alice", hook: Refreshes | None = None) -> tuple[AccountTokens, MemoryKeeper]:
    keeper = MemoryKeeper(lab.refresh_token(user))
    client = OAuth2Client(
        account=user, token_url=lab.token_server.token_url, client_id="maillab", client_secret=SECRET, scopes=("mail",)
    )
    tokens = AccountTokens(TokenProvider(client, keeper), _settings(lab), on_refresh=hook or Refreshes())
    return tokens, keeper


def _smtp(lab: OAuth2Lab, user: str, mechanism: str) -> SmtpConfig:
    return SmtpConfig(
        host="127.0.0.1",
        port=lab.ports.smtp,
        security="starttls",
        username=lab.address(user),
        auth=mechanism,
        ca_file=lab.ca_file,
        timeout=10,
    )  # type: ignore[arg-type]


def _imap(lab: OAuth2Lab, user: str, mechanism: str) -> ImapConfig:
    return ImapConfig(
        host="127.0.0.1",
        port=lab.ports.imaps,
        security="tls",
        username=lab.address(user),
        auth=mechanism,
        ca_file=lab.ca_file,
        timeout=10,
    )  # type: ignore[arg-type]


def _pop3(lab: OAuth2Lab, user: str, mechanism: str) -> Pop3Config:
    return Pop3Config(
        host="127.0.0.1",
        port=lab.ports.pop3s,
        security="tls",
        username=lab.address(user),
        auth=mechanism,
        ca_file=lab.ca_file,
        timeout=10,
    )  # type: ignore[arg-type]


def _edges(lab: OAuth2Lab, user: str, mechanism: str) -> list[tuple[Callable[..., Any], ServerConfig]]:
    """Each edge's connection class with its server config."""
    return [
        (SmtpConnection, _smtp(lab, user, mechanism)),
        (ImapConnection, _imap(lab, user, mechanism)),
        (Pop3Connection, _pop3(lab, user, mechanism)),
    ]


def _refreshes(lab: OAuth2Lab) -> int:
    return lab.authority.counters["token.refresh_token"]


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_every_edge_logs_in_with_one_shared_token(oauth2_lab: OAuth2Lab, mechanism: Any) -> None:
    tokens, _keeper = _tokens(oauth2_lab)
    before = _refreshes(oauth2_lab)

    async def scenario() -> None:
        for make, cfg in _edges(oauth2_lab, "alice", mechanism):
            credentials = OAuth2Credentials(cfg.username or "", mechanism, tokens)
            conn: Any = make("alice", cfg, credentials)
            await conn.connect()
            await conn.close()

    asyncio.run(scenario())
    assert _refreshes(oauth2_lab) - before == 1  # one token served all three protocols


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_a_refused_token_is_renewed_once_and_the_login_retried(oauth2_lab: OAuth2Lab, mechanism: Any) -> None:
    """The server knows better than our clock: a token it refuses (expired early) is replaced
    by one refresh, on every protocol, and the login goes through."""
    tokens, _keeper = _tokens(oauth2_lab)

    async def scenario() -> None:
        for make, cfg in _edges(oauth2_lab, "alice", mechanism):
            oauth2_lab.authority.expire(await tokens.token())  # cached as fresh, dead on the server
            before = _refreshes(oauth2_lab)
            conn: Any = make("alice", cfg, OAuth2Credentials(cfg.username or "", mechanism, tokens))
            await conn.connect()
            await conn.close()
            assert _refreshes(oauth2_lab) - before == 1, make

    asyncio.run(scenario())


@pytest.mark.parametrize("mechanism", list(Mechanism))
def test_pop3_two_step_form_and_error_challenge(oauth2_lab: OAuth2Lab, mechanism: Mechanism) -> None:
    """RFC 5034's two-step form (what a long Microsoft token needs), forced here with a limit
    of 0; and a refused token answered through its error challenge to a clean -ERR."""
    lab = oauth2_lab

    def login(token: str) -> None:
        pop = poplib.POP3_SSL("127.0.0.1", lab.ports.pop3s, timeout=10, context=lab.ssl_context())
        try:
            sasl_login(pop, mechanism, lab.address("bob"), token, initial_response_max=0)
            assert pop.stat()[0] >= 0  # the session is logged in and usable
        finally:
            pop.close()

    login(lab.access_token("bob"))
    expired = lab.access_token("bob")
    lab.authority.expire(expired)
    with pytest.raises(poplib.error_proto, match="-ERR"):
        login(expired)


def test_a_revoked_refresh_token_stops_only_that_account(oauth2_lab: OAuth2Lab) -> None:
    lab = oauth2_lab
    hook = Refreshes()
    alice, alice_keeper = _tokens(lab, "alice", hook)
    bob, _ = _tokens(lab, "bob", hook)
    logins = AccountLogins({"alice": alice, "bob": bob})

    async def scenario() -> None:
        await alice.token()
        lab.authority.revoke(alice_keeper.token or "")  # its access tokens die with it
        cfg = _imap(lab, "alice", "xoauth2")
        conn = ImapConnection("alice", cfg, logins.credentials("alice", cfg))
        with pytest.raises(TokenRevoked, match="postroom auth login alice"):
            await conn.connect()  # refused → refresh → invalid_grant
        before = len(lab.authority.requests_to("/token"))
        with pytest.raises(TokenRevoked):  # stopped: raised again without asking the endpoint
            await ImapConnection("alice", cfg, logins.credentials("alice", cfg)).connect()
        assert len(lab.authority.requests_to("/token")) == before
        other = _imap(lab, "bob", "xoauth2")
        bob_conn = ImapConnection("bob", other, logins.credentials("bob", other))
        await bob_conn.connect()
        await bob_conn.close()

    asyncio.run(scenario())
    assert set(logins.stopped()) == {"alice"}
    assert ("alice", REFRESH_REVOKED) in hook.seen and ("bob", REFRESH_OK) in hook.seen


def test_token_endpoint_down_is_transient_and_stops_nothing(oauth2_lab: OAuth2Lab) -> None:
    lab = oauth2_lab
    hook = Refreshes()
    tokens, _ = _tokens(lab, "carol", hook)
    cfg = _smtp(lab, "carol", "oauthbearer")
    lab.token_server.stop()
    try:
        with pytest.raises(ServerConnectError) as caught:
            asyncio.run(
                SmtpConnection("carol", cfg, OAuth2Credentials(cfg.username or "", "oauthbearer", tokens)).connect()
            )
        assert is_transient(caught.value)
    finally:
        lab.token_server.start()
    assert tokens.stopped is None and hook.results() == [REFRESH_TRANSIENT]

    async def again() -> None:
        conn = SmtpConnection("carol", cfg, OAuth2Credentials(cfg.username or "", "oauthbearer", tokens))
        await conn.connect()
        await conn.close()

    asyncio.run(again())
    assert hook.results() == [REFRESH_TRANSIENT, REFRESH_OK]


def test_a_token_login_needs_its_credentials(oauth2_lab: OAuth2Lab) -> None:
    with pytest.raises(ValueError, match="OAuth2 credentials"):
        SmtpConnection("alice", _smtp(oauth2_lab, "alice", "xoauth2"))
    with pytest.raises(ValueError, match="OAuth2 credentials"):
        Pop3Connection("alice", _pop3(oauth2_lab, "alice", "xoauth2"))


def test_a_wrong_user_is_refused_after_one_renewal(oauth2_lab: OAuth2Lab) -> None:
    """A token for alice presented as bob: refused, renewed once, refused again → AuthError."""
    tokens, _ = _tokens(oauth2_lab, "alice")
    cfg = _imap(oauth2_lab, "bob", "oauthbearer")
    before = _refreshes(oauth2_lab)
    with pytest.raises(AuthError):
        asyncio.run(ImapConnection("bob", cfg, OAuth2Credentials(cfg.username or "", "oauthbearer", tokens)).connect())
    assert _refreshes(oauth2_lab) - before == 2  # the first token, then the one renewal


CHECK_CONFIG = """\
accounts:
  alice:
    address: {alice}
    oauth2:
      provider: generic
      token_url: {token_url}
      client_id: maillab
      client_secret: "${{CLIENT_SECRET}}"
      refresh_token: "${{ALICE_REFRESH_TOKEN}}"
      grant: {grant}
    smtp: {{host: 127.0.0.1, port: {smtp}, security: starttls, username: {alice}, auth: xoauth2}}
    imap: {{host: 127.0.0.1, port: {imaps}, security: tls, username: {alice}, auth: oauthbearer}}
  bob:
    address: {bob}
    oauth2:
      provider: generic
      token_url: {token_url}
      client_id: maillab
      refresh_token: "${{BOB_REFRESH_TOKEN}}"
      scopes: [mail]
      client_secret: "${{CLIENT_SECRET}}"
    pop3: {{host: 127.0.0.1, port: {pop3s}, security: tls, username: {bob}, auth: xoauth2}}
"""


def test_check_gets_a_token_and_logs_in_everywhere(oauth2_lab: OAuth2Lab, tmp_path: Path) -> None:
    lab = oauth2_lab
    (tmp_path / "postroom.yaml").write_text(
        CHECK_CONFIG.format(
            alice=lab.address("alice"),
            bob=lab.address("bob"),
            token_url=lab.token_server.token_url,
            smtp=lab.ports.smtp,
            imaps=lab.ports.imaps,
            pop3s=lab.ports.pop3s,
            grant=Grant.REFRESH_TOKEN.value,
        )
    )
    (tmp_path / "templates").mkdir()
    env = {
        **lab.env(),
        "PYTHONPATH": str(ROOT),
        "POSTROOM_CONFIG": str(tmp_path / "postroom.yaml"),
        "POSTROOM_TEMPLATES": str(tmp_path / "templates"),
        "POSTROOM_STATE_DIR": str(tmp_path / "state"),
        "CLIENT_SECRET": SECRET,
        "ALICE_REFRESH_TOKEN": lab.refresh_token("alice"),
        "BOB_REFRESH_TOKEN": lab.refresh_token("bob"),
        "POSTROOM_TOKEN_KEY": Fernet.generate_key().decode(),
    }
    done = run_cli(["check"], env)
    assert done.returncode == 0, done.stdout + done.stderr
    for where in ("alice.smtp", "alice.imap", "bob.pop3"):
        assert f"ok   accounts.{where}: connected and logged in as" in done.stdout
    assert "OAUTHBEARER, OAuth2 token" in done.stdout and "XOAUTH2, OAuth2 token" in done.stdout

    env["ALICE_REFRESH_TOKEN"] = "lab-rt.not-a-token"
    done = run_cli(["check"], env)
    assert done.returncode == 1
    assert "FAIL accounts.alice.smtp: TokenRevoked" in done.stdout and "postroom auth login alice" in done.stdout
    assert "ok   accounts.bob.pop3" in done.stdout

    del env["POSTROOM_TOKEN_KEY"]
    done = run_cli(["check"], env)
    assert done.returncode != 0 and "POSTROOM_TOKEN_KEY" in done.stderr


LOGINS_CONFIG = {
    "accounts": {
        "alice": {
            "address": "alice@example.test",
            "oauth2": {"token_url": "http://127.0.0.1:9/token", "client_id": "maillab"},
            "imap": {"host": "127.0.0.1", "username": "alice@example.test", "auth": "oauthbearer"},
        },
        "bob": {
            "address": "bob@example.test",
            "smtp": {"host": "127.0.0.1", "username": "bob@example.test", "password": "pw"},
        },
    },
}


def test_reload_keeps_a_healthy_accounts_tokens_and_rebuilds_a_stopped_or_changed_one(tmp_path: Path) -> None:
    from postroom.auth.vault import TokenVault
    from postroom.config.model import Config
    from postroom.credentials import PasswordCredentials
    from postroom.store import Store

    store = Store.open(f"sqlite:///{tmp_path / 'p.db'}", owner="test")
    vault = TokenVault([Fernet.generate_key().decode()])
    try:
        config = Config.model_validate(LOGINS_CONFIG)
        first = AccountLogins.build(config, store=store.tokens, vault=vault)
        assert set(first.tokens) == {"alice"}  # bob logs in with a password
        bob_smtp = config.accounts["bob"].smtp
        assert bob_smtp is not None and isinstance(first.credentials("bob", bob_smtp), PasswordCredentials)
        imap = config.accounts["alice"].imap
        assert imap is not None
        alice = first.credentials("alice", imap)
        assert isinstance(alice, OAuth2Credentials) and alice.mechanism == "oauthbearer"
        assert alice.tokens is first.tokens["alice"]

        same = AccountLogins.build(config, store=store.tokens, vault=vault, keep=first)
        assert same.tokens["alice"] is first.tokens["alice"]  # its cached token stays good
        first.tokens["alice"].stopped = TokenRevoked("revoked", account="alice", error="invalid_grant")
        assert first.stopped() == {"alice": "revoked"}
        again = AccountLogins.build(config, store=store.tokens, vault=vault, keep=first)
        assert again.tokens["alice"] is not first.tokens["alice"] and again.stopped() == {}
        changed = Config.model_validate(
            {
                **LOGINS_CONFIG,
                "accounts": {
                    **LOGINS_CONFIG["accounts"],
                    "alice": {
                        **LOGINS_CONFIG["accounts"]["alice"],
                        "oauth2": {
                            "token_url": "http://127.0.0.1:9/token",
                            "client_id": "maillab",
                            "refresh_token": "new",
                        },
                    },
                },
            }
        )
        assert (
            AccountLogins.build(changed, store=store.tokens, vault=vault, keep=again).tokens["alice"]
            is not (again.tokens["alice"])
        )
    finally:
        store.close()
