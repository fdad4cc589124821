"""The POP3 edge against the lab's real Dovecot: implicit TLS, STLS, errors, UIDL/RETR/DELE."""

from __future__ import annotations

import pytest
from postroom.config.model import Pop3Config
from postroom.errors import AuthError, ServerBusy, ServerConnectError, TLSError, is_transient
from postroom.incoming.pop3 import Pop3Connection

from tests.support.inbox import USER, raw_message
from tests.support.logins import login
from tests.support.scripted_pop3 import scripted_pop3


def pop3_cfg(lab, **overrides) -> Pop3Config:
    values = {
        "host": "127.0.0.1",
        "port": lab.ports.pop3s,
        "security": "tls",
        "username": lab.address(USER),
        "password": lab.password(USER),
        "ca_file": lab.ca_file,
        "timeout": 10,
    }
    values.update(overrides)
    return Pop3Config.model_validate(values)


async def test_stls_uidl_retr_and_dele_committed_by_quit(clean_lab):
    clean_lab.deliver_many(USER, [raw_message(1, subject="first"), raw_message(2, subject="second")])
    server_cfg = pop3_cfg(clean_lab, port=clean_lab.ports.pop3, security="starttls")
    conn = Pop3Connection(USER, server_cfg, login(server_cfg))
    await conn.connect()
    listing = await conn.uidl()
    assert sorted(listing.values()) == [1, 2]
    first = await conn.retr(1)
    assert b"Subject: first" in first and first.endswith(b"\r\n")
    await conn.dele(1)
    await conn.quit()

    server_cfg = pop3_cfg(clean_lab)
    again = Pop3Connection(USER, server_cfg, login(server_cfg))
    await again.connect()
    try:
        left = await again.uidl()
        assert len(left) == 1 and set(left) <= set(listing)
        assert b"Subject: second" in await again.retr(1)
    finally:
        await again.close()


async def test_dele_without_quit_is_not_committed(clean_lab):
    clean_lab.deliver(USER, raw_message(1))
    server_cfg = pop3_cfg(clean_lab)
    conn = Pop3Connection(USER, server_cfg, login(server_cfg))
    await conn.connect()
    await conn.dele(1)
    await conn.close()
    assert len(clean_lab.fetch_all(USER)) == 1


async def test_wrong_password_is_an_auth_error(lab):
    server_cfg = pop3_cfg(lab, password="wrong")
    conn = Pop3Connection(USER, server_cfg, login(server_cfg))
    with pytest.raises(AuthError):
        await conn.connect()
    await conn.close()


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_untrusted_certificate_is_a_tls_error(lab, monkeypatch, security):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    port = lab.ports.pop3s if security == "tls" else lab.ports.pop3
    server_cfg = pop3_cfg(lab, ca_file=None, security=security, port=port)
    conn = Pop3Connection(USER, server_cfg, login(server_cfg))
    with pytest.raises(TLSError, match="certificate"):
        await conn.connect()
    await conn.close()


@pytest.mark.parametrize(
    ("pass_reply", "error"),
    [
        (b"-ERR [IN-USE] Mailbox is locked by another POP3 session\r\n", ServerBusy),  # retry soon
        (b"-ERR [SYS/TEMP] Temporary server failure\r\n", ServerBusy),
        (b"-ERR [AUTH] Authentication failed.\r\n", AuthError),  # fix the password
        (None, ServerConnectError),  # the connection drops at PASS (a server restarting)
    ],
    ids=["in-use", "sys-temp", "refused", "dropped"],
)
async def test_a_failed_login_is_permanent_only_when_the_server_refuses_it(pass_reply, error):
    def answer(command: bytes) -> bytes | None:
        if command.upper().startswith(b"USER"):
            return b"+OK\r\n"
        return pass_reply

    with scripted_pop3(answer) as server:
        cfg = Pop3Config(host="127.0.0.1", port=server.port, security="none", username="u", password="p", timeout=5)
        conn = Pop3Connection("x", cfg, login(cfg))
        with pytest.raises(error) as raised:
            await conn.connect()
        await conn.close()
    assert [line.split()[0] for line in server.lines] == [b"USER", b"PASS"]
    assert is_transient(raised.value) is (error is not AuthError)


@pytest.mark.parametrize("drop_at", [b"DELE", b"QUIT"])
async def test_a_connection_dropped_after_dele_is_transient(drop_at):
    """A server that goes away in the middle of a session (a restart) is a lost connection to
    retry soon, not a refusal to fix by hand: the maildrop must not stop for 15 minutes."""

    def answer(command: bytes) -> bytes | None:
        verb = command.upper().split(b" ")[0]
        if verb == drop_at:
            return None  # close without a word
        return b"+OK\r\n"

    with scripted_pop3(answer) as server:
        cfg = Pop3Config(host="127.0.0.1", port=server.port, security="none", username="u", password="p", timeout=5)
        conn = Pop3Connection("x", cfg, login(cfg))
        await conn.connect()
        with pytest.raises(ServerConnectError) as raised:
            await conn.dele(1)
            await conn.quit()
        await conn.close()
    assert is_transient(raised.value)
    assert drop_at in [line.split()[0] for line in server.lines]
