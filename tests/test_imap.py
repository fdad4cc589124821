"""The IMAP edge against the lab's real Dovecot: TLS modes, errors, batched fetch/move/flags,
UID EXPUNGE of only our UIDs, modified UTF-7 folder names, IDLE."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest
from imapclient import IMAPClient
from postroom.config.model import ImapConfig
from postroom.errors import AuthError, PermanentError, ServerBusy, ServerConnectError, TLSError, is_transient
from postroom.incoming.imap import (
    IDLE_RENEW_SECONDS,
    KEEPALIVE_IDLE,
    KEEPALIVE_INTERVAL,
    KEEPALIVE_PROBES,
    ImapConnection,
)
from postroom.incoming.imap_wire import attachments_from_bodystructure, uid_set

from tests.support.inbox import USER, imap_cfg, raw_message
from tests.support.logins import login
from tests.support.scripted_imap import Answer, capability, scripted_imap


class CountingConnection(ImapConnection):
    """Records each command step it runs on its thread, to show UIDs go in batches."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps: list[str] = []

    async def _run(self, step, fn, *args, **kwargs):
        self.steps.append(step.split()[0])
        return await super()._run(step, fn, *args, **kwargs)


@pytest.fixture
async def conn(clean_lab) -> AsyncIterator[CountingConnection]:
    server_cfg = imap_cfg(clean_lab)
    connection = CountingConnection("dave", server_cfg, login(server_cfg))
    await connection.connect()
    yield connection
    await connection.close()


def test_uid_set_compresses_ranges():
    assert uid_set([7, 1, 2, 3, 9, 10]) == "1:3,7,9:10"
    assert uid_set([5]) == "5"
    with pytest.raises(ValueError):
        uid_set([])


async def test_starttls_login_sees_post_login_capabilities(conn):
    assert conn.has("MOVE") and conn.has("UIDPLUS") and conn.has("IDLE")
    state = await conn.select("INBOX")
    assert state.uidvalidity > 0 and state.exists == 0


async def test_the_connection_probes_a_silent_peer(conn):
    """A watcher parked in IDLE reads nothing for minutes: TCP keepalive notices a peer that
    vanished without closing the connection long before the IDLE renewal would."""
    sock = conn._c().socket()
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    if hasattr(socket, "TCP_KEEPIDLE"):
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == KEEPALIVE_IDLE
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == KEEPALIVE_PROBES
    assert KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_PROBES < IDLE_RENEW_SECONDS / 4


async def test_implicit_tls(clean_lab):
    server_cfg = imap_cfg(clean_lab, port=clean_lab.ports.imaps, security="tls")
    connection = ImapConnection("dave", server_cfg, login(server_cfg))
    await connection.connect()
    try:
        assert (await connection.select("INBOX")).uidnext >= 1
    finally:
        await connection.close()


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_untrusted_certificate_is_a_tls_error(lab, monkeypatch, security):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)  # the system store does not know the lab CA
    port = lab.ports.imap if security == "starttls" else lab.ports.imaps
    server_cfg = imap_cfg(lab, ca_file=None, security=security, port=port)
    connection = ImapConnection("dave", server_cfg, login(server_cfg))
    with pytest.raises(TLSError, match="certificate"):
        await connection.connect()
    await connection.close()


async def test_wrong_password_is_an_auth_error(lab):
    server_cfg = imap_cfg(lab, password="not-the-password")
    connection = ImapConnection("dave", server_cfg, login(server_cfg))
    with pytest.raises(AuthError):
        await connection.connect()
    await connection.close()


async def test_no_starttls_offered_refuses_before_login():
    """Dovecot always offers STARTTLS; a tiny real socket server that doesn't shows we stop."""

    def answer(tag: bytes, command: bytes) -> bytes:
        if command.upper() == b"CAPABILITY":
            return capability(tag, b"IMAP4rev1 AUTH=PLAIN")
        return tag + b" BAD not here\r\n"

    with scripted_imap(answer, b"* OK plaintext only\r\n") as server:
        cfg = ImapConfig(
            host="127.0.0.1", port=server.port, security="starttls", username="u", password="secret-pw", timeout=5
        )
        connection = ImapConnection("x", cfg, login(cfg))
        with pytest.raises(TLSError, match="STARTTLS"):
            await connection.connect()
        await connection.close()
    assert b"secret-pw" not in b"".join(server.lines)


