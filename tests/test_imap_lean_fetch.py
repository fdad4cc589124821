"""The lean reader of header-field FETCH replies gives exactly what imapclient's generic
parser gives, on replies from the lab's real Dovecot - including an empty header block,
raw 8-bit and encoded non-ASCII headers, and a large literal - and steps aside otherwise."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import ProtocolError
from imapclient.response_parser import parse_fetch_response
from postroom.config.model import ImapConfig
from postroom.errors import ServerConnectError, ServerRejected
from postroom.incoming.imap import (
    ImapConnection,
    _uid_fetch_unparsed,
    map_imap_error,
)
from postroom.incoming.imap_wire import parse_fetch_reply, parse_lean_fetch, uid_set

from tests.support.logins import login
from tests.support.scripted_imap import capability, scripted_imap

USER = "carol"
LONG_NAME = "x" * 70
MESSAGES = [
    b"From: Reports <reports@example.test>\r\nMessage-ID: <plain@lab.test>\r\nSubject: plain\r\n\r\nbody\r\n",
    # neither field present: the server answers an empty header block ("\r\n")
    b"Subject: nothing asked for is here\r\n\r\nbody\r\n",
    # raw UTF-8 in a header, and an RFC 2047 one
    "From: Jürgen Größe <jg@example.test>\r\nMessage-ID: <umlaut@lab.test>\r\n\r\nbody\r\n".encode(),
    b"From: =?utf-8?q?Ren=C3=A9e?= <renee@example.test>\r\nMessage-ID: <encoded@lab.test>\r\n\r\nb\r\n",
    # a From folded over thousands of lines: a literal of ~300 KB
    b"From: "
    + b",\r\n ".join(f"{LONG_NAME} {i} <p{i}@example.test>".encode() for i in range(3000))
    + b"\r\nMessage-ID: <long@lab.test>\r\n\r\nbody\r\n",
]
ITEM_SETS = [
    ["RFC822.SIZE", "BODY.PEEK[HEADER.FIELDS (From Message-ID)]"],
    ["BODY.PEEK[HEADER.FIELDS (Message-ID)]"],
]


@pytest.fixture
def client(clean_lab) -> Iterator[IMAPClient]:
    clean_lab.seed_maildir(USER, "INBOX", MESSAGES)
    imap = clean_lab.imap_client(USER)
    imap.select_folder("INBOX")
    try:
        yield imap
    finally:
        imap.logout()


@pytest.mark.parametrize("items", ITEM_SETS)
def test_lean_reader_equals_generic_parser_on_dovecot_replies(client: IMAPClient, items: list[str]) -> None:
    uids = sorted(client.search(["ALL"]))
    data = _uid_fetch_unparsed(client, uid_set(uids), items)
    lean = parse_lean_fetch(data)
    assert lean is not None, "Dovecot's reply should take the lean path"
    assert lean == dict(parse_fetch_response(data, True, True))
    assert lean == client.fetch(uids, items)  # and what IMAPClient.fetch itself returns
    bodies = {row[next(k for k in row if k.startswith(b"BODY["))] for row in lean.values()}
    assert b"\r\n" in bodies  # the empty header block
    if "From" in items[-1]:
        assert any("Größe".encode() in body for body in bodies)
        assert max(len(body) for body in bodies) > 200_000


async def test_fetch_headers_matches_imapclient_fetch(clean_lab) -> None:
    clean_lab.seed_maildir(USER, "INBOX", MESSAGES)
    cfg = ImapConfig.model_validate(
        {
            "host": "127.0.0.1",
            "port": clean_lab.ports.imap,
            "security": "starttls",
            "username": clean_lab.address(USER),
            "password": clean_lab.password(USER),
            "ca_file": clean_lab.ca_file,
            "timeout": 10,
        }
    )
    conn = ImapConnection(USER, cfg, login(cfg))
    await conn.connect()
    try:
        await conn.select("INBOX")
        uids = await conn.uids_from(1)
        fetched = await conn.fetch_headers(uids, ["From", "Message-ID"], internal_date=False, flags=False)
    finally:
        await conn.close()
    with clean_lab.imap_client(USER) as imap:
        imap.select_folder("INBOX")
        expected = imap.fetch(uids, ITEM_SETS[0])
    assert sorted(fetched) == sorted(expected)
    for uid, row in fetched.items():
        assert row.header_bytes == expected[uid][b"BODY[HEADER.FIELDS (FROM MESSAGE-ID)]"]
        assert row.size == expected[uid][b"RFC822.SIZE"]


def test_other_shapes_go_to_the_generic_parser(client: IMAPClient) -> None:
    uids = sorted(client.search(["ALL"]))
    items = ["FLAGS", "BODY.PEEK[HEADER.FIELDS (From)]"]
    data = _uid_fetch_unparsed(client, uid_set(uids), items)
    assert parse_lean_fetch(data) is None
    assert parse_fetch_reply(data) == client.fetch(uids, items)


@pytest.mark.parametrize(
    "data",
    [
        # an unsolicited flag change for another message, among ours
        [(b"1 (UID 7 BODY[HEADER.FIELDS (FROM)] {4}", b"a\r\n\r"), b")", b"2 (FLAGS (\\Seen))"],
        # items in another order
        [(b"1 (RFC822.SIZE 5 UID 7 BODY[HEADER.FIELDS (FROM)] {4}", b"a\r\n\r"), b")"],
        # the same UID twice
        [
            (b"1 (UID 7 BODY[HEADER.FIELDS (FROM)] {4}", b"a\r\n\r"),
            b")",
            (b"1 (UID 7 BODY[HEADER.FIELDS (FROM)] {4}", b"b\r\n\r"),
            b")",
        ],
    ],
)
def test_unexpected_replies_are_not_read_leanly(data: list) -> None:
    assert parse_lean_fetch(data) is None
    assert parse_fetch_reply(data) == dict(parse_fetch_response(data, True, True))


def test_a_literal_of_the_wrong_length_is_the_generic_parsers_error() -> None:
    data = [(b"1 (UID 7 BODY[HEADER.FIELDS (FROM)] {9}", b"a\r\n\r"), b")"]
    assert parse_lean_fetch(data) is None
    with pytest.raises(ProtocolError):
        parse_fetch_reply(data)


def test_no_fetch_data_is_no_rows() -> None:
    assert parse_lean_fetch([None]) == {} == parse_fetch_reply([None])


# -- faults a real server won't produce on demand: a tiny real socket server speaking IMAP ---


@contextlib.contextmanager
def scripted_server(reply: Callable[[bytes], bytes]) -> Iterator[IMAPClient]:
    """An IMAPClient (plain, no login: the reader under test checks no state) connected to a
    scripted server that answers CAPABILITY, then the next command with ``reply(tag)``."""

    def answer(tag: bytes, command: bytes) -> bytes | tuple[bytes, bool]:
        if command.upper() == b"CAPABILITY":
            return capability(tag)
        return reply(tag), True  # and close: the drops below are the end of the connection

    with scripted_imap(answer) as server:
        client = IMAPClient("127.0.0.1", port=server.port, ssl=False, timeout=5)
        try:
            yield client
        finally:
            client.shutdown()


def test_untagged_responses_among_the_fetch_data_are_read_past() -> None:
    def reply(tag: bytes) -> bytes:
        return (
            b"* 1 FETCH (UID 7 BODY[HEADER.FIELDS (FROM)] {6}\r\nA: b\r\n)\r\n"
            b"* 4 EXISTS\r\n* 2 EXPUNGE\r\n* OK [ALERT] {3}\r\nxyz\r\n"
            b"* 2 FETCH (UID 9 BODY[HEADER.FIELDS (FROM)] {2}\r\n\r\n)\r\n" + tag + b" OK Fetch completed.\r\n"
        )

    with scripted_server(reply) as client:
        data = _uid_fetch_unparsed(client, "7,9", ["BODY.PEEK[HEADER.FIELDS (From)]"])
    assert data == [
        (b"1 (UID 7 BODY[HEADER.FIELDS (FROM)] {6}", b"A: b\r\n"),
        b")",
        (b"2 (UID 9 BODY[HEADER.FIELDS (FROM)] {2}", b"\r\n"),
        b")",
    ]
    assert parse_fetch_reply(data) == {
        7: {b"SEQ": 1, b"BODY[HEADER.FIELDS (FROM)]": b"A: b\r\n"},
        9: {b"SEQ": 2, b"BODY[HEADER.FIELDS (FROM)]": b"\r\n"},
    }


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        # the connection drops inside a literal
        (lambda tag: b"* 1 FETCH (UID 7 BODY[HEADER.FIELDS (FROM)] {50}\r\nA: b\r\n", ServerConnectError),
        # ... or between responses
        (lambda tag: b"* 1 FETCH (UID 7 BODY[HEADER.FIELDS (FROM)] {2}\r\n\r\n)\r\n", ServerConnectError),
        (lambda tag: b"* BYE shutting down\r\n", ServerConnectError),
        (lambda tag: b"+ go on\r\n", ServerConnectError),  # no continuation was asked for
        (lambda tag: tag + b" NO [SERVERBUG] oops\r\n", ServerRejected),
        (lambda tag: tag + b" BAD no mailbox selected\r\n", ServerRejected),
    ],
)
def test_a_broken_fetch_reply_is_our_error(reply: Callable[[bytes], bytes], error: type[Exception]) -> None:
    with scripted_server(reply) as client:
        with pytest.raises(Exception) as raised:
            _uid_fetch_unparsed(client, "7", ["BODY.PEEK[HEADER.FIELDS (From)]"])
    assert isinstance(map_imap_error(raised.value, "imap test fetch"), error)
