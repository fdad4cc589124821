"""SmtpConnection against the lab's real Postfix (STARTTLS + AUTH), and aiosmtpd for the faults
Postfix can't be made to produce (no STARTTLS offered, implicit TLS, 451/554 replies)."""

from __future__ import annotations

import asyncio
import re

import pytest
from postroom.errors import AuthError, ServerBusy, ServerConnectError, ServerRejected, TLSError, is_transient
from postroom.outgoing.smtp import SmtpConnection

from tests.support.fake_smtp import (
    FaultyHandler,
    fake_smtp,
    lab_smtp,
    make_raw,
    message_ids,
    plain_smtp,
    server_tls,
)
from tests.support.logins import login

ALICE, BOB, CAROL = "alice@example.test", "bob@example.test", "carol@example.test"


async def test_starttls_auth_delivers_through_postfix(clean_lab):
    lab = clean_lab
    message_id, raw = make_raw(ALICE, [BOB], "hello over starttls")
    server_cfg = lab_smtp(lab, "alice")
    async with SmtpConnection("alice", server_cfg, login(server_cfg)) as conn:
        result = await conn.send(ALICE, [BOB], raw)
    assert result.accepted == [BOB]
    assert not result.refused_temporary and not result.refused_permanent
    arrived = await _wait(lab, "bob", 1)
    assert message_ids(arrived) == [message_id]


async def test_unknown_recipient_refused_the_others_delivered(clean_lab):
    lab = clean_lab
    nobody = "nobody@example.test"
    message_id, raw = make_raw(ALICE, [BOB, nobody, CAROL], "partly refused")
    server_cfg = lab_smtp(lab, "alice")
    async with SmtpConnection("alice", server_cfg, login(server_cfg)) as conn:
        result = await conn.send(ALICE, [BOB, nobody, CAROL], raw)
        # The refusal reset nothing: the same connection carries the next message.
        second_id, second = make_raw(ALICE, [BOB], "after a refusal")
        again = await conn.send(ALICE, [BOB], second)
    assert result.accepted == [BOB, CAROL]
    assert list(result.refused_permanent) == [nobody]
    assert result.refused_permanent[nobody].startswith("550")
    assert again.accepted == [BOB]
    assert message_ids(await _wait(lab, "carol", 1)) == [message_id]
    assert sorted(message_ids(await _wait(lab, "bob", 2))) == sorted([message_id, second_id])


async def test_all_recipients_refused_sends_nothing(clean_lab):
    lab = clean_lab
    _, raw = make_raw(ALICE, ["x@example.test"], "nobody home")
    server_cfg = lab_smtp(lab, "alice")
    async with SmtpConnection("alice", server_cfg, login(server_cfg)) as conn:
        result = await conn.send(ALICE, ["x@example.test", "y@example.test"], raw)
        assert result.accepted == []
        assert set(result.refused_permanent) == {"x@example.test", "y@example.test"}
        assert conn.connected  # RSET, not a dropped connection


async def test_bad_password_is_auth_error(lab):
    cfg = lab_smtp(lab, "alice", password="wrong-password")
    conn = SmtpConnection("alice", cfg, login(cfg))
    with pytest.raises(AuthError, match="535") as caught:
        await conn.connect()
    assert "wrong-password" not in str(caught.value)
    assert not conn.connected


async def test_untrusted_certificate_is_tls_error(lab, monkeypatch):
    # No ca_file and no SSL_CERT_FILE: the system store does not know the lab's CA.
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    server_cfg = lab_smtp(lab, "alice", ca_file=None)
    conn = SmtpConnection("alice", server_cfg, login(server_cfg))
    with pytest.raises(TLSError, match="certificate"):
        await conn.connect()
    assert not conn.connected


async def test_hostname_is_checked(lab):
    # A trusted certificate for the wrong name: the lab cert names localhost and 127.0.0.1.
    handler = FaultyHandler()
    async with fake_smtp(handler, implicit_tls=server_tls(lab), host="127.0.0.2") as port:
        cfg = plain_smtp(port, host="127.0.0.2", security="tls", ca_file=lab.ca_file)
        conn = SmtpConnection("alice", cfg, login(cfg))
        with pytest.raises(TLSError, match=re.escape("127.0.0.2")):
            await conn.connect()
    assert handler.mail_froms == []


async def test_starttls_required_but_not_offered_sends_nothing():
    handler = FaultyHandler()
    async with fake_smtp(handler) as port:
        cfg = plain_smtp(port, security="starttls")
        conn = SmtpConnection("alice", cfg, login(cfg))
        _, raw = make_raw(ALICE, [BOB], "must not go out in plaintext")
        with pytest.raises(TLSError, match="STARTTLS"):
            await conn.send(ALICE, [BOB], raw)
    assert handler.sessions == 1
    assert handler.mail_froms == [] and handler.received == []