async def test_fetch_headers_for_300_messages_in_one_fetch(clean_lab, conn):
    clean_lab.seed_maildir(USER, "INBOX", [raw_message(i) for i in range(300)])
    await conn.select("INBOX")
    uids = await conn.uids_from(1)
    assert len(uids) == 300
    conn.steps.clear()
    fetched = await conn.fetch_headers(uids, ["Subject", "Message-ID"])
    assert conn.steps == ["fetch"]
    assert sorted(fetched) == uids
    first = fetched[uids[0]]
    assert b"Subject: message 0" in first.header_bytes and b"body" not in first.header_bytes
    assert all(row.size > 100 and row.internal_date is not None for row in fetched.values())
    assert "\\Seen" not in first.flags  # BODY.PEEK leaves messages unread


async def test_uids_from_beyond_the_last_is_empty(clean_lab, conn):
    clean_lab.deliver(USER, raw_message(1))
    state = await conn.select("INBOX")
    assert await conn.uids_from(state.uidnext) == []  # "n:*" would name the last message


async def test_bodystructure_attachments_and_raw(clean_lab, conn):
    clean_lab.deliver(USER, raw_message(1, attachment=True))
    clean_lab.deliver(USER, raw_message(2))
    await conn.select("INBOX")
    uids = await conn.uids_from(1)
    fetched = await conn.fetch_headers(uids, ["Subject"], bodystructure=True)
    with_pdf, plain = fetched[uids[0]], fetched[uids[1]]
    assert [(a.filename, a.content_type) for a in with_pdf.attachments] == [("report.pdf", "application/pdf")]
    assert plain.attachments == []
    raws = await conn.fetch_raw(uids)
    assert b"report.pdf" in raws[uids[0]]
    assert "\\Seen" not in (await conn.flags(uids))[uids[0]]


def test_bodystructure_parser_ignores_garbage():
    assert attachments_from_bodystructure((b"weird",)) == []


async def test_move_many_uids_in_one_command(clean_lab, conn):
    clean_lab.seed_maildir(USER, "INBOX", [raw_message(i) for i in range(300)])
    await conn.select("INBOX")
    uids = await conn.uids_from(1)
    conn.steps.clear()
    await conn.move(uids[:200], "Archive")
    assert conn.steps == ["move"]
    assert await conn.existing_uids(uids) == set(uids[200:])
    assert (await conn.select("Archive")).exists == 200


async def test_move_without_move_capability_uses_uid_expunge(clean_lab, conn):
    for i in range(3):
        clean_lab.deliver(USER, raw_message(i))
    await conn.select("INBOX")
    uids = await conn.uids_from(1)
    conn.capabilities = conn.capabilities - {"MOVE"}
    await conn.move(uids[:2], "Archive")
    assert await conn.existing_uids(uids) == {uids[2]}
    assert (await conn.select("Archive")).exists == 2
    conn.capabilities = conn.capabilities - {"UIDPLUS"}
    await conn.select("INBOX")
    with pytest.raises(PermanentError, match="UIDPLUS"):
        await conn.move([uids[2]], "Archive")


async def test_copy_and_flags(clean_lab, conn):
    for i in range(4):
        clean_lab.deliver(USER, raw_message(i))
    await conn.select("INBOX")
    uids = await conn.uids_from(1)
    await conn.copy(uids[:3], "Archive")
    await conn.add_flags(uids, ["\\Flagged", "\\Seen"])
    await conn.remove_flags(uids[:1], ["\\Flagged"])
    flags = await conn.flags(uids)
    assert "\\Flagged" not in flags[uids[0]] and "\\Seen" in flags[uids[0]]
    assert all("\\Flagged" in flags[u] for u in uids[1:])
    assert await conn.existing_uids(uids) == set(uids)
    assert (await conn.select("Archive")).exists == 3


