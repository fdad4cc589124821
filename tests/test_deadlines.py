"""Deadlines, not read timeouts: a server that answers a byte at a time never lets a socket
timeout trip (each read is quick), so every IMAP and POP3 command and every SMTP connect and
transaction has a deadline for the whole of it. Real socket servers drip the replies; the
deadlines here are short, the per-read timeouts longer than the whole drip would need. Without
the deadline each of these operations would succeed, late. And a stop (the caller cancelled)
cuts a blocked read at once, so no worker thread outlives its connection."""

from __future__ import annotations

import asyncio

import pytest
from postroom.config.model import ImapConfig, Pop3Config
from postroom.errors import ServerTimeout, is_transient
from postroom.incoming.imap import ImapConnection
from postroom.incoming.pop3 import Pop3Connection
from postroom.outgoing.smtp import SmtpConnection

from tests.support.fake_smtp import dripping_smtp, make_raw, plain_smtp
from tests.support.logins import login
from tests.support.scripted_imap import Drip, Reply, capability, scripted_imap
from tests.support.scripted_pop3 import scripted_pop3

DEADLINE = 1.5  # seconds; each drip below would take 5 s or more to finish
READ_TIMEOUT = 10  # longer than any drip: only the deadline can end them
SLOW = 0.1  # seconds between bytes


def imap_server(drip_at: bytes, *, every: float = SLOW, length: int = 100):
    """A plaintext IMAP server that answers at once, except ``drip_at`` (LOGIN, UID, IDLE)."""

    def answer(tag: bytes, command: bytes) -> Reply:
        verb = command.split(b" ", 1)[0].upper()
        if verb == b"CAPABILITY":
            reply: Reply = capability(tag, b"IMAP4rev1 IDLE UIDPLUS")
        elif verb == b"LOGIN":
            reply = tag + b" OK " + b"x" * length + b"\r\n"
        elif verb == b"SELECT":
            reply = (
                b"* 1 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n* OK [UIDNEXT 2] ok\r\n" + tag + b" OK [READ-WRITE] done\r\n"
            )
        elif verb == b"UID":  # our FETCH: a message's literal
            body = b"Subject: slow\r\n\r\n" + b"x" * length + b"\r\n"
            reply = b"* 1 FETCH (UID 1 BODY[] {%d}\r\n%s)\r\n%s OK done\r\n" % (len(body), body, tag)
        elif verb == b"IDLE":  # the continuation, then mail announced on a line that never ends
            reply = b"+ idling\r\n* 2 EXISTS" + b" " * length + b"\r\n"
        else:
            reply = tag + b" OK done\r\n"
        return Drip(reply, every) if verb == drip_at else reply

    return scripted_imap(answer)


def imap_cfg(port: int, **overrides: object) -> ImapConfig:
    return ImapConfig.model_validate(
        {
            "host": "127.0.0.1",
            "port": port,
            "security": "none",
            "username": "u",
            "password": "p",
            "timeout": READ_TIMEOUT,
            "deadline": DEADLINE,
            **overrides,
        }
    )


def pop3_cfg(port: int, **overrides: object) -> Pop3Config:
    return Pop3Config.model_validate(
        {
            "host": "127.0.0.1",
            "port": port,
            "security": "none",
            "username": "u",
            "password": "p",
            "timeout": READ_TIMEOUT,
            "deadline": DEADLINE,
            **overrides,
        }
    )


async def _imap_step(conn: ImapConnection, step: str) -> object:
    await conn.connect()
    if step == "login":
        return None
    await conn.select("INBOX")
    if step == "fetch":
        return await conn.fetch_raw([1])
    return await conn.idle_wait(0.5)


