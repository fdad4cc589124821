"""Credentials are built in one place, ``AccountLogins.credentials``, and handed to the edges:
an SMTP, IMAP or POP3 connection never reads a password from the config itself, and one to a
server that needs a login, handed none, is refused when it is made (a caller's bug)."""

from __future__ import annotations

import pytest
from postroom.auth.accounts import AccountLogins
from postroom.config.model import ImapConfig, Pop3Config, SmtpConfig
from postroom.credentials import PasswordCredentials
from postroom.incoming.imap import ImapConnection
from postroom.incoming.pop3 import Pop3Connection
from postroom.outgoing.smtp import SmtpConnection

WITH_PASSWORD = {"host": "127.0.0.1", "port": 1, "username": "alice@example.test", "password": "pw"}
EDGES = [(SmtpConnection, SmtpConfig), (ImapConnection, ImapConfig), (Pop3Connection, Pop3Config)]


def test_account_logins_give_the_configs_password_or_no_login():
    server = SmtpConfig.model_validate(WITH_PASSWORD)
    given = AccountLogins().credentials("alice", server)
    assert isinstance(given, PasswordCredentials)
    assert (given.username, given.password.get_secret_value()) == ("alice@example.test", "pw")
    assert given.mechanism == "password"
    assert AccountLogins().credentials("alice", SmtpConfig(host="127.0.0.1", port=1)) is None


@pytest.mark.parametrize(("edge", "model"), EDGES, ids=["smtp", "imap", "pop3"])
def test_an_edge_handed_no_credentials_for_a_password_server_refuses(edge, model):
    server = model.model_validate(WITH_PASSWORD)
    with pytest.raises(ValueError, match="password credentials"):
        edge("alice", server)
    given = AccountLogins().credentials("alice", server)
    assert edge("alice", server, given).credentials is given


@pytest.mark.parametrize(("edge", "model"), EDGES, ids=["smtp", "imap", "pop3"])
def test_an_edge_to_a_server_without_a_login_needs_none(edge, model):
    assert edge("alice", model(host="127.0.0.1", port=1)).credentials is None