async def test_delete_expunges_only_our_uids(clean_lab, conn):
    for i in range(3):
        clean_lab.deliver(USER, raw_message(i))
    await conn.select("INBOX")
    uids = await conn.uids_from(1)
    other = clean_lab.imap_client(USER)
    try:
        other.select_folder("INBOX")
        other.add_flags([uids[0]], [b"\\Deleted"])  # another client's pending deletion
    finally:
        other.logout()
    await conn.delete([uids[1]])
    assert await conn.existing_uids(uids) == {uids[0], uids[2]}


@pytest.fixture
def utf7_folders(clean_lab):
    names = ("Überweisungen", "Archiv/2026")
    yield names
    # removed over IMAP: the lab's cleanup hands Maildir (modified UTF-7) names to doveadm
    client = clean_lab.imap_client(USER)
    try:
        for name in (*names, "Archiv"):
            if client.folder_exists(name):
                client.delete_folder(name)
    finally:
        client.logout()


async def test_modified_utf7_folder_names(clean_lab, conn, utf7_folders):
    for name in utf7_folders:
        await conn.create_folder(name)
    assert {"Überweisungen", "Archiv/2026"} <= set(await conn.list_folders())
    clean_lab.deliver(USER, raw_message(1))
    await conn.select("INBOX")
    await conn.move(await conn.uids_from(1), "Überweisungen")
    assert (await conn.select("Überweisungen")).exists == 1
    raw = IMAPClient("127.0.0.1", port=clean_lab.ports.imaps, ssl=True, ssl_context=clean_lab.ssl_context())
    try:
        raw.login(clean_lab.address(USER), clean_lab.password(USER))
        raw.folder_encode = False
        on_wire = {name for _, _, name in raw.list_folders()}
    finally:
        raw.logout()
    assert {b"&ANw-berweisungen", b"Archiv/2026"} <= {n if isinstance(n, bytes) else n.encode() for n in on_wire}


async def test_idle_reports_new_mail_and_wakes_on_request(clean_lab, conn):
    await conn.select("INBOX")
    waiting = asyncio.create_task(conn.idle_wait(60))
    await asyncio.sleep(0.3)
    await asyncio.to_thread(clean_lab.deliver, USER, raw_message(1))
    assert await asyncio.wait_for(waiting, 30) is True
    waiting = asyncio.create_task(conn.idle_wait(60))
    await asyncio.sleep(0.3)
    conn.wake()
    assert await asyncio.wait_for(waiting, 30) is False
    assert await asyncio.wait_for(conn.idle_wait(60), 5) is False  # a wake-up (a stop) is never lost
    assert len(await conn.uids_from(1)) == 1  # the connection is usable after IDLE


def folder_server(select_reply: bytes) -> Answer:
    """Answers CAPABILITY, LOGIN, SELECT (with ``select_reply``'s untagged lines), UID SEARCH
    (UIDs 1-3) and LOGOUT."""

    def answer(tag: bytes, command: bytes) -> bytes | None:
        verb = command.upper().split(b" ", 2)[:2]
        if verb[0] == b"CAPABILITY":
            return capability(tag, b"IMAP4rev1 IDLE MOVE UIDPLUS")
        if verb[0] == b"LOGIN":
            return tag + b" OK logged in\r\n"
        if verb[0] == b"SELECT":
            return select_reply + tag + b" OK [READ-WRITE] selected\r\n"
        if verb == [b"UID", b"SEARCH"]:
            return b"* SEARCH 1 2 3\r\n" + tag + b" OK done\r\n"
        if verb[0] == b"LOGOUT":
            return b"* BYE bye\r\n" + tag + b" OK done\r\n"
        return tag + b" BAD not scripted\r\n"

    return answer