@pytest.mark.parametrize(("step", "drip_at"), [("login", b"LOGIN"), ("fetch", b"UID"), ("idle", b"IDLE")])
async def test_an_imap_command_that_drips_is_cut_off_at_its_deadline(step: str, drip_at: bytes) -> None:
    with imap_server(drip_at) as server:
        server_cfg = imap_cfg(server.port)
        conn = ImapConnection("slow", server_cfg, login(server_cfg))
        with pytest.raises(ServerTimeout, match="deadline") as raised:
            await _imap_step(conn, step)
        await conn.close()
    assert is_transient(raised.value)
    assert not conn.usable  # a cut connection is never reused: the watcher opens a new one


@pytest.mark.parametrize("drip_at", ["greeting", "RETR"])
async def test_a_pop3_command_that_drips_is_cut_off_at_its_deadline(drip_at: str) -> None:
    body = b"Subject: slow\r\n\r\n" + b"x" * 100 + b"\r\n.\r\n"

    def answer(command: bytes) -> Reply:
        if command.startswith(b"RETR"):
            return Drip(b"+OK message follows\r\n" + body, SLOW) if drip_at == "RETR" else b"+OK\r\n" + body
        return b"+OK\r\n"

    greeting: Reply = Drip(b"+OK " + b"x" * 100 + b"\r\n", SLOW) if drip_at == "greeting" else b"+OK hi\r\n"
    with scripted_pop3(answer, greeting) as server:
        server_cfg = pop3_cfg(server.port)
        conn = Pop3Connection("slow", server_cfg, login(server_cfg))
        with pytest.raises(ServerTimeout, match="deadline") as raised:
            await conn.connect()
            await conn.retr(1)
        await conn.close()
    assert is_transient(raised.value)


@pytest.mark.parametrize("drip", ["greeting", "replies"])
async def test_an_smtp_connect_or_transaction_that_drips_is_cut_off_at_its_deadline(drip: str) -> None:
    """Each reply comes whole well within aiosmtplib's per-reply timeout; the connect (greeting
    and EHLO) or the transaction (MAIL, RCPT, DATA, the message) as a whole does not."""
    every = {"greeting_every": SLOW} if drip == "greeting" else {"reply_every": SLOW}
    _, raw = make_raw("a@example.test", ["b@example.test"], "slow")
    with dripping_smtp(**every) as server:
        conn = SmtpConnection("slow", plain_smtp(server.port, security="none", timeout=READ_TIMEOUT, deadline=DEADLINE))
        with pytest.raises(ServerTimeout, match="deadline") as raised:
            await conn.send("a@example.test", ["b@example.test"], raw)
        await conn.close()
    assert is_transient(raised.value)
    assert not conn.connected


async def test_a_stop_cuts_an_imap_fetch_that_drips_at_once() -> None:
    """The caller gave up (a stop past its grace period): the connection is cut from the event
    loop, the worker thread's read returns and the server sees the connection end - long
    before the drip (or the default deadline) would have."""
    with imap_server(b"UID", length=100_000) as server:
        server_cfg = imap_cfg(server.port, deadline=300)
        conn = ImapConnection("slow", server_cfg, login(server_cfg))
        await conn.connect()
        await conn.select("INBOX")
        fetch = asyncio.create_task(conn.fetch_raw([1]))
        await asyncio.sleep(0.5)  # the FETCH is in its drip
        fetch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fetch
        await conn.close()
        assert await asyncio.to_thread(server.closed.wait, 10)


async def test_a_stop_cuts_a_pop3_connect_that_drips_at_once() -> None:
    """Before the client object exists (its greeting still dripping) there is no client to
    drop: the connection is cut all the same, as it was held from the moment it was opened."""
    with scripted_pop3(lambda command: b"+OK\r\n", Drip(b"+OK " + b"x" * 100_000, SLOW)) as server:
        server_cfg = pop3_cfg(server.port, deadline=300)
        conn = Pop3Connection("slow", server_cfg, login(server_cfg))
        connect = asyncio.create_task(conn.connect())
        await asyncio.sleep(0.5)  # the greeting is dripping
        connect.cancel()
        with pytest.raises(asyncio.CancelledError):
            await connect
        await conn.close()
        assert await asyncio.to_thread(server.closed.wait, 10)
