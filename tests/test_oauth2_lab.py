"""The OAuth2 lab itself: real Dovecot and Postfix take XOAUTH2 and OAUTHBEARER with a fresh
token, and refuse an expired, revoked, misdirected or password "token" — seen with the stdlib
clients (imaplib, poplib over a raw TLS socket, smtplib), nothing of postroom's but the SASL
strings."""

from __future__ import annotations

import base64
import imaplib
import smtplib
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import EmailMessage

import httpx
import pytest
from postroom.auth.sasl import Mechanism, challenge_answer, encoded, error_challenge, initial_response

from tests.lab.oauth2 import OAuth2Lab
from tests.support.oauth2_fixtures import BARE_TOKEN_SERVER_PORT

MECHANISMS = list(Mechanism)
REFUSED_STATUS = ("401", "invalid_token")  # XOAUTH2 says it Google's way, OAUTHBEARER RFC 7628's


def _imap_login(lab: OAuth2Lab, mechanism: Mechanism, user: str, token: str, *, implicit_tls: bool = False) -> str:
    """Log in with imaplib; the tagged reply's text, or the error imaplib raised."""
    if implicit_tls:
        client: imaplib.IMAP4 = imaplib.IMAP4_SSL("127.0.0.1", lab.ports.imaps, ssl_context=lab.ssl_context())
    else:
        client = imaplib.IMAP4("127.0.0.1", lab.ports.imap)
        client.starttls(lab.ssl_context())
    challenges: list[bytes] = []

    def answer(challenge: bytes) -> bytes:
        challenges.append(challenge)
        # The first continuation is empty; a later one is the error challenge.
        return (
            initial_response(mechanism, lab.address(user), token)
            if len(challenges) == 1
            else (challenge_answer(mechanism))
        )

    try:
        typ, data = client.authenticate(mechanism.sasl_name, answer)
    except imaplib.IMAP4.error as exc:
        client.shutdown()
        if len(challenges) > 1:  # a refusal must have come with the JSON error challenge
            assert error_challenge(challenges[1])["status"] in REFUSED_STATUS
        return f"NO {exc}"
    client.logout()
    return f"{typ} {data!r}"  # typeshed and imaplib disagree on bytes vs str here


class _Pop3:
    """POP3 over implicit TLS, line by line: poplib has no SASL, and the two-step form and the
    error challenge are exactly what postroom's POP3 edge must speak."""

    def __init__(self, lab: OAuth2Lab):
        raw = socket.create_connection(("127.0.0.1", lab.ports.pop3s), timeout=10)
        self.sock = lab.ssl_context().wrap_socket(raw, server_hostname="127.0.0.1")
        self.stream = self.sock.makefile("rwb")
        assert self.line().startswith(b"+OK")

    def line(self) -> bytes:
        return self.stream.readline().rstrip(b"\r\n")

    def send(self, text: str) -> bytes:
        self.stream.write(text.encode() + b"\r\n")
        self.stream.flush()
        return self.line()

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


@contextmanager
def _pop3(lab: OAuth2Lab) -> Iterator[_Pop3]:
    conn = _Pop3(lab)
    try:
        yield conn
    finally:
        conn.close()


def _pop3_login(lab: OAuth2Lab, mechanism: Mechanism, user: str, token: str, *, two_step: bool) -> bytes:
    """The final reply to AUTH, answering an error challenge the way a client must."""
    response = encoded(initial_response(mechanism, lab.address(user), token))
    with _pop3(lab) as pop:
        if two_step:  # Microsoft documents this form: AUTH XOAUTH2, "+", then the response
            assert pop.send(f"AUTH {mechanism.sasl_name}").startswith(b"+")
            reply = pop.send(response)
        else:
            reply = pop.send(f"AUTH {mechanism.sasl_name} {response}")
        if reply.startswith(b"+ "):  # the error challenge, then the final -ERR
            assert error_challenge(reply[2:])["status"] in REFUSED_STATUS
            reply = pop.send(encoded(challenge_answer(mechanism)))
        if reply.startswith(b"+OK"):
            pop.send("QUIT")
        return reply


def _smtp_login(lab: OAuth2Lab, mechanism: Mechanism, user: str, token: str) -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", lab.ports.smtp, timeout=10)
    smtp.starttls(context=lab.ssl_context())
    smtp.ehlo()
    response = encoded(initial_response(mechanism, lab.address(user), token))
    code, reply = smtp.docmd("AUTH", f"{mechanism.sasl_name} {response}")
    if code == 334:  # the error challenge; the refusal comes after our answer
        assert error_challenge(reply)["status"] in REFUSED_STATUS
        code, reply = smtp.docmd(encoded(challenge_answer(mechanism)))
    if code != 235:
        smtp.close()
        raise smtplib.SMTPAuthenticationError(code, reply)
    return smtp


def _revoked_access_token(lab: OAuth2Lab, user: str) -> str:
    """An access token got over HTTP from a refresh token that is then revoked."""
    refresh = lab.refresh_token(user)
    answer = httpx.post(
        lab.token_server.token_url,
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh,
            "client_id": "maillab",
            "client_secret": "maillab-secret",
        },
    ).json()
    httpx.post(f"{lab.token_server.url}/revoke", data={"token": refresh}).raise_for_status()
    return str(answer["access_token"])


def _expired_access_token(lab: OAuth2Lab, user: str) -> str:
    token = lab.access_token(user)
    lab.authority.expire(token)
    return token


BAD_TOKENS: dict[str, Callable[[OAuth2Lab], str]] = {
    "expired": lambda lab: _expired_access_token(lab, "alice"),
    "revoked": lambda lab: _revoked_access_token(lab, "alice"),
    "another user's": lambda lab: lab.access_token("bob"),
    "without the mail scope": lambda lab: lab.access_token("alice", scope="calendar"),
    "the password": lambda lab: lab.password("alice"),
    "made up": lambda lab: "lab-at.never-issued",
}