@pytest.mark.parametrize(
    "idle_reply",
    [
        b"+ idling\r\n* 4 EXISTS\r\n",  # one send: one packet on loopback, read into one buffer
        b"* 4 EXISTS\r\n+ idling\r\n",  # RFC 2177 lets the server speak before its continuation
    ],
    ids=["after-continuation", "before-continuation"],
)
async def test_mail_announced_with_the_idle_continuation_is_not_missed(idle_reply):
    """Mail that arrives just before IDLE: the server announces it with "+ idling", often in
    the same packet, so it sits in the client's read buffer where a poll of the socket can't
    see it, or even before it, which IMAPClient takes for a failed IDLE. The watcher must hear
    of it at once, not at the next renewal (nor wait 15 minutes as after a refusal)."""
    base = folder_server(b"* 3 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n* OK [UIDNEXT 4] ok\r\n")
    idle_tag: list[bytes] = []

    def answer(tag: bytes, command: bytes) -> bytes | None:
        if command.upper() == b"IDLE":
            idle_tag.append(tag)
            return idle_reply
        if tag.upper() == b"DONE":
            return idle_tag[-1] + b" OK idle done\r\n"
        return base(tag, command)

    with scripted_imap(answer) as server:
        cfg = ImapConfig(host="127.0.0.1", port=server.port, security="none", username="u", password="p", timeout=5)
        connection = ImapConnection("x", cfg, login(cfg))
        try:
            await connection.connect()
            await connection.select("INBOX")
            started = time.monotonic()
            assert await connection.idle_wait(20) is True
            assert time.monotonic() - started < 5  # not the IDLE's own timeout
            assert await connection.uids_from(1) == [1, 2, 3]  # and the session is still in step
        finally:
            await connection.close()


@pytest.mark.parametrize(
    ("select_reply", "expected"),
    [
        # no UIDNEXT: still usable
        (b"* 3 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n", (7, 0, 3)),
        # no UIDVALIDITY: a checkpoint by UID can't be trusted, and nothing will change that by itself
        (b"* 3 EXISTS\r\n* OK [UIDNEXT 4] ok\r\n", PermanentError),
    ],
    ids=["no-uidnext", "no-uidvalidity"],
)
async def test_select_without_uidnext_or_uidvalidity(select_reply, expected):
    with scripted_imap(folder_server(select_reply)) as server:
        cfg = ImapConfig(host="127.0.0.1", port=server.port, security="none", username="u", password="p", timeout=5)
        connection = ImapConnection("x", cfg, login(cfg))
        try:
            await connection.connect()
            if isinstance(expected, tuple):
                state = await connection.select("INBOX")
                assert (state.uidvalidity, state.uidnext, state.exists) == expected
                assert await connection.uids_from(1) == [1, 2, 3]
            else:
                with pytest.raises(expected, match="UIDVALIDITY"):
                    await connection.select("INBOX")
        finally:
            await connection.close()


@pytest.mark.parametrize(
    ("login_reply", "error"),
    [
        (None, ServerConnectError),  # the connection drops at LOGIN (a server restarting): retry soon
        (b" NO [UNAVAILABLE] Temporary authentication failure\r\n", ServerBusy),
        (b" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n", AuthError),  # fix the password
    ],
    ids=["dropped", "unavailable", "refused"],
)
async def test_a_failed_login_is_permanent_only_when_the_server_refuses_it(login_reply, error):
    def answer(tag: bytes, command: bytes) -> bytes | None:
        if command.upper().startswith(b"CAPABILITY"):
            return capability(tag)
        return None if login_reply is None else tag + login_reply

    with scripted_imap(answer) as server:
        cfg = ImapConfig(host="127.0.0.1", port=server.port, security="none", username="u", password="p", timeout=5)
        connection = ImapConnection("x", cfg, login(cfg))
        with pytest.raises(error) as raised:
            await connection.connect()
        await connection.close()
    assert is_transient(raised.value) is (error is not AuthError)
