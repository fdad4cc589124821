"""ParsedMessage: never raises on broken mail, decodes what it can; golden corpus parse.

The corpus (tests/data/corpus) is checked against tests/data/message_golden.json; after a
deliberate parser change regenerate it with ``POSTROOM_UPDATE_GOLDEN=1 pytest tests/test_message.py``
and review the diff.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime

import pytest
from postroom.incoming.message import Attachment, ParsedMessage
from postroom.mail.parse import decode_header_value

from tests.support.data import CORPUS, DATA, corpus_files

GOLDEN = DATA / "message_golden.json"


def summary(msg: ParsedMessage) -> dict:
    return {
        "subject": msg.subject,
        "from": [a.display for a in msg.from_],
        "to": [a.addr for a in msg.to],
        "message_id": msg.message_id,
        "date": msg.date.isoformat() if msg.date else None,
        "attachments": [list(a) for a in msg.attachments()],
        "body_start": msg.body_text()[:60],
        "auto_generated": msg.auto_generated,
    }


def test_corpus_matches_golden():
    files = corpus_files()
    got = {str(p.relative_to(CORPUS)): summary(ParsedMessage.from_bytes(p.read_bytes(), key=p.name)) for p in files}
    if os.environ.get("POSTROOM_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(got, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
    assert got == json.loads(GOLDEN.read_text())


def test_corpus_headers_only_agree_with_full_parse():
    files = corpus_files()
    well_formed = 0
    for path in files:
        raw = path.read_bytes()
        head = re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[0] + b"\n\n"
        full = ParsedMessage.from_bytes(raw, key=path.name)
        heads = ParsedMessage.from_headers(head, key=path.name, size=len(raw))
        assert (heads.subject, heads.from_, heads.date) == (full.subject, full.from_, full.date), path
        assert heads.body_text() == "" and heads.attachments() == []
        well_formed += bool(full.subject and full.from_)
    assert well_formed >= 30  # most of the corpus has both


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\x01\x02",
        b"\r\n\r\n",
        b"no headers at all, just text",
        b"Subject: =?bogus-charset?q?caf=E9?=\r\nFrom: =?utf-8?b?!!!notbase64?= <a@b>\r\n\r\nx",
        b"Subject: \xff\xfe raw 8-bit \xe9\r\nFrom: \xc3\xa9l\xc3\xa8ve <eleve@ecole.test>\r\n\r\n\xff",
        b"From: <<<>>>, ,,, @@@\r\nTo: undisclosed-recipients:;\r\nDate: yesterday-ish\r\n\r\n",
        b'Content-Type: multipart/mixed; boundary="nope"\r\n\r\n--wrong\r\nContent-Type: text/plain\r\n',
        b"Content-Type: text/plain; charset=x-no-such\r\nContent-Transfer-Encoding: base64\r\n\r\n%%%%",
        b"Content-Type: text/html\r\n\r\n<p>unclosed <b>tags &amp; <script>x()</script>text",
        b"Content-Type: multipart/mixed\r\n\r\nno boundary parameter",
    ],
)
def test_garbage_never_raises(raw):
    msg = ParsedMessage.from_bytes(raw, key="k")
    summary(msg)
    assert isinstance(msg.header("Subject"), list) and msg.size == len(raw)
    assert isinstance(ParsedMessage.from_headers(raw, key="k", size=len(raw)).subject, str)


def test_encoded_words_and_bad_charsets_decode():
    assert decode_header_value("=?utf-8?q?R=C3=A9sum=C3=A9?= of =?iso-8859-1?q?caf=E9?=") == "Résumé of café"
    assert decode_header_value("x =?bogus?q?caf=C3=A9?= y") == "x café y"  # unknown charset: UTF-8 tried
    assert decode_header_value("=?utf-8?q?broken=FF?=") == "broken\xff"  # lying charset: latin-1, lossy
    msg = ParsedMessage.from_bytes(
        b"From: =?utf-8?q?Ren=C3=A9e_Dupont?= <renee@example.test>, plain@example.test\r\n"
        b"Subject: \xc3\xa9t\xc3\xa9\r\n  folded\r\nDate: Tue, 3 Mar 2026 10:00:00 -0000\r\n\r\n",
        key="k",
    )
    assert [(a.name, a.addr) for a in msg.from_] == [("Renée Dupont", "renee@example.test"), ("", "plain@example.test")]
    assert msg.subject == "été  folded"
    assert msg.date == datetime(2026, 3, 3, 10, tzinfo=UTC)


def test_date_falls_back_to_internal_date_and_reply_guards():
    arrived = datetime(2026, 1, 1, tzinfo=UTC)
    msg = ParsedMessage.from_headers(b"Subject: x\r\nReturn-Path: <>\r\n", key="k", size=1, internal_date=arrived)
    assert msg.date == arrived and msg.return_path == ""
    assert msg.auto_generated == "null Return-Path (a bounce)"
    assert ParsedMessage.from_headers(b"Auto-Submitted: no\r\n", key="k", size=1).auto_generated is None
    assert ParsedMessage.from_headers(b"List-Id: <x.y>\r\n", key="k", size=1).auto_generated == "List-Id present"


def test_html_only_body_is_stripped_and_attachments_are_leaves():
    raw = (
        b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b"<html><head><style>p{}</style></head><p>Total:&nbsp;42 &amp; more</p></html>\r\n"
        b"--B\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\n"
        b"Subject: inner\r\nContent-Type: text/plain\r\n\r\ninner text\r\n--B--\r\n"
    )
    msg = ParsedMessage.from_bytes(raw, key="k")
    assert msg.body_text() == "Total:\xa042 & more"
    assert [(a.filename, a.content_type) for a in msg.attachments()] == [(None, "message/rfc822")]
    assert msg.has_attachment and isinstance(msg.attachments()[0], Attachment)


def test_html_body_reads_like_the_text_twin_of_html_we_send():
    """One html_to_text for both halves: links keep their target, lists their markers, and
    markup html.parser gives up on (``<![x[``) still yields its text, entities decoded."""
    raw = (
        b"Content-Type: text/html; charset=utf-8\r\n\r\n"
        b"<p>See <a href='https://x.test/i/7'>invoice 7</a>:</p><ul><li>due&nbsp;Friday</li></ul>"
    )
    assert ParsedMessage.from_bytes(raw, key="k").body_text() == (
        "See invoice 7 (https://x.test/i/7):\n\n- due\xa0Friday"
    )
    broken = b"Content-Type: text/html\r\n\r\n<p>Tom &amp; Jerry</p><![foo[ x ]]><p>after</p>"
    assert ParsedMessage.from_bytes(broken, key="k").body_text() == "Tom & Jerry after"