async def test_implicit_tls(lab):
    # The lab's Postfix has no SMTPS port; aiosmtpd speaks implicit TLS with the lab cert.
    handler = FaultyHandler()
    async with fake_smtp(handler, implicit_tls=server_tls(lab)) as port:
        cfg = plain_smtp(port, security="tls", ca_file=lab.ca_file)
        message_id, raw = make_raw(ALICE, [BOB], "over implicit tls")
        async with SmtpConnection("alice", cfg, login(cfg)) as conn:
            result = await conn.send("", [BOB], raw)
    assert result.accepted == [BOB]
    assert handler.mail_froms == ["<>"]  # "" went out as the null sender
    assert message_ids([handler.received[0].content]) == [message_id]


async def test_security_none_never_upgrades(lab):
    # The server offers STARTTLS, but "none" means plaintext: aiosmtplib must not upgrade.
    handler = FaultyHandler()
    async with fake_smtp(handler, starttls=server_tls(lab)) as port:
        async with SmtpConnection("alice", plain_smtp(port, security="none")) as conn:
            await conn.send(ALICE, [BOB], make_raw(ALICE, [BOB], "plain")[1])
            assert conn._smtp is not None and conn._smtp.get_transport_info("sslcontext") is None
    assert len(handler.received) == 1


async def test_rcpt_451_is_temporary_and_data_554_is_rejected():
    handler = FaultyHandler(rcpt_faults={CAROL: ["451 4.3.0 try again later"]})
    async with fake_smtp(handler) as port:
        conn = SmtpConnection("alice", plain_smtp(port, security="none"))
        _, raw = make_raw(ALICE, [BOB, CAROL], "some later")
        result = await conn.send(ALICE, [BOB, CAROL], raw)
        assert result.accepted == [BOB]
        assert result.refused_temporary == {CAROL: "451 4.3.0 try again later"}
        handler.data_reply = "554 5.6.0 content rejected"
        with pytest.raises(ServerRejected, match=re.escape("554 5.6.0 content rejected")) as caught:
            await conn.send(ALICE, [BOB], raw)
        assert caught.value.code == 554
        assert not conn.connected  # the next send reconnects
        handler.data_reply = "452 4.3.1 insufficient storage"
        with pytest.raises(ServerBusy, match="452") as busy:
            await conn.send(ALICE, [BOB], raw)
        assert busy.value.code == 452
        await conn.close()
    assert handler.sessions == 2  # one reconnect after the 554; the 452 closed the second


async def test_connection_refused_is_transient():
    handler = FaultyHandler()
    async with fake_smtp(handler) as port:
        pass  # closed again: nothing listens on port now
    conn = SmtpConnection("alice", plain_smtp(port, security="none"))
    with pytest.raises(ServerConnectError):
        await conn.connect()


async def test_unknown_host_is_a_transient_connect_error_and_a_missing_ca_file_is_not(tmp_path):
    # A DNS failure is an OSError but no ConnectionError: only this edge's table keeps it a
    # retry (is_transient no longer takes any OSError). A CA file that isn't there stays so.
    conn = SmtpConnection("alice", plain_smtp(25, host="no-such-host.invalid", security="none"))
    with pytest.raises(ServerConnectError) as unknown:
        await conn.connect()
    assert is_transient(unknown.value) and "no-such-host.invalid" in str(unknown.value)
    conn = SmtpConnection("alice", plain_smtp(25, security="starttls", ca_file=tmp_path / "gone.pem"))
    with pytest.raises(TLSError, match=r"gone\.pem") as missing:
        await conn.connect()
    assert not is_transient(missing.value) and isinstance(missing.value.__cause__, FileNotFoundError)


async def _wait(lab, user: str, count: int) -> list[bytes]:
    return await asyncio.to_thread(lab.wait_for_messages, user, count)


async def test_postfix_offers_pipelining_and_chunking_so_sends_are_pipelined(clean_lab):
    # Postfix advertises PIPELINING and CHUNKING: one write per message (BDAT), replies read
    # in order; several messages over the same connection all arrive, in full.
    lab = clean_lab
    sent = [make_raw(ALICE, [BOB], f"pipelined {i}") for i in range(3)]
    server_cfg = lab_smtp(lab, "alice")
    async with SmtpConnection("alice", server_cfg, login(server_cfg)) as conn:
        assert conn.pipelined
        for _message_id, raw in sent:
            result = await conn.send(ALICE, ["Bob <bob@example.test>"], raw)
            assert result.accepted == ["Bob <bob@example.test>"]
    arrived = await _wait(lab, "bob", 3)
    assert sorted(message_ids(arrived)) == sorted(m for m, _ in sent)