@pytest.mark.parametrize("implicit_tls", [False, True], ids=["starttls", "tls"])
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_imap_logs_in_with_a_fresh_token(oauth2_lab: OAuth2Lab, mechanism: Mechanism, implicit_tls: bool) -> None:
    before = oauth2_lab.authority.counters["introspect.active"]

    reply = _imap_login(oauth2_lab, mechanism, "alice", oauth2_lab.access_token("alice"), implicit_tls=implicit_tls)

    assert reply.startswith("OK") and "Logged in" in reply
    assert oauth2_lab.authority.counters["introspect.active"] == before + 1  # Dovecot asked, no cache


@pytest.mark.parametrize("bad", list(BAD_TOKENS))
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_imap_refuses_a_bad_token_as_an_auth_failure(oauth2_lab: OAuth2Lab, mechanism: Mechanism, bad: str) -> None:
    reply = _imap_login(oauth2_lab, mechanism, "alice", BAD_TOKENS[bad](oauth2_lab))

    assert reply.startswith("NO") and "AUTHENTICATIONFAILED" in reply  # not [UNAVAILABLE]: a real refusal


@pytest.mark.parametrize("two_step", [False, True], ids=["one-step", "two-step"])
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_pop3_sasl_with_a_fresh_token_and_a_stale_one(
    oauth2_lab: OAuth2Lab, mechanism: Mechanism, two_step: bool
) -> None:
    good = _pop3_login(oauth2_lab, mechanism, "alice", oauth2_lab.access_token("alice"), two_step=two_step)
    stale = _pop3_login(oauth2_lab, mechanism, "alice", _expired_access_token(oauth2_lab, "alice"), two_step=two_step)

    assert good.startswith(b"+OK")
    assert stale.startswith(b"-ERR [AUTH]")  # an auth failure, not [SYS/TEMP]


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_smtp_submission_with_a_token_reaches_the_mailbox(oauth2_lab: OAuth2Lab, mechanism: Mechanism) -> None:
    lab = oauth2_lab
    lab.clear_mailbox("bob")
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = lab.address("alice"), lab.address("bob"), f"by {mechanism}"
    msg.set_content("sent with a bearer token\n")

    with _smtp_login(lab, mechanism, "alice", lab.access_token("alice")) as smtp:
        smtp.send_message(msg)

    [raw] = lab.wait_for_messages("bob", 1)
    assert f"Subject: by {mechanism}".encode() in raw and b"with ESMTPSA" in raw


@pytest.mark.parametrize("bad", ["expired", "revoked", "the password"])
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_smtp_refuses_a_bad_token_with_535(oauth2_lab: OAuth2Lab, mechanism: Mechanism, bad: str) -> None:
    with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
        _smtp_login(oauth2_lab, mechanism, "alice", BAD_TOKENS[bad](oauth2_lab))

    assert refused.value.smtp_code == 535


def test_passwords_still_log_in_by_plain(oauth2_lab: OAuth2Lab) -> None:
    with oauth2_lab.imap_client("alice") as client:
        assert client.select_folder("INBOX")


def test_a_token_server_outage_is_a_temporary_failure_not_a_refusal(oauth2_lab: OAuth2Lab) -> None:
    token = oauth2_lab.access_token("alice")
    oauth2_lab.token_server.stop()
    try:
        imap_reply = _imap_login(oauth2_lab, Mechanism.XOAUTH2, "alice", token)
        pop3_reply = _pop3_login(oauth2_lab, Mechanism.XOAUTH2, "alice", token, two_step=False)
    finally:
        oauth2_lab.token_server.start()

    assert "UNAVAILABLE" in imap_reply
    assert pop3_reply.startswith(b"-ERR [SYS/TEMP]")
    assert _imap_login(oauth2_lab, Mechanism.XOAUTH2, "alice", token).startswith("OK")  # back, same token


def test_an_app_only_token_opens_the_app_s_mailbox(oauth2_lab: OAuth2Lab) -> None:
    # The client_credentials grant (Microsoft's service principal): no user signed in.
    basic = base64.b64encode(b"maillab-app:maillab-app-secret").decode()
    answer = httpx.post(
        oauth2_lab.token_server.token_url,
        data={"grant_type": "client_credentials", "scope": "mail"},
        headers={"Authorization": f"Basic {basic}"},
    ).json()

    assert "refresh_token" not in answer
    assert _imap_login(oauth2_lab, Mechanism.XOAUTH2, "carol", answer["access_token"]).startswith("OK")
    assert _imap_login(oauth2_lab, Mechanism.XOAUTH2, "alice", answer["access_token"]).startswith("NO")


def test_the_token_server_runs_on_its_own_for_a_demo_lab() -> None:
    port = BARE_TOKEN_SERVER_PORT + 1
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.lab.token_server", "--port", str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None and "token server on" in server.stdout.readline()
        base = f"http://127.0.0.1:{port}"
        httpx.post(f"{base}/lab/settings", data={"access_lifetime": "20", "rotate": "yes"}).raise_for_status()
        refresh = httpx.post(f"{base}/lab/issue", data={"user": "alice"}).json()["refresh_token"]
        answer = httpx.post(
            f"{base}/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": refresh,
                "client_id": "maillab",
                "client_secret": "maillab-secret",
            },
        ).json()
        introspected = httpx.post(f"{base}/introspect", data={"token": answer["access_token"]}).json()
    finally:
        server.terminate()
        assert server.wait(timeout=10) == 0

    assert answer["expires_in"] == 20 and answer["refresh_token"] != refresh  # rotated
    assert introspected["active"] is True and introspected["username"] == "alice@example.test"
